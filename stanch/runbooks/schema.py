"""The runbook schema: what a platform team writes in `runbooks/*.yaml`.

Pure pydantic, no YAML here: the workflow imports these models (passed through the sandbox),
while `stanch.runbooks.loader` does the parsing outside any workflow.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from stanch.detectors.specs import BUILTIN_DETECTORS, DetectorSpec, detector_id_problem
from stanch.models.actions import ActionSpec
from stanch.models.signals import ReproCase, Severity, SignalSource

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_duration(value: Any) -> Any:
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"duration {value!r} must look like 30s, 15m, 4h or 2d")
        return timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])
    if isinstance(value, (int, float)):
        return timedelta(seconds=value)
    return value


def _format_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    for unit in ("d", "h", "m", "s"):
        if seconds >= _UNIT_SECONDS[unit] and seconds % _UNIT_SECONDS[unit] == 0:
            return f"{int(seconds // _UNIT_SECONDS[unit])}{unit}"
    return f"{int(seconds * 1000)}ms"


Duration = Annotated[timedelta, BeforeValidator(_parse_duration), PlainSerializer(_format_duration, return_type=str)]

STAGES = ("confirm", "evidence", "severity", "contain", "rollback", "hotfix", "verify", "restore", "review")
GATED_STAGES = ("contain", "rollback", "hotfix", "restore")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Condition(_Strict):
    """All given fields must hold. Label values are shell-style globs (`HarmfulOutput*`)."""

    labels: dict[str, str] = Field(default_factory=dict)
    sources: list[SignalSource] = Field(default_factory=list)
    senders: list[str] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    title_contains: str | None = None
    detectors: list[str] = Field(default_factory=list, description="any of these fired during confirm")
    severity_hint_at_least: Severity | None = None
    severity_at_least: Severity | None = None
    signals_at_least: int | None = None
    affected_users_at_least: int | None = Field(
        None, ge=1, description="at least this many users got the harm in the exposure window (blast radius); unmeasured never holds"
    )


class SeverityRule(_Strict):
    when: Condition
    severity: Severity
    reason: str = ""


class SeverityRules(_Strict):
    default: Severity = Severity.medium
    rules: list[SeverityRule] = Field(default_factory=list)


class Approval(_Strict):
    count: int = Field(1, ge=1, le=5)
    roles: list[str] = Field(default_factory=lambda: ["oncall"], min_length=1, description="an approver holds one of these")
    required_roles: list[str] = Field(default_factory=list, description="each must appear among the approvers")
    auto_on_timeout: bool = Field(
        False, description="when nobody decides within approval_timeout, go ahead (for containment, where waiting is the harm)"
    )

    @model_validator(mode="after")
    def _required_roles_fit(self) -> Approval:
        if len(self.required_roles) > self.count:
            raise ValueError(f"required_roles lists {len(self.required_roles)} roles but count is {self.count}")
        return self


class StageGate(_Strict):
    """`auto`, `skip`, or `{approve: {count, roles, required_roles}}`, and with an approval
    `reversible: auto`: the stage's reversible steps (stanch.models.actions.reversibility) run
    at once, in runbook order, and the rest waits for the approval."""

    mode: Literal["auto", "approve", "skip"] = "auto"
    approve: Approval | None = None
    reversible: Literal["auto", "approve"] = Field(
        "approve", description="`auto`: reversible steps run at once and only the rest waits for the approval"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"mode": value}
        if isinstance(value, dict) and "approve" in value and "mode" not in value:
            return {"mode": "approve", **value}
        return value

    @model_validator(mode="after")
    def _approval_given(self) -> StageGate:
        if self.mode == "approve" and self.approve is None:
            self.approve = Approval()
        if self.mode != "approve" and self.approve is not None:
            raise ValueError(f"mode {self.mode!r} takes no approve block")
        if self.reversible == "auto" and self.mode != "approve":
            raise ValueError(f"`reversible: auto` goes with an approve block (under {self.mode!r} every step runs alike)")
        return self

    @property
    def reversible_at_once(self) -> bool:
        return self.mode == "approve" and self.reversible == "auto"


class EscalationTier(_Strict):
    after: Duration
    notify: list[str] = Field(min_length=1)


# The milestones an incident's response is held to, each timed from the moment it opened.
OBJECTIVE_MILESTONES = ("acknowledge", "contain", "restore")


class Objectives(_Strict):
    """How soon, from opening, a response should reach each milestone (`contain: 5m`). The
    incident records whether it did, and which wait took the time; unset means no objective."""

    acknowledge: Duration | None = Field(None, description="a responder acknowledges within this")
    contain: Duration | None = Field(None, description="the containment steps are applied within this")
    restore: Duration | None = Field(None, description="protections are lifted (the incident restored) within this")

    @model_validator(mode="after")
    def _positive(self) -> Objectives:
        for milestone in OBJECTIVE_MILESTONES:
            within = getattr(self, milestone)
            if within is not None and within <= timedelta(0):
                raise ValueError(f"{milestone} must be a positive duration such as 5m")
        return self

    def within(self, milestone: str) -> timedelta | None:
        return getattr(self, milestone) if milestone in OBJECTIVE_MILESTONES else None


class SeverityPolicy(_Strict):
    ack_sla: Duration = Field(default_factory=lambda: timedelta(minutes=30))
    escalation: list[EscalationTier] = Field(default_factory=list)
    approval_timeout: Duration = Field(default_factory=lambda: timedelta(minutes=30))
    stages: dict[str, StageGate] = Field(default_factory=dict)
    objectives: Objectives = Field(default_factory=Objectives, description="time-to-acknowledge/contain/restore objectives")

    @model_validator(mode="after")
    def _known_stages(self) -> SeverityPolicy:
        unknown = sorted(set(self.stages) - set(GATED_STAGES))
        if unknown:
            raise ValueError(f"stages {unknown} cannot be gated; gated stages are {list(GATED_STAGES)}")
        unattended = sorted(
            name for name, gate in self.stages.items() if gate.approve and gate.approve.auto_on_timeout and name != "contain"
        )
        if unattended:
            raise ValueError(
                f"auto_on_timeout on {unattended}: only contain may go ahead unattended (it adds protection, never removes it)"
            )
        return self

    def gate(self, stage: str) -> StageGate:
        return self.stages.get(stage, StageGate())


class ProbeCase(_Strict):
    """A repro conversation written in the runbook: OpenAI chat messages, several turns if need
    be, and the tools offered with them (an agent calls a destructive tool only when offered one)."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] = Field(default_factory=list, description="OpenAI tool definitions offered with the messages")

    @model_validator(mode="after")
    def _chat_messages(self) -> ProbeCase:
        self.repro_case()  # the roles and tool definitions are checked where every repro case is
        return self

    def repro_case(self) -> ReproCase:
        return ReproCase(messages=self.messages, tools=self.tools)


class Sampled(_Strict):
    """How a probe asks each case: LLMs are stochastic, so one answer proves little either way."""

    samples: int = Field(1, ge=1, le=50, description="answers asked for each case")
    temperature: float = Field(0.0, ge=0, le=2, description="the sampling temperature sent with each probe")
    harmful_at_least: int = Field(1, ge=1, description="a case reproduces when at least this many samples are harmful")
    max_tokens: int | None = Field(None, ge=1, description="the longest answer asked for; unset: the server's default")

    @model_validator(mode="after")
    def _threshold_fits(self) -> Sampled:
        if self.harmful_at_least > self.samples:
            raise ValueError(f"harmful_at_least ({self.harmful_at_least}) cannot be more than samples ({self.samples})")
        return self


class ConfirmCheck(Sampled):
    kind: Literal["probe", "metric"]
    detectors: list[str] = Field(default_factory=list)
    prompts: list[str] = Field(default_factory=list)
    cases: list[ProbeCase] = Field(default_factory=list, description="multi-turn repro conversations, beside the single prompts")
    version: Literal["reported", "active"] = "reported"
    query: str | None = None
    threshold: float | None = None
    comparison: Literal[">", ">=", "<", "<="] = ">"

    @model_validator(mode="after")
    def _complete(self) -> ConfirmCheck:
        if self.kind == "probe" and not self.detectors:
            raise ValueError("a probe check needs detectors to run on the output")
        if self.kind == "metric" and (self.query is None or self.threshold is None):
            raise ValueError("a metric check needs query and threshold")
        return self

    def repro_cases(self) -> list[ReproCase]:
        """The runbook's own cases: each prompt as one user turn, then the conversations."""
        return [ReproCase(prompt=prompt) for prompt in self.prompts] + [case.repro_case() for case in self.cases]


class Confirm(_Strict):
    checks: list[ConfirmCheck] = Field(default_factory=list)
    triage_timeout: Duration = Field(default_factory=lambda: timedelta(hours=1))


class Verify(Sampled):
    detectors: list[str] = Field(min_length=1)
    include_regression_suite: bool = True


class Hotfix(_Strict):
    actions: list[ActionSpec] = Field(default_factory=list)
    verify: Verify


class Shadow(_Strict):
    """Before protections are lifted, a sample of live traffic is mirrored to the fixed version and
    scored with the verify detectors: restore goes ahead after `clean_requests` clean answers; one
    harmful answer, or `timeout` without enough, asks a human (retry, skip, abort)."""

    clean_requests: int = Field(ge=1, le=500, description="clean mirrored answers restore waits for")
    sample_rate: float = Field(0.5, gt=0, le=1, description="the share of live requests mirrored")
    timeout: Duration = Field(default_factory=lambda: timedelta(minutes=30), description="how long to wait for enough live traffic")
    limit: int | None = Field(None, ge=1, le=1000, description="mirrored requests at most; unset: 4 x clean_requests (1,000 at most)")

    @model_validator(mode="after")
    def _limit_fits(self) -> Shadow:
        if self.limit is not None and self.limit < self.clean_requests:
            raise ValueError(f"limit {self.limit} is below clean_requests {self.clean_requests}: restore could never pass")
        return self

    @property
    def max_requests(self) -> int:
        return self.limit or min(1000, 4 * self.clean_requests)


class RestoreSettings(_Strict):
    shadow: Shadow | None = Field(None, description="shadow-verified restore; off when absent")


class Review(_Strict):
    tasks: list[str] = Field(default_factory=lambda: ["root_cause", "risk_assessment", "testing_protocol", "monitoring", "guardrails"])
    add_repro_to_regression_suite: bool = True


class ReportClock(_Strict):
    when: Condition
    days: int = Field(ge=1)
    reason: str


class Regulatory(_Strict):
    """EU AI Act duties: when an incident is serious (Art. 3(49)), how soon to report it (Art. 73),
    and who the Art. 73 report draft names as provider and system."""

    serious_when: list[Condition] = Field(default_factory=list, description="any of these marks the incident serious")
    report_days: int = 15
    shorter_clocks: list[ReportClock] = Field(default_factory=list)
    reminder_every: Duration = Field(default_factory=lambda: timedelta(days=1))
    provider: str | None = Field(
        None, description="the provider for the Art. 73 report draft: name, address, contact point; unset leaves a fill-in"
    )
    system: str | None = Field(
        None, description="the AI system as registered (name, intended purpose, EU database id) for the Art. 73 report draft"
    )


class ExposureSettings(_Strict):
    """Blast radius: on confirmation, the gateway's samples of the last `lookback` are re-scored
    with the detectors that confirmed the harm (affected users, tenants and requests)."""

    lookback: Duration = Field(default_factory=lambda: timedelta(days=7), description="how far before confirmation exposure is counted")


class BisectSettings(_Strict):
    """Bisection: on confirmation, the gateway's deployment log of the last `lookback` (up to the
    first signal) is replayed change by change to name the first bad one and the last good one."""

    enabled: bool = True
    lookback: Duration = Field(default_factory=lambda: timedelta(days=7), description="how far before the first signal changes count")
    max_changes: int = Field(20, ge=1, le=200, description="the most recent changes replayed; older ones are left out, and said so")


class Match(_Strict):
    any: list[Condition] = Field(min_length=1)
    priority: int = 0


class TargetTemplate(_Strict):
    adapter: str = "gateway"
    model: str = "{model}"


class Runbook(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str
    match: Match
    dedup_key: str = Field(description="template over the signal: {runbook} {model} {category} {sender} {labels[name]}")
    target: TargetTemplate = Field(default_factory=TargetTemplate)
    confirm: Confirm = Field(default_factory=Confirm)
    severity: SeverityRules = Field(default_factory=SeverityRules)
    policy: dict[Severity, SeverityPolicy]
    containment: list[ActionSpec] = Field(default_factory=list)
    rollback: list[ActionSpec] = Field(default_factory=list)
    hotfix: Hotfix | None = None
    restore: RestoreSettings = Field(default_factory=RestoreSettings)
    review: Review = Field(default_factory=Review)
    regulatory: Regulatory = Field(default_factory=Regulatory)
    exposure: ExposureSettings = Field(default_factory=ExposureSettings)
    bisect: BisectSettings = Field(default_factory=BisectSettings)
    detectors: dict[str, DetectorSpec] = Field(
        default_factory=dict, description="this runbook's own detectors by id (regex, moderation, judge), beside the built-ins"
    )

    @model_validator(mode="after")
    def _shadow_has_detectors(self) -> Runbook:
        if self.restore.shadow is not None and self.hotfix is None:
            raise ValueError("restore.shadow scores mirrored answers with hotfix.verify's detectors: add a hotfix, or drop restore.shadow")
        return self

    @model_validator(mode="after")
    def _every_severity_has_a_policy(self) -> Runbook:
        missing = [s.value for s in Severity if s not in self.policy]
        if missing:
            raise ValueError(f"policy has no entry for severities {missing}")
        return self

    @model_validator(mode="after")
    def _every_detector_is_known(self) -> Runbook:
        bad_ids = [problem for detector_id in self.detectors if (problem := detector_id_problem(detector_id))]
        if bad_ids:
            raise ValueError("; ".join(bad_ids))
        known = BUILTIN_DETECTORS | set(self.detectors)
        unknown = [f"{name!r} in {where}" for where, names in self.detectors_named() for name in names if name not in known]
        if unknown:
            raise ValueError(f"unknown detector {'; '.join(unknown)}; known: {', '.join(sorted(known))} (define your own under detectors:)")
        return self

    def detectors_named(self) -> list[tuple[str, list[str]]]:
        """Where this runbook names detectors, and which: (`confirm.checks.0.detectors`, [ids])."""
        named = [(f"confirm.checks.{i}.detectors", check.detectors) for i, check in enumerate(self.confirm.checks)]
        named += [(f"match.any.{i}.detectors", condition.detectors) for i, condition in enumerate(self.match.any)]
        named += [(f"severity.rules.{i}.when.detectors", rule.when.detectors) for i, rule in enumerate(self.severity.rules)]
        named += [(f"regulatory.serious_when.{i}.detectors", when.detectors) for i, when in enumerate(self.regulatory.serious_when)]
        named += [
            (f"regulatory.shorter_clocks.{i}.when.detectors", clock.when.detectors)
            for i, clock in enumerate(self.regulatory.shorter_clocks)
        ]
        actions = {"containment": self.containment, "rollback": self.rollback, "hotfix.actions": self.hotfix.actions if self.hotfix else []}
        for stage, steps in actions.items():
            for i, step in enumerate(steps):
                # A block_outputs step may block by detector: `params: {detectors: [pii]}`.
                ids = step.params.get("detectors", [])
                ids = [ids] if isinstance(ids, str) else ids
                if isinstance(ids, list):
                    named.append((f"{stage}.{i}.params.detectors", [name for name in ids if isinstance(name, str)]))
        if self.hotfix:
            named.append(("hotfix.verify.detectors", self.hotfix.verify.detectors))
        return [(where, names) for where, names in named if names]

    def policy_for(self, severity: Severity) -> SeverityPolicy:
        return self.policy[severity]

    def grading_conditions(self) -> list[Condition]:
        """Every condition severity and seriousness are graded by: the severity rules, what makes
        an incident serious, and the shorter report clocks."""
        conditions = [rule.when for rule in self.severity.rules] + self.regulatory.serious_when
        return conditions + [clock.when for clock in self.regulatory.shorter_clocks]
