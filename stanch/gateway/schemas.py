"""Request and response bodies of the gateway's HTTP API (shown in its OpenAPI at /docs)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _int_to_str(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


VersionName = Annotated[str, BeforeValidator(_int_to_str)]


# -- admin ---------------------------------------------------------------------------------


class ActionBody(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. a runbook's `description` travels along

    kind: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


HOLDER = (
    "who holds the protection this puts in place: the incident occurrence (`<incident id>@<run>`); "
    "another holder's undo never lifts it. Default: the incident id"
)


class ApplyRequest(BaseModel):
    idempotency_key: str = Field(min_length=1)
    incident_id: str = Field(min_length=1)
    model: str = Field(min_length=1)
    action: ActionBody
    holder: str | None = Field(default=None, min_length=1, description=HOLDER)


class ApplyResponse(BaseModel):
    result: dict[str, Any]
    inverse: dict[str, Any] | None = None
    replayed: bool = False


class UndoRequest(BaseModel):
    idempotency_key: str = Field(min_length=1, description="the key the action was applied with")
    undo_key: str = Field(min_length=1, description="a key for this undo; repeating it is a no-op")
    holder: str | None = Field(
        default=None,
        min_length=1,
        description="the holder that applied the key (409 if another did); unset: the key alone decides, as before holders",
    )


class DeployRequest(BaseModel):
    model: str
    version: VersionName
    system_prompt: str | None = Field(
        None, max_length=20_000, description="the platform's system prompt shipped with this change; unset: the last one stays, '': none"
    )
    guardrails: list[str] | None = Field(
        None, description="patterns redacted from answers, shipped with this change; unset: the last ones stay, []: none"
    )
    canary_weights: dict[VersionName, int] | None = Field(
        None, description="percent of traffic per canary version beside the release; unset: the canaries stay, {}: none"
    )
    change_id: str | None = Field(None, max_length=200, description="your name for the change (a pull request, a ticket)")
    description: str | None = Field(None, max_length=2_000)


class DeployResponse(BaseModel):
    model: str
    release_version: str
    previous_release: str
    served_version: str | None
    sequence: int | None = Field(None, description="the change's number in the model's deployment log")


class LedgerResponse(BaseModel):
    entries: list[dict[str, Any]]


class ModelsResponse(BaseModel):
    models: list[str]
