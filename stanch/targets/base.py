"""The one small Protocol every control plane adapter implements.

Activities never speak HTTP themselves: they ask a `Target` to read its state, apply an action
under an idempotency key, undo an applied action, or say where a probe goes (its OpenAI-compatible
chat endpoint: `stanch.probe` sends the probe).
"""

from __future__ import annotations

import unicodedata
from contextvars import ContextVar
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, Field

from stanch.models.actions import ActionSpec, AppliedAction
from stanch.probe.endpoint import ChatEndpoint


class TargetError(Exception):
    """A control plane refused or failed an operation.

    `retryable=False` means retrying cannot fix it (unknown action kind, unknown model,
    bad parameters); activities turn that into a non-retryable ApplicationError.
    """

    def __init__(self, message: str, *, retryable: bool = True, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        # What the failure carries out to the workflow (ApplicationError details), such as the
        # values a step read before its change: a retry a responder chooses reuses them.
        self.details = details


class NoStateToSnapshot(TargetError):
    """The target keeps no state to read (a generic HTTP target with no `state_url`).

    The only failure evidence records as "unavailable" for a step's target: any other failure
    to read state stops the incident before its first change, so a human decides.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


# The values a step read before its change (a generic HTTP step's `before` captures), carried by
# the workflow out of a failed run of the step into the run a responder retried: (idempotency
# key, values). The adapter reuses them instead of reading again — by then the change may have
# landed, and a fresh read would take the changed state for the one to restore.
carried_captures: ContextVar[tuple[str, dict[str, Any]] | None] = ContextVar("carried_captures", default=None)


def unfit_value(value: str) -> str | None:
    """Why a value from an alert (the model, the version, the incident id) may not be filled into
    a control-plane request, or None. Such values name secrets (`$`, braces), split headers
    (control characters) or climb paths (`.`/`..` segments); the reason never repeats the value."""
    if "$" in value:
        return "contains '$' (it could name a secret)"
    if "{" in value or "}" in value:
        return "contains a brace (it could name a secret or a placeholder)"
    if any(unicodedata.category(char) == "Cc" for char in value):
        return "contains a control character"
    if any(segment in (".", "..") for segment in value.replace("\\", "/").split("/")):
        return "has a '.' or '..' path segment"
    return None


class ApplyResult(BaseModel):
    """What the target reports for one apply: `replayed` when the key had been applied before."""

    result: dict[str, Any] = Field(default_factory=dict)
    inverse: dict[str, Any] | None = None
    replayed: bool = False


class JobStatus(BaseModel):
    job_id: str
    status: str  # queued | running | succeeded | failed
    progress: float = 0.0
    result: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class PlannedCall(BaseModel):
    """One call an action would make on a control plane, described without making it.

    `stanch runbooks plan` prints these and a dry-run incident records them; secrets appear
    only as the reference that names them (`$LITELLM_KEY`, `file:keys/litellm`), never as values.
    """

    target: str  # the configured target's name, as runbooks and targets.yaml call it
    adapter: str  # its kind: gateway | http | mlflow | flagd
    operation: str  # what it does, in a phrase: "move alias champion of support-bot to version 2"
    method: str | None = None  # HTTP method, where the adapter speaks HTTP
    url: str | None = None
    body: Any = None
    undo: list[PlannedCall] = Field(default_factory=list)  # what restore would call to put it back


class Target(Protocol):
    async def state(self, model: str) -> dict[str, Any]:
        """Everything an investigation needs about the model's current control state."""
        ...

    async def apply(self, model: str, action: ActionSpec, idempotency_key: str, incident_id: str, holder: str | None = None) -> ApplyResult:
        """Apply the action once per key; a repeated key returns the first result.

        `holder` (the incident occurrence; None: the incident) holds what the action puts in
        place. Where several holders protect the same thing, the adapter keeps each one's hold:
        the state is their union, and it returns to what was there before the first only when
        the last lets go.
        """
        ...

    async def undo(self, applied: AppliedAction, undo_key: str) -> ApplyResult:
        """Release what the applied action holds, once per undo key: never another holder's protection."""
        ...

    def chat_endpoint(self, model: str, version: str | None = None) -> ChatEndpoint:
        """Where a probe of the model goes: an OpenAI-compatible chat endpoint answering from the
        given version (None: what users are served now; "release": the version a fix deploys).

        Built when the probe is sent, secrets included, and never stored in history. Raises a
        non-retryable TargetError when the target serves no model."""
        ...

    async def start_job(self, model: str, kind: str, params: dict[str, Any], idempotency_key: str) -> JobStatus:
        """Start a long-running job (a fine-tune); a repeated key returns the same job."""
        ...

    async def job_status(self, job_id: str) -> JobStatus: ...

    def plan(self, model: str, action: ActionSpec, idempotency_key: str) -> list[PlannedCall]:
        """Every call `apply` would make for this action, each with its undo; touches nothing."""
        ...


class ServesNoModel:
    """For adapters that change a control plane (a registry, a flag file, an HTTP API) but serve
    no model: probes and jobs are refused for good, saying where they belong."""

    kind: ClassVar[str]
    label: ClassVar[str]  # the control plane, as a person names it: "generic HTTP", "MLflow registry"
    name: str

    def chat_endpoint(self, model: str, version: str | None = None) -> ChatEndpoint:
        raise TargetError(
            f"target {self.name} ({self.label}) serves no prompts: keep a serving target (the gateway) as the "
            f"runbook's target and name {self.name} on the steps that act on it",
            retryable=False,
        )

    async def start_job(self, model: str, kind: str, params: dict[str, Any], idempotency_key: str) -> JobStatus:
        raise TargetError(
            f"target {self.name} ({self.label}) runs no jobs: a fine-tune needs a serving target such as the gateway", retryable=False
        )

    async def job_status(self, job_id: str) -> JobStatus:
        raise TargetError(f"target {self.name} ({self.label}) runs no jobs", retryable=False)
