"""Reading runbooks from disk: YAML in, validated `Runbook` plus the sha256 of its bytes out.

This is the only module that parses runbook YAML. It runs outside any workflow (API, CLI,
worker start-up); the workflow receives the parsed runbook and its sha256 in its input, so a
running incident follows the runbook it started with even if the file changes afterwards.
"""

from __future__ import annotations

import hashlib
import string
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from stanch.config.errors import ConfigFileError, load_yaml

# Settings own the default folder (config sits below runbooks); callers keep finding it here.
from stanch.config.settings import default_runbooks_dir as default_runbooks_dir
from stanch.runbooks import schema
from stanch.runbooks.schema import Runbook

FALLBACK_RUNBOOK = "triage"
RUNBOOK_SUFFIXES = (".yaml", ".yml")
# What `dedup_key` and `target.model` may refer to; `stanch.intake.routing` renders them.
TEMPLATE_FIELDS = frozenset({"runbook", "model", "version", "category", "sender", "source", "title", "labels"})


class RunbookError(ConfigFileError):
    """A runbook (or a folder of them) cannot be used.

    The message is one line per problem, each starting with the file and, for schema errors,
    the dotted field path, so a platform engineer can jump straight to the mistake.
    """


# Every field name of the runbook schema, to place errors raised by whole-model validators.
_SCHEMA_FIELDS = frozenset(
    name
    for model in vars(schema).values()
    if isinstance(model, type) and issubclass(model, BaseModel) and model.__module__ == schema.__name__
    for name in model.model_fields
)


class LoadedRunbook(BaseModel):
    runbook: Runbook
    sha256: str
    path: str


def _field_path(loc: tuple[Any, ...]) -> str:
    # pydantic locations mix field names, dict keys (Severity values) and list indexes;
    # `policy.high.stages.contain.approve.count` and `containment.0.kind` read naturally.
    parts = [part.value if hasattr(part, "value") else str(part) for part in loc]
    return ".".join(parts) if parts else "(runbook)"


def _validation_lines(path: Path, error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        loc, message = tuple(item["loc"]), item["msg"].removeprefix("Value error, ")
        if loc and loc[-1] == "[key]":
            # A bad mapping key (`policy.lowish`): name the key itself as the field.
            loc, message = loc[:-1], f"invalid key: {message}"
        elif message.split(" ", 1)[0] in _SCHEMA_FIELDS and (not loc or loc[-1] != message.split(" ", 1)[0]):
            # Whole-model checks ("policy has no entry for ...", "stages ['rollbak'] cannot be
            # gated") start with the field they are about: point at that field, not its parent.
            loc = (*loc, message.split(" ", 1)[0])
        lines.append(f"{path}: {_field_path(loc)}: {message}")
    return lines


def _parse_yaml(path: Path, data: bytes) -> Any:
    return load_yaml(path, data, RunbookError)


def _template_problem(template: str) -> str | None:
    # Caught here rather than at routing time: a typo in a dedup key would otherwise only
    # surface when the first alert arrives, in the middle of an incident.
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        return f"template {template!r} is malformed: {exc}"
    for field in fields:
        root = field.split(".", 1)[0].split("[", 1)[0]
        if root not in TEMPLATE_FIELDS:
            return f"template {template!r} refers to {{{field}}}; use {sorted(TEMPLATE_FIELDS)}"
        if field != root and not (root == "labels" and field.startswith("labels[") and field.endswith("]")):
            return f"template {template!r}: only {{labels[name]}} may index into a field, not {{{field}}}"
    return None


def _template_lines(path: Path, runbook: Runbook) -> list[str]:
    templates = {"dedup_key": runbook.dedup_key, "target.model": runbook.target.model}
    problems = {field: _template_problem(template) for field, template in templates.items()}
    return [f"{path}: {field}: {problem}" for field, problem in problems.items() if problem]


def load_runbook(path: Path) -> LoadedRunbook:
    """Parse and validate one runbook file; raises RunbookError naming the file and field."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RunbookError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    document = _parse_yaml(path, data)
    if not isinstance(document, dict):
        kind = "empty" if document is None else type(document).__name__
        raise RunbookError([f"{path}: (runbook): expected a mapping at the top level, got {kind}"])
    try:
        runbook = Runbook.model_validate(document)
    except ValidationError as exc:
        raise RunbookError(_validation_lines(path, exc)) from exc
    template_lines = _template_lines(path, runbook)
    if template_lines:
        raise RunbookError(template_lines)
    return LoadedRunbook(runbook=runbook, sha256=hashlib.sha256(data).hexdigest(), path=str(path))


def runbook_files(directory: Path) -> list[Path]:
    directory = Path(directory)
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in RUNBOOK_SUFFIXES)


class RunbookCatalog:
    """Every runbook of a folder by name, with the catch-all `triage` runbook as fallback."""

    def __init__(self, runbooks: list[LoadedRunbook]) -> None:
        self._by_name: dict[str, LoadedRunbook] = {}
        for loaded in runbooks:
            name = loaded.runbook.name
            if name in self._by_name:
                first = self._by_name[name].path
                raise RunbookError([f"{loaded.path}: name: runbook name {name!r} is already used by {first}"])
            self._by_name[name] = loaded
        if FALLBACK_RUNBOOK not in self._by_name:
            raise RunbookError([f"catalog: name: no runbook named {FALLBACK_RUNBOOK!r}; it catches unmatched signals"])

    def get(self, name: str) -> LoadedRunbook | None:
        return self._by_name.get(name)

    def all(self) -> list[LoadedRunbook]:
        return [self._by_name[name] for name in sorted(self._by_name)]

    @property
    def fallback(self) -> LoadedRunbook:
        return self._by_name[FALLBACK_RUNBOOK]

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


def load_catalog(directory: Path) -> RunbookCatalog:
    """Load every `*.yaml`/`*.yml` runbook in a folder; all problems are reported together."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RunbookError([f"{directory}: not a folder of runbooks"])
    loaded: list[LoadedRunbook] = []
    problems: list[str] = []
    for path in runbook_files(directory):
        try:
            loaded.append(load_runbook(path))
        except RunbookError as exc:
            problems.extend(exc.lines)
    if problems:
        raise RunbookError(problems)
    return RunbookCatalog(loaded)
