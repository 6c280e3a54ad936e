"""What activities need from the outside world, handed in once when the worker starts, and how
a control plane's failure becomes a Temporal activity failure."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from temporalio.exceptions import ApplicationError

from stanch.config.settings import Settings
from stanch.stores.artefacts import ArtefactStore, store_from_settings
from stanch.stores.records import Records
from stanch.stores.regression import RegressionSuite
from stanch.targets.base import TargetError
from stanch.targets.registry import TargetRegistry


@dataclass
class ActivityDeps:
    settings: Settings
    targets: TargetRegistry
    # Where evidence and review documents go. Left out (deps built by hand, as tests do): the
    # store the settings name, as a worker builds it.
    artefacts: ArtefactStore = field(default=None)  # type: ignore[assignment]
    # The regression suite and the notification deliveries (STANCH_DATABASE_URL, else
    # HOME/stanch.db); left out, the one the settings name. Connects on first use.
    records: Records = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.artefacts is None:
            self.artefacts = store_from_settings(self.settings)
        if self.records is None:
            self.records = Records.from_settings(self.settings)

    @property
    def regression_suite(self) -> RegressionSuite:
        """Every model's regression cases, in the records database (earlier JSONL suites under
        HOME/regression imported on first use). Its calls block: run them with asyncio.to_thread."""
        return RegressionSuite(self.records, self.settings.regression_dir)

    @classmethod
    def from_settings(cls, settings: Settings) -> ActivityDeps:
        records = Records.from_settings(settings)
        # A worker upgrades the schema as it starts: a database it cannot reach stops it here, named.
        records.upgrade()
        return cls(settings=settings, targets=TargetRegistry(settings), artefacts=store_from_settings(settings), records=records)

    @classmethod
    async def for_worker(cls, settings: Settings) -> ActivityDeps:
        """What a starting worker hands its activities, once both shared stores proved usable: the
        records schema upgraded (RecordsError names STANCH_DATABASE_URL) and a tiny artefact
        stored and read back (ArtefactError names STANCH_ARTEFACTS and the AWS_* variables).
        The database's round trips run on a thread: the event loop keeps serving meanwhile."""
        deps = await asyncio.to_thread(cls.from_settings, settings)
        await deps.artefacts.check()
        return deps


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
