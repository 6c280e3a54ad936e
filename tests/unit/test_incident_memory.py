"""Everything an incident's workflow remembers is one serializable model, `IncidentMemory`: the
parts of the workflow (record, gates, clocks, grading, notifier, handlers) keep nothing of their
own, so continue-as-new can carry the memory and lose nothing.
"""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter

from stanch.models.actions import TargetRef
from stanch.models.activity_io import Finding
from stanch.models.decisions import FailureDecision, ResolveRequest, TriageDecision
from stanch.models.incident import IncidentState, IncidentStatus, fresh_stages
from stanch.models.memory import IncidentMemory
from stanch.models.signals import Severity, Signal

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
# What a part is handed when it is built: the record and its sibling parts, never state of its own.
PART_WIRING = {
    *("record", "notifier", "clocks", "grading", "gates", "steps", "responders", "monitoring", "input", "runbook", "memory", "by"),
    *("bisection", "blast_radius", "shadow"),
}
# The asyncio task a part runs beside the response (like the clocks' `background`): never carried;
# a new run starts it again when the memory says its result has not landed.
TASKS_BESIDE_THE_RESPONSE = {"Bisection": {"running"}, "BlastRadius": {"running"}}
# Caches derived from the memory alone, rebuilt from it whenever they are missing or stale, so a
# new run (continue-as-new) or a replay computes the same: Monitoring's view of the kept signals.
DERIVED_FROM_MEMORY = {"Monitoring": {"_kept_keys", "_kept_from", "_kept_keys_of", "_rules_read"}}


def remembered() -> IncidentMemory:
    opened = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    state = IncidentState(
        id="inc-1",
        occurrence="inc-1@abcd1234",
        status=IncidentStatus.awaiting_decision,
        severity=Severity.high,
        runbook="harmful-output",
        runbook_sha256="ab" * 32,
        target=TargetRef(model="support-bot", version="2"),
        dedup_key="harmful-output/support-bot",
        opened_at=opened,
        stages=fresh_stages(),
        signals=[Signal(signal_id="sig-1", title="leak")],
    )
    return IncidentMemory(
        state=state,
        recent_signal_ids={"a1": None, "b2": None},
        seen_decision_ids={"d-1"},
        detectors_fired=["secret"],
        findings=[Finding(check="probe", outcome="confirmed", detail="1 of 1 prompts", detectors=["secret"])],
        triage_decision=TriageDecision(by="alice", outcome="confirmed", reason="seen it"),
        failure_decision=FailureDecision(stage="rollback", by="alice", choice="retry"),
        failed_stage="rollback",
        resolve_request=ResolveRequest(by="carol", reason="upstream fixed"),
        severity_set_by_human=True,
        signals_at_human_severity=1,
        regrade_requested=True,
        signals_graded=1,
        notifications_sent=7,
        last_escalation_at=opened,
    )


def test_the_memory_survives_the_trip_through_temporal_unchanged() -> None:
    memory = remembered()
    converter = pydantic_data_converter.payload_converter
    (payload,) = converter.to_payloads([memory])
    (back,) = converter.from_payloads([payload], [IncidentMemory])
    assert back == memory
    assert back.recent_signal_ids == {"a1": None, "b2": None} and back.notifications_sent == 7


def assignments_to_self(tree: ast.AST) -> list[tuple[str, str, int]]:
    """(method, attribute, line) for every `self.<attribute> = …` in the classes of a module."""
    found = []
    for cls in (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)):
        for method in (node for node in cls.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)):
            for node in ast.walk(method):
                targets = (
                    node.targets
                    if isinstance(node, ast.Assign)
                    else [node.target]
                    if isinstance(node, ast.AnnAssign | ast.AugAssign)
                    else []
                )
                for target in targets:
                    for name in target.elts if isinstance(target, ast.Tuple) else [target]:
                        # `self.x = …` rebinds the part's own attribute; `self.state.x = …` changes the memory.
                        if isinstance(name, ast.Attribute) and isinstance(name.value, ast.Name) and name.value.id == "self":
                            found.append((f"{cls.name}.{method.name}", name.attr, node.lineno))
    return found


def test_workflow_parts_keep_nothing_outside_the_memory() -> None:
    """A part is wired once in __init__; anything the incident remembers goes into the memory."""
    stray = []
    for path in sorted(WORKFLOWS.glob("*.py")):
        for where, attribute, line in assignments_to_self(ast.parse(path.read_text())):
            if where.endswith(".__init__") and (attribute in PART_WIRING or attribute == "background"):
                continue  # the asyncio tasks of the clocks are rebuilt by a new run, never carried
            if attribute in DERIVED_FROM_MEMORY.get(where.split(".")[0], ()):
                continue
            if attribute in TASKS_BESIDE_THE_RESPONSE.get(where.split(".")[0], ()):
                continue
            stray.append(f"{path.name}:{line} {where} sets self.{attribute}")
    assert not stray, "state kept outside IncidentMemory: " + "; ".join(stray)


def test_the_check_sees_a_part_that_keeps_state_of_its_own() -> None:
    source = (
        "class Gates:\n    def __init__(self, record):\n        self.record = record\n    def gate(self):\n        self.waiting = True\n"
    )
    assert assignments_to_self(ast.parse(source)) == [("Gates.__init__", "record", 3), ("Gates.gate", "waiting", 5)]


def test_a_memory_too_big_to_carry_is_slimmed_to_fit_and_says_what_it_left_out() -> None:
    from workflows.record import CARRIED_AT_MOST, slim_to_fit

    memory = remembered()
    big = "x" * 30_000
    memory.state.signals = [Signal(signal_id=f"sig-{n}", title=f"leak {n}", description=big, raw={"payload": big}) for n in range(120)]
    memory.recent_signal_ids = {f"{n:016x}": None for n in range(20_000)}
    assert len(memory.model_dump_json()) > 2 * 1024 * 1024, "bigger than Temporal's payload limit"

    slim_to_fit(memory, datetime(2026, 12, 5, tzinfo=UTC))

    assert len(memory.model_dump_json()) <= CARRIED_AT_MOST
    assert len(memory.state.signals) == 120 and all(not s.raw for s in memory.state.signals), "signals kept, their payloads left out"
    assert memory.state.timeline[-1].message.startswith("handing over: left out")


def test_a_memory_that_fits_is_carried_whole() -> None:
    from workflows.record import slim_to_fit

    memory = remembered()
    before = memory.model_dump_json()
    slim_to_fit(memory, datetime(2026, 12, 5, tzinfo=UTC))
    assert memory.model_dump_json() == before


def test_the_next_occurrence_is_handed_what_it_needs_and_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    from temporalio import workflow

    from tests.workflow.conftest import incident_input
    from workflows.record import CARRIED_AT_MOST, Record

    monkeypatch.setattr(workflow, "now", lambda: datetime(2026, 12, 5, tzinfo=UTC))
    monkeypatch.setattr(workflow, "info", lambda: SimpleNamespace(first_execution_run_id="0123456789abcdef", run_id="fedcba9876543210"))
    monkeypatch.setattr(workflow, "patched", lambda patch_id: True)
    record = Record(incident_input())
    record.memory.recurring = [Signal(signal_id=f"again-{n}", raw={"payload": "x" * 30_000}) for n in range(100)]
    record.memory.recent_signal_ids = {f"{n:016x}": None for n in range(20_000)}

    nxt = record.next_occurrence()

    assert nxt.recurrence is not None and nxt.carried is None
    assert nxt.recurrence.previous_occurrences == [record.state.occurrence]
    assert len(nxt.recurrence.signals) == 100 and not any(s.raw for s in nxt.recurrence.signals)
    assert len(nxt.model_dump_json()) < CARRIED_AT_MOST
