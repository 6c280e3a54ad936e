"""The audit and runbooks commands print ids as they are: rich's emoji codes (`:abc:` → 🔤)
must not turn `alertmanager:abc:…` into something else."""

from __future__ import annotations

from typer.testing import CliRunner

from stanch.cli.main import app

ID = "alertmanager:abc:fire:x"


def test_audit_prints_ids_without_emoji(tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "manifest.json").write_text(
        '{"format": "stanch-audit-bundle/2", "created_at": "2026-11-26T00:00:00Z", "entries": [], "head": ""}'
    )
    (folder / f"{ID}.json").write_text("{}")
    result = CliRunner().invoke(app, ["audit", "verify", str(folder)])
    assert result.exit_code == 1
    assert f"{ID}.json: no manifest entry lists this file" in result.output
    assert "🔤" not in result.output and "🔥" not in result.output


def test_runbooks_prints_ids_without_emoji(tmp_path):
    path = tmp_path / f"{ID}.yaml"
    path.write_text("name: [not a runbook\n")
    result = CliRunner().invoke(app, ["runbooks", "validate", str(path)])
    assert ID in result.output, result.output
    assert "🔤" not in result.output and "🔥" not in result.output
