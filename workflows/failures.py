"""What a failure means to the incident: the reason people read, what a failed step carries out,
the abort a responder can choose, and the hand-over to a new run when history grows long."""

from __future__ import annotations

from typing import Any

from temporalio.exceptions import ActivityError


class IncidentAborted(Exception):
    """A responder chose abort after a failure: the lifecycle stops, protections stay."""

    def __init__(self, by: str, reason: str) -> None:
        super().__init__(reason)
        self.by = by


class HandOver(Exception):  # noqa: N818 (not an error: the signal to continue as new)
    """The run's history grew long while it waited: the next run (continue-as-new) takes over
    with the same memory and resumes the wait where this one stood."""


class HarmIsBack(Exception):  # noqa: N818 (not an error: the incident goes on as a new occurrence)
    """A firing signal came while protections were being lifted or were gone: this occurrence
    ends and the next one (continue-as-new) responds to it."""


class StepFailed(Exception):
    """A step ran and its outcome says it did not do its job (verification found the harm again)."""


def cause_of(failure: Exception) -> str:
    """The reason in words: the activity's own message, not the SDK's wrapping."""
    if not isinstance(failure, ActivityError):
        return str(failure)
    cause = failure.cause
    return getattr(cause, "message", None) or str(cause or failure)


def captured_in(failure: ActivityError) -> dict[str, Any] | None:
    """The values a failed step read before its change, as the failure carries them out (the
    ApplicationError's details, or the last heartbeat of an attempt that timed out)."""
    cause = failure.cause
    details = getattr(cause, "details", None) or getattr(cause, "last_heartbeat_details", None) or ()
    for detail in details:
        if isinstance(detail, dict) and "http_captured_for" in detail and isinstance(detail.get("captured"), dict):
            return detail["captured"]
    return None
