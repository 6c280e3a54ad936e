"""The artefact store in an S3-compatible bucket (moto's server, over real HTTP on loopback): what
one host stores, another host with its own home and the same STANCH_ARTEFACTS reads back, and an
audit export from a third home bundles the evidence and review documents a worker stored there,
hash-checked, into a bundle that verifies."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import obstore
import pytest
from obstore.store import from_url
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import ActivityEnvironment
from typer.testing import CliRunner

from activities.evidence import EvidenceActivities
from activities.review import ReviewActivities
from stanch.audit import bundle, verify
from stanch.audit.history import parse_history
from stanch.cli.main import app
from stanch.config.settings import Settings
from stanch.models.actions import TargetRef
from stanch.models.activity_io import EvidenceInput, ReviewInput, ReviewResult
from stanch.models.signals import Severity
from stanch.runbooks.loader import default_runbooks_dir, load_runbook
from stanch.stores.artefacts import ArtefactError, ArtefactNotFound, store_from_settings
from stanch.temporal.activity_deps import ActivityDeps
from stanch.trust import assertions
from tests.s3 import s3_env, s3_server  # noqa: F401  (fixtures)
from tests.workflow.conftest import TEST_DECISION_KEYS

HISTORIES = Path(__file__).resolve().parent.parent / "histories"
OCCURRENCE = "inc-1@abcd1234"


class ServedVersionTwo:
    async def state(self, model: str) -> dict:
        return {"served_version": "2"}


class OneTarget:
    def get(self, ref: TargetRef) -> ServedVersionTwo:
        return ServedVersionTwo()


def host(tmp_path: Path, name: str) -> Settings:
    """A host of the installation: its own home, the bucket from the environment."""
    return Settings.from_env().model_copy(update={"home": tmp_path / name})


async def test_what_one_host_stores_another_reads_back(tmp_path: Path, s3_env: dict[str, str]) -> None:
    worker_a, worker_b = host(tmp_path, "a"), host(tmp_path, "b")
    stored = await store_from_settings(worker_a).put("evidence", b'{"served_version":"2"}', name="snapshot.json")

    bucket = s3_env["STANCH_ARTEFACTS"]
    assert stored.location == f"{bucket}/evidence/{stored.sha256}-snapshot.json"
    assert await store_from_settings(worker_b).get(stored.location) == b'{"served_version":"2"}'
    assert not (tmp_path / "a" / "artefacts").exists(), "nothing on the host's disk"
    with pytest.raises(ArtefactNotFound, match=f"not found in the artefact store {bucket}"):
        await store_from_settings(worker_b).get(f"{bucket}/evidence/{'0' * 64}-snapshot.json")


async def test_a_worker_checks_the_bucket_as_it_starts(tmp_path: Path, s3_env: dict[str, str]) -> None:
    deps = await ActivityDeps.for_worker(host(tmp_path, "worker"))
    assert deps.artefacts.url == s3_env["STANCH_ARTEFACTS"]
    await ActivityDeps.for_worker(host(tmp_path, "another-worker"))  # the same check artefact, written again: harmless


async def test_a_worker_refuses_a_bucket_that_does_not_exist_naming_what_to_check(
    tmp_path: Path, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANCH_ARTEFACTS", "s3://no-such-bucket/stanch")
    with pytest.raises(ArtefactError) as refused:
        await ActivityDeps.for_worker(host(tmp_path, "worker"))
    message = str(refused.value)
    assert message.startswith("the artefact store cannot be used: ") and "no such bucket" in message
    assert "STANCH_ARTEFACTS=s3://no-such-bucket/stanch" in message
    assert all(name in message for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION"))
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in message


def with_results(results: dict[str, dict], name: str = "high_severity_restored.json"):
    """A committed history whose snapshot_evidence and open_review results are the ones given, as a
    worker on another host would have recorded them."""
    data = json.loads((HISTORIES / name).read_text())
    scheduled: dict[str, str] = {}
    for event in data["events"]:
        if event["eventType"] == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED":
            scheduled[event["eventId"]] = event["activityTaskScheduledEventAttributes"]["activityType"]["name"]
        elif event["eventType"] == "EVENT_TYPE_ACTIVITY_TASK_COMPLETED":
            attributes = event["activityTaskCompletedEventAttributes"]
            kind = scheduled[attributes["scheduledEventId"]]
            if kind in results:
                payload = attributes["result"]["payloads"][0]
                payload["data"] = base64.b64encode(json.dumps(results[kind]).encode()).decode()
    return parse_history(data, name, name)


async def test_an_audit_export_from_a_third_home_bundles_what_a_worker_stored_in_the_bucket(tmp_path: Path, s3_env: dict[str, str]) -> None:
    assertions.trust(assertions.parse_keys(TEST_DECISION_KEYS))
    worker = host(tmp_path, "worker")
    deps = ActivityDeps(settings=worker, targets=OneTarget())  # type: ignore[arg-type]
    target = TargetRef(model="m")
    snapshot = EvidenceInput(incident_id="inc-1", occurrence=OCCURRENCE, runbook="r", runbook_sha256="0" * 64, target=target, signals=[])
    evidence = await ActivityEnvironment().run(EvidenceActivities(deps).snapshot_evidence, snapshot)
    runbook = load_runbook(default_runbooks_dir() / "harmful-output.yaml").runbook
    opened = ReviewInput(
        incident_id="inc-1", occurrence=OCCURRENCE, runbook=runbook, target=target, severity=Severity.high, status="closed", serious=True
    )
    review: ReviewResult = await ActivityEnvironment().run(ReviewActivities(deps).write_review, opened)
    history = with_results({"snapshot_evidence": evidence.model_dump(mode="json"), "open_review": review.model_dump(mode="json")})

    auditor = host(tmp_path, "auditor")
    folder = tmp_path / "bundle"
    manifest = await bundle.export(
        folder, [history], pydantic_data_converter, auditor.home, bundle.Header(created_at=bundle.now()), ["test"],
        artefacts=store_from_settings(auditor),
    )  # fmt: skip

    assert manifest.left_out == []
    stored = {entry.kind: [] for entry in manifest.entries}
    for entry in manifest.entries:
        stored[entry.kind].append(entry)
    [snapshot] = stored["evidence"]
    assert snapshot.recorded_sha256 == snapshot.sha256 == evidence.sha256
    assert hashlib.sha256((folder / snapshot.path).read_bytes()).hexdigest() == evidence.sha256
    names = sorted(entry.path.rsplit("/", 1)[-1].split("-", 1)[1] for entry in stored["review"])
    assert names == ["art73-report-draft.md", "compliance.json", "postmortem.md", "tasks.json"]
    postmortem = next(entry for entry in stored["review"] if entry.path.endswith("-postmortem.md"))
    assert postmortem.recorded_sha256 == postmortem.sha256 == review.postmortem_sha256
    assert (folder / postmortem.path).read_bytes() == await store_from_settings(auditor).get(review.postmortem)
    assert verify.verify(folder).ok
    checked = CliRunner().invoke(app, ["audit", "verify", str(folder)])
    assert checked.exit_code == 0, checked.output


async def test_an_export_leaves_out_what_the_bucket_no_longer_holds_as_recorded(tmp_path: Path, s3_env: dict[str, str]) -> None:
    assertions.trust(assertions.parse_keys(TEST_DECISION_KEYS))
    worker = host(tmp_path, "worker")
    stored = await store_from_settings(worker).put("evidence", b'{"served_version":"2"}', name="snapshot.json")
    # Another object written over the snapshot's key: its bytes no longer match the key's hash.
    key = stored.location.removeprefix(s3_env["STANCH_ARTEFACTS"] + "/")
    await obstore.put_async(from_url(s3_env["STANCH_ARTEFACTS"]), key, b'{"served_version":"3"}')
    recorded = {"sha256": stored.sha256, "location": stored.location, "summary": {}}
    missing = f"{s3_env['STANCH_ARTEFACTS']}/reviews/{'1' * 64}-postmortem.md"
    review = {"tasks": [], "postmortem": missing, "postmortem_sha256": "1" * 64, "regression_cases_added": 0}
    history = with_results({"snapshot_evidence": recorded, "open_review": review})

    auditor = host(tmp_path, "auditor")
    folder = tmp_path / "bundle"
    manifest = await bundle.export(
        folder, [history], pydantic_data_converter, auditor.home, bundle.Header(created_at=bundle.now()), ["test"],
        artefacts=store_from_settings(auditor),
    )  # fmt: skip

    assert not any(entry.kind in ("evidence", "review") for entry in manifest.entries)
    reasons = {left.location: left.reason for left in manifest.left_out}
    assert "changed since it was stored" in reasons[stored.location] and stored.sha256 in reasons[stored.location]
    assert reasons[missing].startswith("the postmortem: ") and "not found in the artefact store" in reasons[missing]
    assert verify.verify(folder).ok
