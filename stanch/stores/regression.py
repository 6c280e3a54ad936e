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
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Connection, select

from stanch.models.signals import ReproCase
from stanch.stores.names import safe_file_name
from stanch.stores.records import Records, RecordsError, regression_cases


class RegressionCase(BaseModel):
    id: str
    prompt: str
    messages: list[dict[str, Any]] = Field(default_factory=list, description="the whole conversation; empty: the prompt alone")
    tools: list[dict[str, Any]] = Field(default_factory=list, description="OpenAI tool definitions offered with it")
    detectors: list[str] = Field(default_factory=list)
    source_incident: str
    added_at: datetime

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

    def cases(self, model: str) -> list[RegressionCase]:
        """The model's cases, in the order they were added."""
        self._import_legacy(model)
        query = select(regression_cases).where(regression_cases.c.model == model).order_by(regression_cases.c.id)
        with self.records.begin() as db:
            return [
                RegressionCase(
                    id=row.case_id,
                    prompt=row.prompt,
                    messages=row.messages,
                    tools=row.tools,
                    detectors=row.detectors,
                    source_incident=row.source_incident,
                    # SQLite hands a timestamp back without its zone; it was written in UTC.
                    added_at=row.added_at if row.added_at.tzinfo else row.added_at.replace(tzinfo=UTC),
                )
                for row in db.execute(query)
            ]

    def add(self, model: str, cases: list[ReproCase], incident_id: str) -> int:
        """Add the cases the suite does not hold yet; how many this call really added (another
        worker adding the same case at the same moment counts it once, on one side)."""
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
            return sum(self._insert(db, model, entry) for entry in entries)

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


def read_legacy_line(path: Path, number: int, line: str) -> RegressionCase:
    try:
        return RegressionCase.model_validate_json(line)
    except ValidationError as error:
        raise RecordsError(
            f"{path} line {number} is no regression case ({error.error_count()} problems): fix or remove that line"
        ) from None
