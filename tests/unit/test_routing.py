"""Routing signals to runbooks and incidents, and the conditions behind grading and
regulatory seriousness."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stanch.intake.routing import incident_id_for, route_signal, slug
from stanch.models.signals import Severity, Signal, SignalSource
from stanch.runbooks.conditions import condition_holds, describe, grade, seriousness
from stanch.runbooks.loader import RunbookCatalog, load_catalog
from stanch.runbooks.schema import Condition

RUNBOOKS = Path(__file__).resolve().parents[2] / "runbooks"
ID_SHAPE = re.compile(r"^[a-z0-9-]{1,80}$")


@pytest.fixture(scope="module")
def catalog() -> RunbookCatalog:
    return load_catalog(RUNBOOKS)


def alert(signal_id: str = "a1", **overrides: object) -> Signal:
    fields: dict[str, object] = {
        "signal_id": signal_id,
        "source": SignalSource.alert,
        "sender": "alertmanager",
        "title": "Support bot leaks secrets",
        "labels": {"alertname": "HarmfulOutputSecret", "model": "support-bot", "severity": "page"},
        "model": "support-bot",
        "model_version": "v2",
    }
    fields.update(overrides)
    return Signal.model_validate(fields)


# --- routing -----------------------------------------------------------------------------


def test_harmful_output_alert_routes_to_the_demo_runbook(catalog: RunbookCatalog) -> None:
    route = route_signal(alert(), catalog)
    assert route.runbook.runbook.name == "harmful-output"
    assert route.dedup_key == "harmful-output/support-bot/HarmfulOutputSecret"
    assert route.target.adapter == "gateway"
    assert route.target.model == "support-bot" and route.target.version == "v2"
    assert route.incident_id.startswith("harmful-output-support-bot-")
    assert ID_SHAPE.match(route.incident_id)
    assert route.incident_id == incident_id_for("harmful-output", "support-bot", route.dedup_key)


def test_repeats_of_an_alert_join_the_same_incident(catalog: RunbookCatalog) -> None:
    first = route_signal(alert("a1"), catalog)
    # Another firing of the same rule: new signal id, description and version all differ.
    repeat = route_signal(alert("a2", description="fired again", model_version="v3"), catalog)
    assert repeat.incident_id == first.incident_id
    assert repeat.dedup_key == first.dedup_key


def test_a_different_model_opens_a_different_incident(catalog: RunbookCatalog) -> None:
    first = route_signal(alert(), catalog)
    other = route_signal(alert(model="sales-bot", labels={"alertname": "HarmfulOutputSecret"}), catalog)
    assert other.runbook.runbook.name == "harmful-output"
    assert other.incident_id != first.incident_id
    assert other.incident_id.startswith("harmful-output-sales-bot-")


def test_user_report_with_category_routes_to_harmful_output(catalog: RunbookCatalog) -> None:
    report = Signal(
        signal_id="r1",
        source=SignalSource.user_report,
        sender="web-form",
        category="harmful-output",
        model="support-bot",
        title="bot gave me an API key",
    )
    route = route_signal(report, catalog)
    assert route.runbook.runbook.name == "harmful-output"
    # The report carries no alertname: that part renders as "unknown" instead of failing.
    assert route.dedup_key == "harmful-output/support-bot/unknown"


def test_model_and_version_may_come_from_labels(catalog: RunbookCatalog) -> None:
    signal = Signal(signal_id="l1", labels={"alertname": "HarmfulOutput", "model": "support-bot", "version": "v2"})
    route = route_signal(signal, catalog)
    assert route.target.model == "support-bot" and route.target.version == "v2"


def test_unmatched_signal_goes_to_triage(catalog: RunbookCatalog) -> None:
    signal = Signal(signal_id="x1", sender="datadog", title="Disk almost full", labels={"alertname": "DiskFull"})
    route = route_signal(signal, catalog)
    assert route.runbook.runbook.name == "triage"
    assert route.dedup_key == "triage/datadog/unknown/Disk almost full"
    assert route.target.model == "unknown" and route.target.version is None
    assert route.incident_id.startswith("triage-unknown-") and ID_SHAPE.match(route.incident_id)


def test_other_incident_classes_route_to_their_runbooks(catalog: RunbookCatalog) -> None:
    def name_for(**fields: object) -> str:
        return route_signal(Signal.model_validate({"signal_id": "s", "model": "m", **fields}), catalog).runbook.runbook.name

    assert name_for(labels={"alertname": "PiiLeakDetected"}) == "pii-leak"
    assert name_for(source="user_report", category="privacy") == "pii-leak"
    assert name_for(labels={"alertname": "PromptInjectionSpike"}) == "prompt-injection-campaign"
    assert name_for(labels={"alertname": "AnswerQualityDrop"}) == "quality-regression"
    # Glob matching is case-sensitive, like Alertmanager's label values.
    assert name_for(labels={"alertname": "harmfuloutput"}) == "triage"


def test_highest_priority_wins_ties_by_name(catalog: RunbookCatalog) -> None:
    # Matches harmful-output (100) and pii-leak (90): the higher priority wins.
    both = Signal(signal_id="b", model="m", category="harmful-output", labels={"alertname": "PiiLeak"})
    assert route_signal(both, catalog).runbook.runbook.name == "harmful-output"
    # Equal priorities: name order decides, independent of file order.
    pii, prompt = catalog.get("pii-leak"), catalog.get("prompt-injection-campaign")
    assert pii is not None and prompt is not None
    tied_prompt = prompt.model_copy(deep=True)
    tied_prompt.runbook.match.priority = pii.runbook.match.priority
    tied = RunbookCatalog([tied_prompt, pii, catalog.fallback])
    signal = Signal(signal_id="t", model="m", labels={"alertname": "PiiLeak"}, category="prompt-injection")
    assert route_signal(signal, tied).runbook.runbook.name == "pii-leak"


def test_incident_id_is_readable_stable_and_bounded() -> None:
    key = "harmful-output/Support Bot_v2/X"
    first = incident_id_for("harmful-output", "Support Bot/EU", key)
    assert first == incident_id_for("harmful-output", "Support Bot/EU", key)
    assert first.startswith("harmful-output-support-bot-eu-") and ID_SHAPE.match(first)
    long_id = incident_id_for("harmful-output", "m" * 200, key)
    assert len(long_id) <= 80 and ID_SHAPE.match(long_id) and "--" not in long_id
    assert incident_id_for("harmful-output", "m" * 200, key + "!") != long_id
    assert slug("***") == "unknown"


# --- conditions --------------------------------------------------------------------------


def holds(condition: dict, signals: list[Signal], **kwargs: object) -> bool:
    return condition_holds(Condition.model_validate(condition), signals=signals, **kwargs)  # type: ignore[arg-type]


def test_empty_condition_always_holds() -> None:
    assert holds({}, [alert()])
    assert holds({}, [])


def test_label_globs_and_missing_labels() -> None:
    signals = [alert()]
    assert holds({"labels": {"alertname": "HarmfulOutput*"}}, signals)
    assert not holds({"labels": {"alertname": "Pii*"}}, signals)
    assert not holds({"labels": {"harm": "*"}}, signals)  # a missing label fails, even for "*"
    # All labels of a condition must hold on one signal, not spread across two.
    split = [alert("1", labels={"harm": "death"}), alert("2", labels={"scope": "widespread"})]
    assert holds({"labels": {"harm": "death"}}, split)
    assert not holds({"labels": {"harm": "death", "scope": "widespread"}}, split)


def test_any_of_fields_over_signals() -> None:
    signals = [alert("1"), Signal(signal_id="2", source=SignalSource.user_report, sender="web", category="privacy")]
    assert holds({"sources": ["user_report"]}, signals)
    assert not holds({"sources": ["audit_finding"]}, signals)
    assert holds({"senders": ["web", "grafana"]}, signals)
    assert holds({"categories": ["privacy"]}, signals)
    assert not holds({"categories": ["harmful-output"]}, signals)
    assert holds({"models": ["support-*"]}, signals)
    assert not holds({"models": ["sales-bot"]}, signals)
    assert holds({"title_contains": "LEAKS"}, signals)
    assert not holds({"title_contains": "outage"}, signals)
    # Several fields: all must hold.
    assert holds({"sources": ["alert"], "labels": {"alertname": "Harmful*"}}, signals)
    assert not holds({"sources": ["alert"], "categories": ["nope"]}, signals)


def test_detectors_severity_and_count() -> None:
    signals = [alert("1", severity_hint="medium"), alert("2", severity_hint="high")]
    assert holds({"detectors": ["secret", "pii"]}, signals, detectors_fired=["pii"])
    assert not holds({"detectors": ["secret"]}, signals, detectors_fired=["pii"])
    assert not holds({"detectors": ["secret"]}, signals)
    assert holds({"severity_hint_at_least": "high"}, signals)
    assert not holds({"severity_hint_at_least": "critical"}, signals)
    assert not holds({"severity_hint_at_least": "low"}, [alert()])  # no hint at all
    assert holds({"severity_at_least": "high"}, signals, severity=Severity.critical)
    assert not holds({"severity_at_least": "high"}, signals, severity=Severity.medium)
    assert not holds({"severity_at_least": "low"}, signals)  # severity not known yet
    assert holds({"signals_at_least": 2}, signals)
    assert not holds({"signals_at_least": 3}, signals)


def test_describe_reads_like_a_reason() -> None:
    assert describe(Condition()) == "always"
    text = describe(Condition.model_validate({"labels": {"harm": "death"}, "severity_at_least": "critical"}))
    assert text == "label harm=death, severity >= critical"


# --- grading and seriousness ---------------------------------------------------------------


def test_grade_uses_default_rules_and_hint_floor(catalog: RunbookCatalog) -> None:
    demo = catalog.get("harmful-output")
    assert demo is not None
    runbook = demo.runbook
    assert grade(runbook, [alert()], []) == (Severity.medium, ["medium: runbook default, no severity rule matched"])
    severity, reasons = grade(runbook, [alert()], ["secret", "pii"])
    assert severity is Severity.high and reasons == ["high: secret-looking string in output"]
    five = [alert(str(i)) for i in range(5)]
    assert grade(runbook, five, ["secret"])[0] is Severity.critical
    critical_label = alert(labels={"alertname": "HarmfulOutput", "severity": "critical"})
    assert grade(runbook, [critical_label], [])[0] is Severity.critical
    # A sender's own hint is a floor: never graded below it automatically.
    severity, reasons = grade(runbook, [alert(severity_hint="critical")], [])
    assert severity is Severity.critical and reasons[-1] == "critical: a signal's own severity hint"
    # ...but a lower hint does not pull a rule's grade down.
    assert grade(runbook, [alert(severity_hint="low")], ["secret"])[0] is Severity.high


def test_triage_grades_low_unless_hinted(catalog: RunbookCatalog) -> None:
    runbook = catalog.fallback.runbook
    assert grade(runbook, [Signal(signal_id="x")], [])[0] is Severity.low
    assert grade(runbook, [Signal(signal_id="x", severity_hint="high")], [])[0] is Severity.high


def test_seriousness_and_report_clocks(catalog: RunbookCatalog) -> None:
    demo = catalog.get("harmful-output")
    assert demo is not None
    runbook = demo.runbook

    def labelled(**labels: str) -> list[Signal]:
        return [alert(labels={"alertname": "HarmfulOutput", **labels})]

    serious, days, reason = seriousness(runbook, labelled(), Severity.critical, ["secret"])
    assert (serious, days) == (False, 15) and reason.startswith("not serious")
    # A harm label makes it serious at any severity (Art. 3(49) is about the harm).
    assert seriousness(runbook, labelled(harm="death"), Severity.high, [])[:2] == (True, 10)
    serious, days, reason = seriousness(runbook, labelled(harm="health-serious"), Severity.critical, [])
    assert (serious, days) == (True, 15) and "label harm=health*" in reason and "15-day" in reason
    serious, days, reason = seriousness(runbook, labelled(harm="death"), Severity.critical, [])
    assert (serious, days) == (True, 10) and "death" in reason
    # The shortest clock whose condition holds wins.
    serious, days, reason = seriousness(runbook, labelled(harm="death", sector="critical-infrastructure"), Severity.critical, [])
    assert (serious, days) == (True, 2) and "critical infrastructure" in reason
    assert seriousness(runbook, labelled(scope="widespread"), Severity.critical, [])[:2] == (True, 2)


def test_pii_leak_is_serious_only_when_widespread(catalog: RunbookCatalog) -> None:
    pii = catalog.get("pii-leak")
    assert pii is not None
    signals = [Signal(signal_id="p", category="privacy", labels={"scope": "widespread"})]
    assert seriousness(pii.runbook, signals, Severity.high, ["pii"])[:2] == (True, 2)
    assert seriousness(pii.runbook, [Signal(signal_id="p")], Severity.critical, ["pii"])[0] is False
    quality = catalog.get("quality-regression")
    assert quality is not None
    assert seriousness(quality.runbook, signals, Severity.critical, [])[0] is False
