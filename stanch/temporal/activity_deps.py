"""What activities need from the outside world, handed in once when the worker starts, and how
a control plane's failure becomes a Temporal activity failure."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio.exceptions import ApplicationError

from stanch.config.settings import Settings
from stanch.targets.base import TargetError
from stanch.targets.registry import TargetRegistry


@dataclass
class ActivityDeps:
    settings: Settings
    targets: TargetRegistry

    @classmethod
    def from_settings(cls, settings: Settings) -> ActivityDeps:
        return cls(settings=settings, targets=TargetRegistry(settings))


def as_application_error(error: TargetError, what: str = "") -> ApplicationError:
    """Retryable target failures retry; the rest fail at once, with a type a runbook author can read.
    What the error carries out (`details`: values a step read before its change) goes along as
    the ApplicationError's first detail, for the workflow to hand to a retry."""
    details = [] if error.details is None else [error.details]
    return ApplicationError(
        f"{what}: {error}" if what else str(error),
        *details,
        type="TargetUnavailable" if error.retryable else "InvalidAction",
        non_retryable=not error.retryable,
    )
