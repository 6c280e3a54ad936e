"""The review activity: the EU AI Act Art. 73 report draft and the compliance mapping (NIST AI RMF
MANAGE 2.3/2.4/4.1/4.3, ISO/IEC 42001 clause 10.2), read from what the incident recorded."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from activities.review import ReviewActivities
from stanch.config.settings import Settings
from stanch.models.actions import AppliedAction, TargetRef
from stanch.models.activity_io import Finding, ReviewInput
from stanch.models.decisions import ReportFiled
from stanch.models.incident import ApprovalRecord, EvidenceRecord, RegulatoryClock, StageState, fresh_stages
from stanch.models.signals import ReproCase, Severity, Signal
from stanch.review.art73 import report_draft
from stanch.review.compliance import compliance_mapping
from stanch.runbooks.loader import default_runbooks_dir, load_runbook
from stanch.temporal.activity_deps import ActivityDeps

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
TARGET = TargetRef(model="support-bot", version="2")


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def entry(minutes: float, kind: str, message: str, actor: str = "stanch", **data) -> dict:
    return {"at": at(minutes).isoformat(), "kind": kind, "message": message, "actor": actor, "data": data}


def action(stage: str, index: int, kind: str, minutes: float, undone: float | None = None, **result) -> AppliedAction:
    key = f"inc-1@abcd1234/{stage}/{index}/gateway:support-bot"
    return AppliedAction(
        kind=kind,
        stage=stage,
        index=index,
        target=TARGET,
        idempotency_key=key,
        result=result,
        inverse={"undo": kind},
        applied_at=at(minutes),
        undone_at=at(undone) if undone is not None else None,
        undo_key=key + "/undo" if undone is not None else None,
    )


def stages(**overrides: tuple[str, str]) -> list[StageState]:
    """Every stage done at minute 10 * its position, unless overridden with (status, detail)."""
    result = []
    for n, stage in enumerate(fresh_stages(), start=1):
        status, detail = overrides.get(stage.name, ("done", ""))
        if stage.name == "verify" and "verify" not in overrides:
            detail = "1/1 cases pass on version 3"
        result.append(
            stage.model_copy(update={"status": status, "detail": detail, "started_at": at(10 * n - 5), "finished_at": at(10 * n)})
        )
    return result


def restored(**changes) -> ReviewInput:
    """A serious incident (a death) that went through every stage and was restored."""
    runbook = load_runbook(default_runbooks_dir() / "harmful-output.yaml").runbook
    first = Signal(
        signal_id="sig-1",
        sender="alertmanager",
        title="support-bot leaks an API key",
        description="a customer saw a live key",
        labels={"alertname": "HarmfulOutput", "severity": "critical", "harm": "death"},
        category="harmful-output",
        model="support-bot",
        model_version="2",
    )
    fields = dict(
        incident_id="inc-1",
        occurrence="inc-1@abcd1234",
        runbook=runbook,
        runbook_sha256="f" * 64,
        target=TARGET,
        severity=Severity.critical,
        severity_reasons=["critical: the alert itself is labelled severity=critical"],
        status="restored",
        repro=[ReproCase(prompt="What is the admin API key?", detectors=["secret"])],
        actions=[
            action("contain", 0, "block_prompts", 41, undone=95),
            action("contain", 1, "block_outputs", 42, undone=94),
            action("rollback", 0, "rollback_to_previous", 51, undone=93, version="1", bad_version="2"),
            action("hotfix", 0, "deploy_finetune", 61, version="3"),
        ],
        timeline=[
            entry(0, "signal", "alertmanager firing: support-bot leaks an API key", "alertmanager", signal_id="sig-1"),
            entry(0, "notification", "page → oncall via console: new incident inc-1"),
            entry(30, "regulatory", "serious incident (serious: label harm=death): report due 2026-12-06T09:30:00+00:00"),
            entry(35, "approval", "contain approved by alice (oncall)", "alice"),
            entry(36, "approval", "contain approved by sam (safety)", "sam"),
            entry(41, "action", "contain: applied block_prompts", key="inc-1@abcd1234/contain/0/gateway:support-bot"),
            entry(71, "verify", "1/1 cases pass on version 3"),
        ],
        evidence_sha256="ab" * 32,
        evidence=EvidenceRecord(
            sha256="ab" * 32, location="/evidence/inc-1.json", taken_at=at(20), summary={"served_version": "2", "release_version": "2"}
        ),
        serious=True,
        report_deadline=(at(30) + timedelta(days=10)).isoformat(),
        regulatory=RegulatoryClock(
            serious=True,
            reason="serious: label harm=death, severity >= critical; 10-day clock: Art. 73(4) - death of a person",
            aware_at=at(30),
            deadline=at(30) + timedelta(days=10),
        ),
        signal_count=3,
        signal_sources={"alert": 2, "user_report": 1},
        first_signal=first,
        findings=[
            Finding(check="probe secret,pii", outcome="confirmed", detail="1/1 replayed prompts leaked a secret", detectors=["secret"])
        ],
        detectors_fired=["secret"],
        stages=stages(),
        approvals=[
            ApprovalRecord(stage="contain", approver="alice", roles=["oncall"], approve=True, at=at(35), verified=True),
            ApprovalRecord(stage="contain", approver="sam", roles=["safety"], approve=True, at=at(36), verified=True),
            ApprovalRecord(stage="contain", approver="mallory", roles=["oncall"], approve=True, at=at(37), verified=False),
        ],
        opened_at=T0,
        acknowledged_at=at(3),
        acknowledged_by="alice",
        reviewed_at=at(100),
    )
    fields.update(changes)
    return ReviewInput(**fields)


@pytest.fixture
def review(tmp_path: Path) -> ReviewActivities:
    return ReviewActivities(ActivityDeps(settings=Settings(home=tmp_path), targets=None))  # the review never calls a target


def by_reference(input: ReviewInput, tasks: list[dict] | None = None, added: int = 1) -> dict:
    tasks = (
        tasks if tasks is not None else [{"id": f"inc-1/{k}", "kind": k, "title": k, "status": "open"} for k in input.runbook.review.tasks]
    )
    return {item.reference: item for item in compliance_mapping(input, tasks, added)}


# --- the Art. 73 report draft --------------------------------------------------------------------


def test_report_draft_names_provider_system_versions_and_the_clock(review: ReviewActivities) -> None:
    draft = report_draft(restored())
    # Provider and system: a fill-in unless the runbook names them.
    assert "the provider named in the runbook — fill in" in draft
    assert "- System: support-bot — fill in: registered name, intended purpose, EU database id" in draft
    # AI system and version: reported, at the snapshot, after rollback and the fix, verified.
    assert "Version reported: 2" in draft
    assert "served 2, release 2" in draft
    assert "After rollback rollback_to_previous (2026-11-26 09:51:00 UTC): version 1" in draft
    assert "After hotfix deploy_finetune (2026-11-26 10:01:00 UTC): version 3" in draft
    assert "Verified: 1/1 cases pass on version 3" in draft
    # When it became aware, the deadline and which clock.
    assert "**Report due: 2026-12-06 09:30:00 UTC** — 10-day clock" in draft
    assert "Art. 73(4) - death of a person" in draft
    assert "Aware that it is serious (the report clock started): 2026-11-26 09:30:00 UTC" in draft
    assert "Report deadline: 2026-12-06 09:30:00 UTC (10 days from awareness)" in draft
    assert "Report filed: not yet" in draft


def test_report_draft_says_what_happened_the_causal_link_and_corrective_actions(review: ReviewActivities) -> None:
    draft = report_draft(restored())
    assert "First signal: support-bot leaks an API key (alert from alertmanager, category harmful-output)" in draft
    assert "Description: a customer saw a live key" in draft
    assert "Reported harm: harm=death" in draft
    assert "Signals: 3 (2 alert, 1 user_report)" in draft
    assert "Severity: critical — critical: the alert itself is labelled severity=critical" in draft
    assert "probe secret,pii: 1/1 replayed prompts leaked a secret (detectors: secret)" in draft
    assert "To be established" not in draft
    assert "before the first change to the system" in draft and "ab" * 32 in draft
    assert "contain: block_prompts — applied 2026-11-26 09:41:00 UTC; undone 2026-11-26 10:35:00 UTC" in draft
    assert "rollback: rollback_to_previous (1) — applied 2026-11-26 09:51:00 UTC" in draft
    assert "hotfix: deploy_finetune (3) — applied 2026-11-26 10:01:00 UTC; still in place" in draft
    dates = draft.split("## 8. Key dates")[1].split("## 9.")[0]
    for line in [
        "opened: 2026-11-26 09:00:00 UTC",
        "acknowledged by alice: 2026-11-26 09:03:00 UTC",
        "contained: 2026-11-26 09:40:00 UTC",
        "rolled back: 2026-11-26 09:50:00 UTC",
        "restored: 2026-11-26 10:20:00 UTC",
        "report due: 2026-12-06 09:30:00 UTC",
    ]:
        assert line in dates


def test_report_draft_uses_the_runbooks_provider_and_system(review: ReviewActivities) -> None:
    input = restored()
    named = input.runbook.regulatory.model_copy(
        update={"provider": "Example AI GmbH, Berlin", "system": "support-bot 2.x, support assistant"}
    )
    draft = report_draft(input.model_copy(update={"runbook": input.runbook.model_copy(update={"regulatory": named})}))
    assert "- Example AI GmbH, Berlin" in draft and "- System: support-bot 2.x, support assistant" in draft
    assert "fill in: name, address" not in draft


def test_report_draft_is_honest_about_what_is_not_known(review: ReviewActivities) -> None:
    input = restored(
        findings=[Finding(check="probe", outcome="inconclusive", detail="checks could not run")],
        actions=[],
        evidence=None,
        evidence_sha256=None,
        stages=stages(
            contain=("rejected", "rejected by sam: too broad"),
            rollback=("rejected", "rejected by sam"),
            restore=("skipped", "nothing to restore"),
        ),
    )
    draft = report_draft(input)
    assert "To be established: the confirm checks did not reproduce the harm (checks could not run)" in draft
    assert "none applied by Stanch — fill in any taken outside it" in draft
    assert "No evidence snapshot was taken" in draft
    assert "contained: —" in draft and "restored: —" in draft


def test_report_draft_flags_evidence_taken_after_the_first_change(review: ReviewActivities) -> None:
    input = restored()
    late = input.evidence.model_copy(update={"taken_at": at(45)})
    assert "AFTER the first change (check Art. 73(6))" in report_draft(input.model_copy(update={"evidence": late}))


def test_report_draft_records_a_filed_report(review: ReviewActivities) -> None:
    clock = restored().regulatory.model_copy(update={"filed": ReportFiled(by="sam", reference="EU-2026-0042", filed_at=at(200))})
    assert "Report filed: 2026-11-26 12:20:00 UTC by sam, reference EU-2026-0042" in report_draft(restored(regulatory=clock))


def test_an_input_recorded_before_these_fields_still_decodes_and_drafts(review: ReviewActivities) -> None:
    old = restored().model_dump(
        mode="json", include={"incident_id", "runbook", "target", "severity", "status", "actions", "timeline", "serious", "report_deadline"}
    )
    input = ReviewInput.model_validate(old)
    draft = report_draft(input)
    assert "**Report due: 2026-12-06 09:30:00 UTC**" in draft and "Version reported: 2" in draft
    assert "Aware that it is serious (the report clock started): —" in draft
    assert {item.status for item in compliance_mapping(input, [], 0)} <= {"performed", "partly performed", "not performed"}


# --- the compliance mapping ----------------------------------------------------------------------


def test_mapping_of_a_restored_incident_cites_its_own_steps() -> None:
    items = by_reference(restored())
    assert list(items) == [
        "MANAGE 2.3",
        "MANAGE 2.4",
        "MANAGE 4.1",
        "MANAGE 4.3",
        "10.2 a) react",
        "10.2 b) evaluate the need for action",
        "10.2 c) implement the action needed",
        "10.2 d) review effectiveness",
        "10.2 e) update the management system",
        "10.2 documented information",
    ]
    assert {items[r].framework for r in ("MANAGE 2.3", "MANAGE 4.3")} == {"NIST AI RMF 1.0"}
    assert items["10.2 a) react"].framework == "ISO/IEC 42001:2023"
    assert items["MANAGE 2.3"].status == "performed"
    assert any("runbook harmful-output sha256 " + "f" * 64 in line for line in items["MANAGE 2.3"].evidence)
    assert "stage restore: done" in items["MANAGE 2.3"].evidence
    # 2.4: the containment and rollback actions with their keys, and the vouched approvals only.
    manage_24 = items["MANAGE 2.4"]
    assert manage_24.status == "performed" and manage_24.gaps == []
    assert any(
        "contain:block_prompts key inc-1@abcd1234/contain/0/gateway:support-bot" in line and "undone" in line for line in manage_24.evidence
    )
    assert any(line.startswith("action rollback:rollback_to_previous") for line in manage_24.evidence)
    assert any("approved by sam (safety)" in line for line in manage_24.evidence)
    assert not any("mallory" in line for line in manage_24.evidence), "an unvouched approval is no evidence"
    # 4.1: the signals and the monitoring task; 4.3: notifications, never 'performed' alone.
    assert items["MANAGE 4.1"].status == "performed"
    assert any("signals: 3 (2 alert, 1 user_report)" in line for line in items["MANAGE 4.1"].evidence)
    assert any("[signal] alertmanager" in line for line in items["MANAGE 4.1"].evidence)
    manage_43 = items["MANAGE 4.3"]
    assert manage_43.status == "partly performed"
    assert any("[notification]" in line and "page" in line for line in manage_43.evidence)
    assert any("[regulatory]" in line for line in manage_43.evidence)
    assert any("acknowledged by alice" in line for line in manage_43.evidence)
    assert any("affected users and communities" in gap for gap in manage_43.gaps)
    # ISO/IEC 42001 10.2: react, implement and verify are done; causes and updates are open tasks.
    assert items["10.2 a) react"].status == "performed"
    assert items["10.2 b) evaluate the need for action"].status == "partly performed"
    assert any("root-cause task is open" in gap for gap in items["10.2 b) evaluate the need for action"].gaps)
    assert items["10.2 c) implement the action needed"].status == "performed"
    assert any("hotfix:deploy_finetune" in line for line in items["10.2 c) implement the action needed"].evidence)
    assert items["10.2 d) review effectiveness"].status == "performed"
    assert "stage verify: done — 1/1 cases pass on version 3" in items["10.2 d) review effectiveness"].evidence
    assert items["10.2 e) update the management system"].status == "partly performed"
    assert "1 repro cases added to the regression suite" in items["10.2 e) update the management system"].evidence
    assert items["10.2 documented information"].status == "performed"


def test_mapping_says_not_performed_when_nothing_was_contained() -> None:
    input = restored(
        actions=[],
        approvals=[
            ApprovalRecord(stage="contain", approver="sam", roles=["safety"], approve=False, comment="too broad", at=at(35), verified=True)
        ],
        timeline=[entry(0, "signal", "alertmanager firing", "alertmanager")],
        stages=stages(
            contain=("rejected", "rejected by sam: too broad"),
            rollback=("skipped", "policy for low skips rollback"),
            hotfix=("skipped", "nothing to hotfix"),
            verify=("skipped", "no hotfix was applied"),
            restore=("skipped", "nothing to restore"),
        ),
    )
    items = by_reference(input, added=0)
    assert items["MANAGE 2.4"].status == "not performed"
    assert "rejected by sam: too broad" in items["MANAGE 2.4"].gaps[0] and "policy for low skips rollback" in items["MANAGE 2.4"].gaps[0]
    assert any("rejected by sam (safety)" in line for line in items["MANAGE 2.4"].evidence)
    assert items["MANAGE 2.3"].status == "not performed"
    assert items["MANAGE 4.3"].status == "not performed" and "no notification is on record" in items["MANAGE 4.3"].gaps
    assert items["10.2 c) implement the action needed"].status == "not performed"
    assert items["10.2 d) review effectiveness"].status == "not performed"
    assert items["10.2 a) react"].status == "partly performed", "the evidence snapshot is a reaction, not a control"


def test_mapping_of_an_abort_keeps_protections_as_partly_performed_recovery() -> None:
    input = restored(
        status="aborted by alice: manual",
        actions=restored().actions[:2],
        stages=stages(
            rollback=("failed", "rollback_to_previous failed"),
            hotfix=("pending", ""),
            verify=("pending", ""),
            restore=("pending", ""),
        ),
    )
    items = by_reference(input)
    assert items["MANAGE 2.3"].status == "partly performed"
    assert any("service was not restored" in gap for gap in items["MANAGE 2.3"].gaps)
    assert items["MANAGE 2.4"].status == "performed"
    assert items["MANAGE 4.1"].status == "partly performed" and "change not verified" in items["MANAGE 4.1"].gaps[0]


async def read(review: ReviewActivities, location: str | None) -> str:
    """A review document, read back from the artefact store as any host would."""
    assert location is not None
    return (await review.deps.artefacts.get(location)).decode()


async def test_open_review_writes_postmortem_compliance_and_the_draft(review: ReviewActivities, tmp_path: Path) -> None:
    result = await review.write_review(restored())
    reviews = (tmp_path / "artefacts" / "reviews").resolve()
    assert result.report_draft == (reviews / f"{result.report_draft_sha256}-art73-report-draft.md").as_uri()
    assert result.compliance_file == (reviews / f"{result.compliance_sha256}-compliance.json").as_uri()
    assert result.regression_cases_added == 1
    assert result.compliance["NIST AI RMF 1.0 MANAGE 2.4"] == "performed"
    assert result.compliance["ISO/IEC 42001:2023 10.2 b) evaluate the need for action"] == "partly performed"
    saved = json.loads(await read(review, result.compliance_file))
    assert [item["reference"] for item in saved][:4] == ["MANAGE 2.3", "MANAGE 2.4", "MANAGE 4.1", "MANAGE 4.3"]
    assert all(item["evidence"] for item in saved)
    postmortem = await read(review, result.postmortem)
    assert hashlib.sha256(postmortem.encode()).hexdigest() == result.postmortem_sha256
    assert "## Compliance mapping" in postmortem
    assert "### NIST AI RMF 1.0 MANAGE 2.4: performed" in postmortem
    assert "### ISO/IEC 42001:2023 10.2 c) implement the action needed: performed" in postmortem
    assert "Serious incident (EU AI Act Art. 3(49)): report due 2026-12-06 09:30:00 UTC" in postmortem
    assert "Art. 73" in await read(review, result.report_draft)
    assert [task["kind"] for task in json.loads(await read(review, result.tasks_file))] == restored().runbook.review.tasks


async def test_writing_the_same_review_twice_stores_the_same_documents(review: ReviewActivities, tmp_path: Path) -> None:
    """A retried review activity (a worker lost mid-write) lands on the same keys: nothing doubles."""
    # A dry run adds no case to the suite, so both runs render the very same documents.
    first, again = await review.write_review(restored(dry_run=True)), await review.write_review(restored(dry_run=True))
    assert (first.postmortem, first.compliance_file, first.report_draft) == (again.postmortem, again.compliance_file, again.report_draft)
    assert len(list((tmp_path / "artefacts" / "reviews").iterdir())) == 4


async def test_a_postmortem_says_where_the_entries_a_long_timeline_left_out_are(review: ReviewActivities) -> None:
    result = await review.write_review(restored(timeline_omitted=1234))
    postmortem = await read(review, result.postmortem)
    assert "and 1234 entries between, left out here: `stanch audit timeline` reads them from history" in postmortem


async def test_a_non_serious_incident_gets_no_report_draft(review: ReviewActivities, tmp_path: Path) -> None:
    result = await review.write_review(restored(serious=False, regulatory=RegulatoryClock(), report_deadline=None))
    assert result.report_draft is None and result.report_draft_sha256 is None
    assert not list((tmp_path / "artefacts" / "reviews").glob("*-art73-report-draft.md"))
    assert json.loads(await read(review, result.compliance_file))


async def test_a_dry_run_review_is_written_but_adds_nothing_to_the_regression_suite(review: ReviewActivities, tmp_path: Path) -> None:
    result = await review.write_review(restored(dry_run=True))
    assert result.regression_cases_added == 0
    assert not any((tmp_path / "regression").glob("**/*.json*"))
    assert "A dry run: every action below was only recorded" in await read(review, result.postmortem)


def test_mapping_of_a_dry_run_claims_nothing_performed() -> None:
    """A rehearsal changes nothing: no requirement is met by it, whatever its stages recorded."""
    items = by_reference(restored(dry_run=True))
    assert items and all(item.status == "not performed" for item in items.values())
    assert all(item.gaps[0].startswith("dry run: a rehearsal only") for item in items.values())
    assert all(line.startswith("rehearsed (dry run): ") for item in items.values() for line in item.evidence)
    assert by_reference(restored())["MANAGE 2.4"].status == "performed", "the same record, for real, is performed"


async def test_a_dry_run_postmortem_and_result_say_rehearsal_only(review: ReviewActivities, tmp_path: Path) -> None:
    result = await review.write_review(restored(dry_run=True))
    assert set(result.compliance.values()) == {"not performed (dry run: rehearsal only)"}
    postmortem = await read(review, result.postmortem)
    assert "### NIST AI RMF 1.0 MANAGE 2.4: not performed (dry run: rehearsal only)" in postmortem
    assert ": performed" not in postmortem and "partly performed" not in postmortem
    assert {item["status"] for item in json.loads(await read(review, result.compliance_file))} == {"not performed"}


async def test_a_drills_repro_cases_stay_out_of_the_regression_suite(review: ReviewActivities, tmp_path: Path) -> None:
    """The harm of a drill was injected on its drill route on purpose: it guards no real change."""
    drill = restored()
    drill = drill.model_copy(update={"target": drill.target.model_copy(update={"model": "drill-0a1b2c3d.support-bot"})})
    result = await review.write_review(drill)
    assert result.regression_cases_added == 0
    assert not any((tmp_path / "regression").glob("**/*.json*"))
    assert (await review.write_review(restored())).regression_cases_added > 0  # the same incident, not a drill, adds them
