"""The targets file: which control plane each runbook target name stands for, and how to reach it.

```yaml
targets:
  registry:                 # the name runbooks use (`target: {adapter: registry}`, a step's `target: registry`)
    mlflow: {tracking_uri: "http://127.0.0.1:5000", alias: champion, token_env: MLFLOW_TOKEN}
  litellm:
    http: {base_url: "http://litellm:4000", headers: {Authorization: "Bearer ${LITELLM_MASTER_KEY}"}, secrets_file: secrets.env}
```

Each entry names exactly one adapter kind (`stanch.targets.registry.ADAPTER_KINDS`); what goes
under the kind is that adapter's `Config` model. Errors name the file and the field, never a
value. The file holds no secret: `${VAR}` names an environment variable (or a line of the
target's `secrets_file`) and `${file:path}` a file; `Secrets.expand` reads them only when a
request is sent, inside the activity, so a secret never reaches workflow history.

References in this file are the operator's and trusted. References in a runbook step's headers
are constrained (`Secrets.step_refusal`) to what the target lists for steps: variables under
`step_secret_env` (never `STANCH_*`/`TEMPORAL_*`, Stanch's and Temporal's own settings and keys),
files inside its `secrets_dir` or listed under `step_secret_files`. Nothing listed, nothing
allowed: this file's folder holds other targets' secrets and Stanch's own keys.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stanch.config.errors import ConfigFileError, load_yaml, validation_lines
from stanch.config.secrets import SecretUnavailable

TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# ${NAME} or ${file:relative/path}; anything else with a dollar is left as it is.
SECRET_REFERENCE = re.compile(r"\$\{(file:)?([^}]+)\}")
# Variables a runbook step may never name: Stanch's own settings and keys, Temporal's connection.
STEP_REFUSED_VARIABLES = ("STANCH_", "TEMPORAL_")


class TargetsError(ConfigFileError):
    """The targets file cannot be used: one line per problem, each naming the file and the field."""


class _TargetsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    targets: dict[str, dict[str, Any]] = Field(default_factory=dict, description="target name -> {adapter kind: its settings}")


class ConfiguredTarget(BaseModel):
    """One entry of the targets file, validated against its adapter's `Config`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    kind: str
    adapter: type[Any]  # imported by name (registry.adapter_class): has `Config` and `from_config`
    config: BaseModel


def _entry_lines(where: str, field: str, error: ValidationError) -> list[str]:
    # validation_lines says "WHERE: loc: message"; put our prefix into the dotted field instead.
    marker = "\x00"
    lines = []
    for line in validation_lines(marker, error):
        loc, _, message = line.removeprefix(f"{marker}: ").partition(": ")
        lines.append(f"{where}: {field}{'' if loc == '(file)' else '.' + loc}: {message}")
    return lines


def _read_document(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetsError([f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}"]) from exc
    return load_yaml(path, text, TargetsError)


def read_targets_file(path: Path) -> list[ConfiguredTarget]:
    """Parse and validate the targets file; raises TargetsError with every problem found."""
    from stanch.targets.registry import ADAPTER_KINDS, adapter_class

    document = _read_document(path)
    if document is None:
        return []
    try:
        parsed = _TargetsFile.model_validate(document)
    except ValidationError as exc:
        raise TargetsError(validation_lines(path, exc)) from exc
    configured: list[ConfiguredTarget] = []
    problems: list[str] = []
    known = ", ".join(sorted(ADAPTER_KINDS))
    for name, entry in parsed.targets.items():
        field = f"targets.{name}"
        if not TARGET_NAME.match(name):
            problems.append(f"{path}: {field}: a target name is letters, digits, '.', '_' and '-', starting with a letter or digit")
            continue
        if len(entry) != 1:
            problems.append(f"{path}: {field}: name exactly one adapter kind ({known}); found {sorted(entry) or 'none'}")
            continue
        kind, settings = next(iter(entry.items()))
        if kind not in ADAPTER_KINDS:
            problems.append(f"{path}: {field}.{kind}: unknown adapter kind; known: {known}")
            continue
        try:
            adapter = adapter_class(kind)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{path}: {field}.{kind}: the {kind} adapter cannot be loaded: {type(exc).__name__}: {exc}")
            continue
        try:
            config = adapter.Config.model_validate(settings if settings is not None else {})
        except ValidationError as exc:
            problems.extend(_entry_lines(str(path), f"{field}.{kind}", exc))
            continue
        configured.append(ConfiguredTarget(name=name, kind=kind, adapter=adapter, config=config))
    if problems:
        raise TargetsError(problems)
    return configured


def load_targets(path: Path, *, env: Mapping[str, str], required: bool = False) -> dict[str, Any]:
    """Every target the file configures, built and ready; an absent file configures none
    (unless `required`: a file named explicitly must exist)."""
    path = Path(path)
    if not path.exists():
        if required:
            raise TargetsError([f"{path}: no such targets file (STANCH_TARGETS names it)"])
        return {}
    targets: dict[str, Any] = {}
    problems: list[str] = []
    for entry in read_targets_file(path):
        try:
            targets[entry.name] = entry.adapter.from_config(entry.config, name=entry.name, base=path.parent, env=env)
        except (ValueError, OSError) as exc:
            problems.append(f"{path}: targets.{entry.name}.{entry.kind}: {exc}")
    if problems:
        raise TargetsError(problems)
    return targets


# --- secrets, read at call time --------------------------------------------------------


def read_secrets_file(path: Path) -> dict[str, str]:
    """`NAME=value` lines (dotenv style: `#` comments, optional `export `, optional quotes)."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


class Secrets:
    """Where one target's secret references resolve: `${NAME}` from the environment, else the
    target's secrets file; `${file:path}` is a whole file (relative to the targets file)."""

    def __init__(
        self,
        owner: str,
        *,
        base: Path,
        env: Mapping[str, str],
        secrets_file: Path | None = None,
        step_files_dir: Path | None = None,
        step_files: Sequence[Path] = (),
        step_env: Sequence[str] = (),
    ) -> None:
        self.owner = owner
        self.base = base
        self.env = env
        self.secrets_file = secrets_file
        # What a runbook step may name, and nothing else: files in the target's secrets_dir or
        # listed one by one, and the variables listed. Everything else stays the operator's.
        self.step_files_dir = None if step_files_dir is None else self._path(step_files_dir)
        self.step_files = {self._normal(self._path(path)) for path in step_files}
        self.step_env = frozenset(step_env)

    def _path(self, path: Path) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.base / path

    @staticmethod
    def _normal(path: Path) -> Path:
        return Path(os.path.normpath(path))

    def _step_file(self, name: str) -> Path:
        listed = self._normal(self._path(Path(name)))
        if listed in self.step_files:
            return listed
        return (self.step_files_dir or self.base) / name

    def step_refusal(self, is_file: bool, name: str) -> str | None:
        """Why a runbook step may not name this reference, or None. Targets-file references are
        the operator's and never asked; a step is runbook text, which more people edit."""
        if not is_file:
            prefix = next((p for p in STEP_REFUSED_VARIABLES if name.upper().startswith(p)), None)
            if prefix is not None:
                return f"a runbook step may not name {prefix}* variables (Stanch's and Temporal's own settings)"
            if name not in self.step_env:
                return f"a runbook step may name only the variables {self.owner} lists under step_secret_env; ${{{name}}} is not one"
            return None
        if self._normal(self._path(Path(name))) in self.step_files:
            return None
        if self.step_files_dir is None:
            return (
                f"a runbook step may name only files in {self.owner}'s secrets_dir or listed under step_secret_files; it has neither "
                f"for {name!r}"
            )
        path = PurePath(name)
        if name.startswith("~") or path.is_absolute() or ".." in path.parts or not path.parts:
            return (
                f"a runbook step names a file relative to {self.owner}'s secrets_dir {self.step_files_dir}, without '..' — or one "
                "listed under step_secret_files"
            )
        return None

    def _variable(self, name: str, where: str) -> str:
        value = self.env.get(name, "").strip()
        if value:
            return value
        if self.secrets_file is not None:
            path = self._path(self.secrets_file)
            try:
                value = read_secrets_file(path).get(name, "").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise SecretUnavailable(
                    f"{where} of {self.owner}: ${{{name}}}: cannot read secrets file {path}: {getattr(exc, 'strerror', None) or exc}"
                ) from None
            if value:
                return value
        also = f" or in {self._path(self.secrets_file)}" if self.secrets_file is not None else ""
        raise SecretUnavailable(f"{where} of {self.owner}: ${{{name}}} is not set in the environment{also}")

    def _file(self, name: str, where: str, step: bool = False) -> str:
        path = self._step_file(name) if step else self._path(Path(name))
        try:
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretUnavailable(
                f"{where} of {self.owner}: ${{file:{name}}}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        if not value:
            raise SecretUnavailable(f"{where} of {self.owner}: ${{file:{name}}}: {path} is empty")
        return value

    def expand(self, text: str, where: str, used: dict[str, str] | None = None, *, step: bool = False) -> str:
        """`text` with every reference replaced by its secret; `used` collects value -> reference,
        so whatever is recorded afterwards can be scrubbed of the values. `step`: the text is a
        runbook step's, and its references must pass `step_refusal`."""

        def replace(match: re.Match[str]) -> str:
            is_file, name = match.group(1), match.group(2).strip()
            refusal = self.step_refusal(bool(is_file), name) if step else None
            if refusal:
                raise SecretUnavailable(f"{where} of {self.owner}: {match.group(0)}: {refusal}")
            value = self._file(name, where, step) if is_file else self._variable(name, where)
            if used is not None:
                used[value] = match.group(0)
            return value

        return SECRET_REFERENCE.sub(replace, text)

    @staticmethod
    def references(text: str) -> list[str]:
        return [match.group(0) for match in SECRET_REFERENCE.finditer(text)]
