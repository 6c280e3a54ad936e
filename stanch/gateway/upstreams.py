"""The upstreams file: which OpenAI-compatible servers answer for each model the gateway serves.

A platform team writes it once per deployment (`stanch gateway --upstreams upstreams.yaml`):

    models:
      support-bot:                 # the name users send as `model`
        release: "1"               # the stable version
        fallback: {version: "1"}   # or {model: other-model}: another upstream or provider
        features: [web-search]     # kill switches beyond the built-in ones
        versions:
          "1": {base_url: "http://vllm:8000/v1", model: support-bot-v1}
          "2": {base_url: "http://vllm:8000/v1", model: support-bot-v2, weight: 10}  # a canary: 10 % of traffic
        # api keys by reference only: "$ENV_NAME" or "file:/run/secrets/key"
      gpt:
        release: "4o"
        versions:
          "4o": {base_url: "https://api.openai.com/v1", model: gpt-4o, api_key: "$OPENAI_API_KEY"}

The file says what was deployed. What incidents did since (pins, disabled versions, fine-tuned
versions, a deploy) lives in the gateway's database; the file's deploy is taken over again only
when the file itself changes, so a restart never lifts a protection or undoes a hotfix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator


def _int_to_str(value: Any) -> Any:
    # YAML turns `release: 1` into an int; versions are names.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


VersionName = Annotated[str, BeforeValidator(_int_to_str), Field(min_length=1)]

# Features every model has: what a request uses, as the gateway reads it off the request.
BUILTIN_FEATURES = ("tools", "images", "streaming", "chat", "completions", "embeddings")


class UpstreamsError(ValueError):
    """The upstreams file cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def key_reference(value: str | None) -> str | None:
    """An API key field holds a reference to the secret, never the secret itself."""
    if value is not None and not value.startswith(("$", "file:")):
        raise ValueError('an api_key must name the secret, not hold it: "$ENV_NAME" or "file:/path/to/key"')
    return value


KeyReference = Annotated[str | None, AfterValidator(key_reference)]


class Upstream(_Strict):
    """One version of a model: where it is served and under which name."""

    base_url: str = Field(min_length=1, description="the OpenAI API root, e.g. http://127.0.0.1:8000/v1")
    model: str = Field(min_length=1, description="the model name the upstream knows")
    api_key: KeyReference = Field(None, description='a reference, never the key: "$ENV_NAME" or "file:/path"')
    weight: int = Field(0, ge=0, le=100, description="a canary's share of traffic in percent; the release gets the rest")
    timeout_seconds: float = Field(60.0, gt=0)


class Fallback(_Strict):
    version: VersionName | None = None
    model: str | None = Field(None, description="another model of this file (another upstream or provider)")

    @model_validator(mode="after")
    def _one_of(self) -> Fallback:
        if (self.version is None) == (self.model is None):
            raise ValueError("a fallback names exactly one of `version` (of this model) or `model` (another model)")
        return self


class Trainer(_Strict):
    base_url: str = Field(min_length=1)
    api_key: KeyReference = None


class ModelEntry(_Strict):
    release: VersionName
    versions: dict[VersionName, Upstream] = Field(min_length=1)
    fallback: Fallback | None = None
    features: list[str] = Field(default_factory=list)
    trainer: Trainer | None = Field(None, description="where fine-tunes of this model are trained (OpenAI fine-tuning API)")

    @model_validator(mode="after")
    def _consistent(self) -> ModelEntry:
        if self.release not in self.versions:
            raise ValueError(f"release {self.release!r} is not one of the versions {sorted(self.versions)}")
        if self.fallback and self.fallback.version and self.fallback.version not in self.versions:
            raise ValueError(f"fallback version {self.fallback.version!r} is not one of the versions {sorted(self.versions)}")
        canaries = sum(u.weight for name, u in self.versions.items() if name != self.release)
        if canaries > 100:
            raise ValueError(f"the canary weights add up to {canaries} %; at most 100 % of traffic can go to canaries")
        return self


class UpstreamsFile(_Strict):
    models: dict[str, ModelEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _fallback_models_exist(self) -> UpstreamsFile:
        for name, entry in self.models.items():
            if entry.fallback and entry.fallback.model:
                if entry.fallback.model not in self.models:
                    raise ValueError(f"models.{name}.fallback.model {entry.fallback.model!r} is not a model of this file")
                if entry.fallback.model == name:
                    raise ValueError(f"models.{name}.fallback.model names the model itself")
        return self


def load_upstreams(path: Path) -> UpstreamsFile:
    """The parsed file; UpstreamsError naming the file and every field that is wrong."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UpstreamsError(f"{path}: cannot read the upstreams file: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise UpstreamsError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return UpstreamsFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors(include_url=False))
        raise UpstreamsError(f"{path}: {problems}") from exc


def secret_value(reference: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The key a reference names, read when a request needs it (never stored, never logged)."""
    if not reference:
        return None
    if reference.startswith("$"):
        value = (os.environ if env is None else env).get(reference[1:])
        if not value:
            raise UpstreamsError(f"the API key reference {reference} names an environment variable that is not set")
        return value
    if reference.startswith("file:"):
        try:
            return Path(reference[5:]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UpstreamsError(f"the API key reference {reference} cannot be read: {exc.strerror or exc}") from exc
    raise UpstreamsError('an API key reference must be "$ENV_NAME" or "file:/path" (the value given is neither, and is not shown)')
