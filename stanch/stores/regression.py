"""The regression suite: every incident's repro cases, replayed by every later verification.

The cases live in the records database (`regression_cases`, see stanch.stores.records), so a fix
verified on one worker replays the cases another worker added. A case keeps its whole
conversation (`messages`) and the tools offered with it (`tools`) beside its `prompt`, so a
multi-turn case or one that offers an agent its tools replays as it happened. A case is
identified by its model and `ReproCase.key()` (the prompt, or the whole conversation and its
tools): the database holds each (model, case id) once, so adding the same incident twice, or
from two workers at the same moment, adds it once.

Earlier versions kept one JSON line per case under `STANCH_HOME/regression/<model>.jsonl`; a
suite there is imported the first time this process asks for its model, so an installation
upgraded in place keeps its suite (importing again adds nothing). The files stay where they are.

A case is retired only with a reason, recorded with who retired it and when
(`regression_case_retirements`): a retired case no longer guards later changes — verification
and the regression gate (stanch.gate) skip it — and is listed with its reason. A retired case
that an incident records again guards again: the harm a person retired came back.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Connection, delete, select

from stanch.models.signals import ReproCase
from stanch.stores.names import safe_file_name
from stanch.stores.records import Records, RecordsError, regression_case_retirements, regression_cases


class Retirement(BaseModel):
    """Why a case no longer guards changes, who said so and when."""

    reason: str
    retired_by: str
    retired_at: datetime


class CaseNotFound(LookupError):
    """No case with that key (for that model); the message says where to look."""


class RegressionCase(BaseModel):
    id: str
    prompt: str
    messages: list[dict[str, Any]] = Field(default_factory=list, description="the whole conversation; empty: the prompt alone")
    tools: list[dict[str, Any]] = Field(default_factory=list, description="OpenAI tool definitions offered with it")
    detectors: list[str] = Field(default_factory=list)
    source_incident: str
    added_at: datetime
    retired: Retirement | None = None

    def repro_case(self) -> ReproCase:
        """The case to replay: its conversation and tools, as the incident recorded them."""
        return ReproCase(prompt=self.prompt, messages=self.messages, tools=self.tools, detectors=self.detectors)


def case_id(model: str, case: ReproCase) -> str:
    # A prompt-only case's key is its prompt: ids written before conversations were kept stay the same.
    return hashlib.sha256(f"{model}\n{case.key()}".encode()).hexdigest()[:16]


def legacy_suite_path(folder: Path, model: str) -> Path:
    """Where earlier versions kept a model's suite (a model that is no plain file name under
    `safe_file_name` of it)."""
    return folder / f"{safe_file_name(model)}.jsonl"


# (database, JSONL file) pairs this process has imported: a file is read once per process, not
# at every verification (importing it again would add nothing anyway).
_IMPORTED: set[tuple[str, Path]] = set()


class RegressionSuite:
    """Every model's regression cases in the records database. `legacy_folder`: the
    `STANCH_HOME/regression` folder whose JSONL suites are imported on first use."""

    def __init__(self, records: Records, legacy_folder: Path | None = None) -> None:
        self.records = records
        self.legacy_folder = legacy_folder

    def cases(self, model: str, *, include_retired: bool = False) -> list[RegressionCase]:
        """The model's cases that still guard changes, in the order they were added; with
        `include_retired`, the retired ones too, each with its retirement."""
        self._import_legacy(model)
        retired = regression_case_retirements
        query = (
            select(regression_cases, retired.c.reason, retired.c.retired_by, retired.c.retired_at)
            .outerjoin(retired, (retired.c.model == regression_cases.c.model) & (retired.c.case_id == regression_cases.c.case_id))
            .where(regression_cases.c.model == model)
            .order_by(regression_cases.c.id)
        )
        if not include_retired:
            query = query.where(retired.c.case_id.is_(None))
        with self.records.begin() as db:
            return [
                RegressionCase(
                    id=row.case_id,
                    prompt=row.prompt,
                    messages=row.messages,
                    tools=row.tools,
                    detectors=row.detectors,
                    source_incident=row.source_incident,
                    added_at=_in_utc(row.added_at),
                    retired=None
                    if row.reason is None
                    else Retirement(reason=row.reason, retired_by=row.retired_by, retired_at=_in_utc(row.retired_at)),
                )
                for row in db.execute(query)
            ]

    def retire(self, case_key: str, *, reason: str, by: str, model: str | None = None) -> tuple[str, Retirement]:
        """Retire a case (its key, within `model` when given): it stops guarding changes. The
        reason and who is required; retiring a retired case again keeps the first record.
        Returns the case's model and its retirement; raises CaseNotFound, ValueError for a blank
        reason or name."""
        if not reason.strip():
            raise ValueError("a case is retired only with a reason (--reason): say why it no longer guards changes")
        if not by.strip():
            raise ValueError("say who retires the case (--by)")
        query = select(regression_cases.c.model).where(regression_cases.c.case_id == case_key)
        if model is not None:
            query = query.where(regression_cases.c.model == model)
        with self.records.begin() as db:
            models = sorted({row.model for row in db.execute(query)})
            if not models:
                where = f" of model {model}" if model is not None else ""
                raise CaseNotFound(f"no regression case {case_key!r}{where}; `stanch gate cases --model M` lists a model's cases")
            if len(models) > 1:
                raise CaseNotFound(f"case {case_key!r} is in the suites of {', '.join(models)}: say which with --model")
            row = {"model": models[0], "case_id": case_key, "reason": reason.strip(), "retired_by": by.strip()}
            statement = self.records.insert(regression_case_retirements).values(**row, retired_at=datetime.now(UTC))
            db.execute(statement.on_conflict_do_nothing(index_elements=["model", "case_id"]))
            kept = db.execute(
                select(regression_case_retirements).where(
                    (regression_case_retirements.c.model == models[0]) & (regression_case_retirements.c.case_id == case_key)
                )
            ).one()
        return models[0], Retirement(reason=kept.reason, retired_by=kept.retired_by, retired_at=_in_utc(kept.retired_at))

    def add(self, model: str, cases: list[ReproCase], incident_id: str) -> int:
        """Add the cases the suite does not hold yet, and bring back retired ones recorded again;
        how many this call really added or brought back (another worker adding the same case at
        the same moment counts it once, on one side)."""
        self._import_legacy(model)
        now = datetime.now(UTC)
        entries = [
            RegressionCase(
                id=case_id(model, case),
                prompt=case.prompt,
                messages=case.messages,
                tools=case.tools,
                detectors=case.detectors,
                source_incident=incident_id,
                added_at=now,
            )
            for case in cases
        ]
        with self.records.begin() as db:
            return sum(self._insert(db, model, entry) or self._reactivate(db, model, entry) for entry in entries)

    def _reactivate(self, db: Connection, model: str, entry: RegressionCase) -> int:
        """1 if the case was retired: an incident recorded it again, so it guards again."""
        retired = regression_case_retirements
        lifted = db.execute(delete(retired).where((retired.c.model == model) & (retired.c.case_id == entry.id)))
        return 1 if lifted.rowcount else 0

    def _insert(self, db: Connection, model: str, entry: RegressionCase) -> int:
        """1 if the row went in, 0 if the suite held that case already."""
        row = {
            "model": model,
            "case_id": entry.id,
            "prompt": entry.prompt,
            "messages": entry.messages,
            "tools": entry.tools,
            "detectors": entry.detectors,
            "source_incident": entry.source_incident,
            "added_at": entry.added_at,
        }
        statement = self.records.insert(regression_cases).values(row).on_conflict_do_nothing(index_elements=["model", "case_id"])
        # RETURNING yields the row only when it went in: a count every driver reports alike.
        return len(db.execute(statement.returning(regression_cases.c.id)).all())

    def _import_legacy(self, model: str) -> None:
        if self.legacy_folder is None:
            return
        path = legacy_suite_path(self.legacy_folder, model)
        if (self.records.shown_as, path) in _IMPORTED:
            return
        if path.exists():
            entries = [read_legacy_line(path, number, line) for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
            with self.records.begin() as db:
                for entry in entries:
                    self._insert(db, model, entry)
        _IMPORTED.add((self.records.shown_as, path))


def _in_utc(moment: datetime) -> datetime:
    # SQLite hands a timestamp back without its zone; it was written in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def read_legacy_line(path: Path, number: int, line: str) -> RegressionCase:
    try:
        return RegressionCase.model_validate_json(line)
    except ValidationError as error:
        raise RecordsError(
            f"{path} line {number} is no regression case ({error.error_count()} problems): fix or remove that line"
        ) from None
