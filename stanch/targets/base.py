"""The one small Protocol every control plane adapter implements.

Activities never speak HTTP themselves: they ask a `Target` to read its state, apply an action
under an idempotency key, undo an applied action, or answer a probe prompt.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, Field

from stanch.models import ActionSpec, AppliedAction, ProbeResult


class TargetError(Exception):
    """A control plane refused or failed an operation.

    `retryable=False` means retrying cannot fix it (unknown action kind, unknown model,
    bad parameters); activities turn that into a non-retryable ApplicationError.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


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

    async def apply(self, model: str, action: ActionSpec, idempotency_key: str, incident_id: str) -> ApplyResult:
        """Apply the action once per key; a repeated key returns the first result."""
        ...

    async def undo(self, applied: AppliedAction, undo_key: str) -> ApplyResult:
        """Revert an applied action using the inverse it recorded; once per undo key."""
        ...

    async def probe(self, model: str, prompt: str, version: str | None = None) -> ProbeResult:
        """Answer a prompt from the given version (default: what users are served)."""
        ...

    async def start_job(self, model: str, kind: str, params: dict[str, Any], idempotency_key: str) -> JobStatus:
        """Start a long-running job (a fine-tune); a repeated key returns the same job."""
        ...

    async def job_status(self, job_id: str) -> JobStatus: ...

    def plan(self, model: str, action: ActionSpec, idempotency_key: str) -> list[PlannedCall]:
        """Every call `apply` would make for this action, each with its undo; touches nothing."""
        ...
