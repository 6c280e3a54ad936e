"""The flagd flag-file target without a provider: exact edits, atomic writes, the ledger,
exactly-once apply, exact undo, two incidents on one flag, and refusals that name the problem."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from stanch.models.actions import ActionSpec, AppliedAction, TargetRef
from stanch.targets.base import TargetError
from stanch.targets.flagd import FlagdTarget, write_atomically

CHAT_TARGETING = {"if": [{"in": ["@beta.example", {"var": "email"}]}, "on", None]}
FLAGS = {
    "$schema": "https://flagd.dev/schema/v0/flags.json",
    "metadata": {"flagSetId": "support"},
    "flags": {
        "support-bot-chat": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "on",
            "targeting": CHAT_TARGETING,
        },
        "support-bot-tone": {"state": "ENABLED", "variants": {"friendly": "friendly", "formal": "formal"}, "defaultVariant": "friendly"},
        "billing-export": {"state": "DISABLED", "variants": {"yes": True, "no": False}, "defaultVariant": "no"},
    },
}


@pytest.fixture
def flag_file(tmp_path: Path) -> Path:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(FLAGS, indent=4) + "\n")
    path.chmod(0o640)
    return path


def target(path: Path) -> FlagdTarget:
    return FlagdTarget.from_config(FlagdTarget.Config(file=Path(path.name)), name="flags", base=path.parent, env={})


def kill(flag: str = "support-bot-chat", **params) -> ActionSpec:
    return ActionSpec(kind="disable_feature", params={"flag": flag, **params})


def applied_action(key: str, outcome, kind: str = "disable_feature") -> AppliedAction:
    return AppliedAction(
        kind=kind,
        stage="contain",
        index=0,
        target=TargetRef(adapter="flags", model="support-bot"),
        idempotency_key=key,
        result=outcome.result,
        inverse=outcome.inverse,
    )


def flags_in(path: Path) -> dict:
    return json.loads(path.read_text())


async def test_kill_switch_serves_off_to_everyone_and_leaves_the_rest_untouched(flag_file: Path):
    outcome = await target(flag_file).apply("support-bot", kill(), "inc-1/contain/0", "inc-1")
    document = flags_in(flag_file)
    chat = document["flags"]["support-bot-chat"]
    assert chat["defaultVariant"] == "off" and chat["targeting"] == {} and chat["state"] == "ENABLED"
    assert chat["metadata"] == {"stanchIncident": "inc-1"}
    assert chat["variants"] == {"on": True, "off": False}
    assert {k: v for k, v in document.items() if k != "flags"} == {k: v for k, v in FLAGS.items() if k != "flags"}
    assert list(document) == list(FLAGS), "top-level keys keep their order"
    assert document["flags"]["support-bot-tone"] == FLAGS["flags"]["support-bot-tone"]
    assert document["flags"]["billing-export"] == FLAGS["flags"]["billing-export"]
    assert flag_file.read_text().splitlines()[1].startswith('    "$schema"'), "indentation is kept"
    assert flag_file.read_text().endswith("}\n")
    assert stat.S_IMODE(flag_file.stat().st_mode) == 0o640, "permissions are kept"
    assert outcome.result["was"]["targeting"] == CHAT_TARGETING and not outcome.replayed
    assert not [p for p in flag_file.parent.iterdir() if p.name.endswith(".tmp")], "no temp file left behind"


async def test_repeated_key_is_a_no_op_and_undo_puts_back_exactly_what_was_there(flag_file: Path):
    flags = target(flag_file)
    first = await flags.apply("support-bot", kill(), "inc-1/contain/0", "inc-1")
    after_first = flag_file.read_bytes()
    again = await flags.apply("support-bot", kill(variant="on"), "inc-1/contain/0", "inc-1")
    assert again.replayed and again.result == first.result and again.inverse == first.inverse
    assert flag_file.read_bytes() == after_first, "a repeated key must not edit the file again"

    undone = await flags.undo(applied_action("inc-1/contain/0", first), "inc-1/contain/0/undo")
    assert flags_in(flag_file) == FLAGS
    assert undone.result["restored"]["targeting"] == CHAT_TARGETING
    twice = await flags.undo(applied_action("inc-1/contain/0", first), "inc-1/contain/0/undo")
    assert twice.replayed and flags_in(flag_file) == FLAGS

    ledger = json.loads(flag_file.with_name("flags.json.stanch-ledger.json").read_text())["entries"]
    assert ledger["inc-1/contain/0"]["phase"] == "undone" and ledger["inc-1/contain/0"]["incident"] == "inc-1"


async def test_enable_feature_switches_a_disabled_flag_on_and_undo_switches_it_back(flag_file: Path):
    flags = target(flag_file)
    action = ActionSpec(kind="enable_feature", params={"feature": "billing-export"})
    outcome = await flags.apply("billing", action, "inc-2/hotfix/0", "inc-2")
    billing = flags_in(flag_file)["flags"]["billing-export"]
    assert billing["state"] == "ENABLED" and billing["defaultVariant"] == "yes", "the one true variant is the default 'on'"
    await flags.undo(applied_action("inc-2/hotfix/0", outcome, "enable_feature"), "inc-2/hotfix/0/undo")
    assert flags_in(flag_file)["flags"]["billing-export"] == FLAGS["flags"]["billing-export"]


async def test_one_incidents_restore_never_undoes_anothers_kill_switch(flag_file: Path):
    flags = target(flag_file)
    first = await flags.apply("support-bot", kill(), "inc-1/contain/0", "inc-1")
    second = await flags.apply("support-bot", kill(), "inc-2/contain/0", "inc-2")
    held = await flags.undo(applied_action("inc-1/contain/0", first), "inc-1/contain/0/undo")
    assert held.result["left_in_place"] and held.result["held_by"] == "inc-2/contain/0"
    assert flags_in(flag_file)["flags"]["support-bot-chat"]["defaultVariant"] == "off", "inc-2 still holds the switch"
    await flags.undo(applied_action("inc-2/contain/0", second), "inc-2/contain/0/undo")
    assert flags_in(flag_file) == FLAGS, "the last restore puts back the definition from before both incidents"


async def test_undo_refuses_to_clobber_a_hand_edit(flag_file: Path):
    flags = target(flag_file)
    outcome = await flags.apply("support-bot", kill(), "inc-1/contain/0", "inc-1")
    document = flags_in(flag_file)
    document["flags"]["support-bot-chat"]["defaultVariant"] = "on"
    flag_file.write_text(json.dumps(document, indent=4))
    with pytest.raises(TargetError, match="edited since Stanch changed it .*defaultVariant") as refused:
        await flags.undo(applied_action("inc-1/contain/0", outcome), "inc-1/contain/0/undo")
    assert not refused.value.retryable


async def test_a_crash_between_plan_and_edit_finishes_the_recorded_plan(flag_file: Path, monkeypatch):
    flags = target(flag_file)
    real_write = flags._write
    monkeypatch.setattr(flags, "_write", lambda raw, document: (_ for _ in ()).throw(OSError("disk went away")))
    with pytest.raises(OSError):
        await flags.apply("support-bot", kill(), "inc-1/contain/0", "inc-1")
    assert flags_in(flag_file) == FLAGS, "nothing was edited"
    monkeypatch.setattr(flags, "_write", real_write)
    outcome = await flags.apply("support-bot", kill(), "inc-1/contain/0", "inc-1")
    assert not outcome.replayed and outcome.inverse["before"]["defaultVariant"] == "on", "the retry keeps the pre-edit inverse"


async def test_concurrent_workers_do_not_lose_each_others_edits(flag_file: Path):
    workers = [target(flag_file) for _ in range(4)]
    kinds = [("support-bot-chat", None), ("support-bot-tone", "formal"), ("support-bot-chat", None), ("billing-export", "no")]
    await asyncio.gather(
        *(
            worker.apply("m", kill(flag, **({"variant": variant} if variant else {})), f"inc-{i}/contain/0", f"inc-{i}")
            for i, (worker, (flag, variant)) in enumerate(zip(workers, kinds, strict=True))
        )
    )
    document = flags_in(flag_file)
    assert document["flags"]["support-bot-tone"]["defaultVariant"] == "formal"
    assert document["flags"]["support-bot-chat"]["defaultVariant"] == "off"
    ledger = json.loads(flag_file.with_name("flags.json.stanch-ledger.json").read_text())["entries"]
    assert sorted(ledger) == [f"inc-{i}/contain/0" for i in range(4)]
    assert sorted(e["seq"] for e in ledger.values()) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "action, message",
    [
        (ActionSpec(kind="block_prompts", params={"patterns": ["x"]}), "knows no action kind 'block_prompts'"),
        (kill("no-such-flag"), "has no flag 'no-such-flag'; its flags: billing-export, support-bot-chat, support-bot-tone"),
        (kill("support-bot-tone"), "has no variant 'off' and not exactly one false variant; its variants are \\['formal', 'friendly'\\]"),
        (kill(variant="maybe"), "has no variant 'maybe'"),
        (
            ActionSpec(kind="disable_feature", params={"flag": "support-bot-chat", "varient": "off"}),
            "bad params for disable_feature: varient",
        ),
    ],
)
async def test_refusals_name_the_problem_and_are_not_retried(flag_file: Path, action: ActionSpec, message: str):
    with pytest.raises(TargetError, match=message) as refused:
        await target(flag_file).apply("support-bot", action, "inc-9/contain/0", "inc-9")
    assert not refused.value.retryable
    assert flags_in(flag_file) == FLAGS


async def test_state_shows_the_models_flags_and_what_stanch_did(flag_file: Path):
    flags = target(flag_file)
    await flags.apply("support-bot", kill(), "inc-1/contain/0", "inc-1")
    state = await flags.state("support-bot")
    assert sorted(state["flags"]) == ["support-bot-chat", "support-bot-tone"]
    assert state["flags"]["support-bot-chat"]["defaultVariant"] == "off"
    assert state["flag_set_metadata"] == {"flagSetId": "support"}
    assert [e["key"] for e in state["stanch_ledger"]] == ["inc-1/contain/0"]
    assert len(state["sha256"]) == 64


def test_plan_describes_the_edit_and_its_undo_without_touching_the_file(flag_file: Path):
    before = flag_file.read_bytes()
    [call] = target(flag_file).plan("support-bot", kill(), "inc-1/contain/0")
    assert call.adapter == "flagd" and call.target == "flags" and call.url == flag_file.as_uri()
    assert call.body["set"]["targeting"] == {} and "support-bot-chat" in call.operation
    assert call.undo and "back as they were" in call.undo[0].operation
    assert flag_file.read_bytes() == before and not flag_file.with_name("flags.json.stanch-ledger.json").exists()


async def test_probes_and_jobs_are_refused():
    flags = FlagdTarget(FlagdTarget.Config(file=Path("/nonexistent/flags.json")))
    with pytest.raises(TargetError, match="serves no prompts"):
        flags.chat_endpoint("support-bot")
    with pytest.raises(TargetError, match="runs no jobs"):
        await flags.start_job("support-bot", "finetune", {}, "k")


def test_yaml_flag_files_are_refused_by_name(tmp_path: Path):
    with pytest.raises(ValidationError, match="YAML: Stanch edits JSON flag files only"):
        FlagdTarget.Config(file=tmp_path / "flags.yaml")


def test_write_atomically_replaces_whole_and_keeps_mode(tmp_path: Path):
    path = tmp_path / "f.json"
    path.write_text("old")
    os.chmod(path, 0o600)
    write_atomically(path, b"new contents")
    assert path.read_bytes() == b"new contents" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_targets_yaml_builds_both_adapters_with_paths_relative_to_itself(tmp_path: Path):
    from stanch.targets.config import TargetsError, load_targets
    from stanch.targets.mlflow import MlflowTarget

    (tmp_path / "flagd").mkdir()
    (tmp_path / "flagd" / "flags.json").write_text(json.dumps(FLAGS))
    (tmp_path / "targets.yaml").write_text(
        "targets:\n"
        "  registry:\n"
        "    mlflow: {tracking_uri: 'http://127.0.0.1:5000', alias: champion, token_env: MLFLOW_TOKEN}\n"
        "  flags:\n"
        "    flagd: {file: flagd/flags.json}\n"
    )
    targets = load_targets(tmp_path / "targets.yaml", env={})
    assert isinstance(targets["registry"], MlflowTarget) and targets["registry"].name == "registry"
    assert isinstance(targets["flags"], FlagdTarget) and targets["flags"].path == tmp_path / "flagd" / "flags.json"

    (tmp_path / "targets.yaml").write_text("targets:\n  flags:\n    flagd: {file: flags.yaml, ledgr: x}\n")
    with pytest.raises(TargetsError) as refused:
        load_targets(tmp_path / "targets.yaml", env={})
    assert "targets.flags.flagd.file" in str(refused.value) and "YAML" in str(refused.value)
    assert "targets.flags.flagd.ledgr" in str(refused.value)
