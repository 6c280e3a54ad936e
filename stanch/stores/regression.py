"""The regression suite: every incident's repro cases, replayed by every later verification.

One JSON line per case under `STANCH_HOME/regression/<model>.jsonl` (a model that is no plain
file name is stored under `safe_file_name` of it). A case keeps its whole conversation
(`messages`) and the tools offered with it (`tools`) beside its `prompt`, so a multi-turn case
or one that offers an agent its tools replays as it happened; lines written before that hold a
prompt alone and still load. A case is identified by its model and `ReproCase.key()` (the
prompt, or the whole conversation and its tools), so adding the same incident twice adds nothing.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from stanch.models.signals import ReproCase
from stanch.stores.names import safe_file_name


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


def suite_path(folder: Path, model: str) -> Path:
    return folder / f"{safe_file_name(model)}.jsonl"


def case_id(model: str, case: ReproCase) -> str:
    # A prompt-only case's key is its prompt: ids written before conversations were kept stay the same.
    return hashlib.sha256(f"{model}\n{case.key()}".encode()).hexdigest()[:16]


def load_suite(folder: Path, model: str) -> list[RegressionCase]:
    path = suite_path(folder, model)
    if not path.exists():
        return []
    return [RegressionCase.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]


def add_cases(folder: Path, model: str, cases: list[ReproCase], incident_id: str) -> int:
    """Append the cases the suite does not hold yet; how many were added."""
    known = {case.id for case in load_suite(folder, model)}
    added = 0
    with suite_path(folder, model).open("a") as suite:
        for case in cases:
            identity = case_id(model, case)
            if identity in known:
                continue
            entry = RegressionCase(
                id=identity,
                prompt=case.prompt,
                messages=case.messages,
                tools=case.tools,
                detectors=case.detectors,
                source_incident=incident_id,
                added_at=datetime.now(UTC),
            )
            suite.write(json.dumps(entry.model_dump(mode="json")) + "\n")
            known.add(identity)
            added += 1
    return added
