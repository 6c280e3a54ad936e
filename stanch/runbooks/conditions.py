"""Evaluating runbook `Condition`s: which runbook a signal belongs to, how bad it is, whether
it must be reported to a regulator.

Pure functions over already-parsed models: no I/O and no clock, cheap enough for activities
and the API alike, and they give the same answer every time for the same inputs.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from stanch.models.signals import Severity, Signal
from stanch.runbooks.schema import Condition, Runbook


def signal_model(signal: Signal) -> str | None:
    """The model a signal is about: the normalised field, else the `model` label."""
    return signal.model or signal.labels.get("model")


def signal_category(signal: Signal) -> str | None:
    return signal.category or signal.labels.get("category")


def highest_hint(signals: Iterable[Signal]) -> Severity | None:
    hints = [s.severity_hint for s in signals if s.severity_hint is not None]
    return max(hints, key=lambda s: s.rank) if hints else None


def _labels_match(wanted: dict[str, str], signal: Signal) -> bool:
    # Every wanted label must be present on the SAME signal (like an Alertmanager matcher set):
    # `alertname=HarmfulOutput*` and `severity=critical` should describe one alert, not two.
    return all(key in signal.labels and fnmatchcase(signal.labels[key], glob) for key, glob in wanted.items())


def _any_glob(value: str | None, globs: list[str]) -> bool:
    return value is not None and any(fnmatchcase(value, glob) for glob in globs)


def condition_holds(
    condition: Condition,
    *,
    signals: list[Signal],
    severity: Severity | None = None,
    detectors_fired: Iterable[str] = (),
    signal_count: int | None = None,
    affected_users: int | None = None,
) -> bool:
    """True when every field given in the condition holds; an empty condition always holds.

    Signal-based fields are "any of": one signal satisfying them is enough. `models` and
    `categories` accept shell-style globs as label values do. `signal_count` is how many signals
    the incident counted when `signals` holds only those it kept in full (a storm).
    `affected_users` is the blast radius measured on confirmation; None (not measured) never
    satisfies `affected_users_at_least`.
    """
    if condition.labels and not any(_labels_match(condition.labels, s) for s in signals):
        return False
    if condition.sources and not any(s.source in condition.sources for s in signals):
        return False
    if condition.senders and not any(s.sender in condition.senders for s in signals):
        return False
    if condition.categories and not any(_any_glob(signal_category(s), condition.categories) for s in signals):
        return False
    if condition.models and not any(_any_glob(signal_model(s), condition.models) for s in signals):
        return False
    if condition.title_contains is not None:
        needle = condition.title_contains.casefold()
        if not any(needle in s.title.casefold() for s in signals):
            return False
    if condition.detectors and not set(condition.detectors) & set(detectors_fired):
        return False
    if condition.severity_hint_at_least is not None:
        hint = highest_hint(signals)
        if hint is None or hint.rank < condition.severity_hint_at_least.rank:
            return False
    if condition.severity_at_least is not None:
        if severity is None or severity.rank < condition.severity_at_least.rank:
            return False
    counted = len(signals) if signal_count is None else max(signal_count, len(signals))
    if condition.signals_at_least is not None and counted < condition.signals_at_least:
        return False
    if condition.affected_users_at_least is not None and (affected_users is None or affected_users < condition.affected_users_at_least):
        return False
    return True


def describe(condition: Condition) -> str:
    """A human sentence for a condition, used when a rule gives no reason of its own."""
    parts: list[str] = []
    parts += [f"label {key}={glob}" for key, glob in condition.labels.items()]
    if condition.sources:
        parts.append("source " + "|".join(s.value for s in condition.sources))
    if condition.senders:
        parts.append("sender " + "|".join(condition.senders))
    if condition.categories:
        parts.append("category " + "|".join(condition.categories))
    if condition.models:
        parts.append("model " + "|".join(condition.models))
    if condition.title_contains is not None:
        parts.append(f"title contains {condition.title_contains!r}")
    if condition.detectors:
        parts.append("detector " + "|".join(condition.detectors) + " fired")
    if condition.severity_hint_at_least is not None:
        parts.append(f"signal severity hint >= {condition.severity_hint_at_least.value}")
    if condition.severity_at_least is not None:
        parts.append(f"severity >= {condition.severity_at_least.value}")
    if condition.signals_at_least is not None:
        parts.append(f"at least {condition.signals_at_least} signals")
    if condition.affected_users_at_least is not None:
        parts.append(f"at least {condition.affected_users_at_least} users affected")
    return ", ".join(parts) if parts else "always"


def grade(
    runbook: Runbook,
    signals: list[Signal],
    detectors_fired: Iterable[str] = (),
    signal_count: int | None = None,
    affected_users: int | None = None,
) -> tuple[Severity, list[str]]:
    """The severity the runbook's rules give, with the reasons that led to it.

    The highest severity among the rules that hold wins; with none, the runbook default.
    A signal's own severity hint is a floor: a sender saying "critical" is never downgraded
    automatically (lowering severity takes a responder with a reason).
    """
    fired = list(detectors_fired)
    held = [
        rule
        for rule in runbook.severity.rules
        if condition_holds(rule.when, signals=signals, detectors_fired=fired, signal_count=signal_count, affected_users=affected_users)
    ]
    if held:
        severity = max((rule.severity for rule in held), key=lambda s: s.rank)
        reasons = [f"{rule.severity.value}: {rule.reason or describe(rule.when)}" for rule in held if rule.severity == severity]
    else:
        severity = runbook.severity.default
        reasons = [f"{severity.value}: runbook default, no severity rule matched"]
    hint = highest_hint(signals)
    if hint is not None and hint.rank > severity.rank:
        severity = hint
        reasons.append(f"{hint.value}: a signal's own severity hint")
    return severity, reasons


def seriousness(
    runbook: Runbook,
    signals: list[Signal],
    severity: Severity,
    detectors_fired: Iterable[str] = (),
    signal_count: int | None = None,
    affected_users: int | None = None,
) -> tuple[bool, int, str]:
    """Whether the incident is serious (EU AI Act Art. 3(49)) and how many days to report it.

    Report days are the shortest clock whose condition holds (Art. 73(3)-(4): 10 days for a
    death, 2 for widespread infringement or critical infrastructure), else the runbook's
    general deadline (Art. 73(2): 15 days).
    """
    fired = list(detectors_fired)
    regulatory = runbook.regulatory

    def holds(condition: Condition) -> bool:
        return condition_holds(
            condition, signals=signals, severity=severity, detectors_fired=fired, signal_count=signal_count, affected_users=affected_users
        )

    serious_because = next((c for c in regulatory.serious_when if holds(c)), None)
    clocks = sorted((clock for clock in regulatory.shorter_clocks if holds(clock.when)), key=lambda c: c.days)
    days = clocks[0].days if clocks else regulatory.report_days
    if serious_because is None:
        return False, days, "not serious: no serious_when condition holds"
    reason = f"serious: {describe(serious_because)}"
    if clocks:
        reason += f"; {clocks[0].days}-day clock: {clocks[0].reason}"
    else:
        reason += f"; {days}-day general clock"
    return True, days, reason
