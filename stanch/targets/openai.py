"""A model's own OpenAI-compatible serving URL as a Stanch target: probes only.

vLLM, Ollama, llama.cpp's server, LiteLLM, TGI, KServe's OpenAI route, OpenAI and Azure OpenAI
all answer `POST {base_url}/chat/completions`. Confirm and verify probe the model there when no
gateway stands in front of it. Nothing is changed through this target: containment and rollback
act through the gateway or a registry (a runbook names those on its steps).

```yaml
targets:
  vllm:
    openai: {base_url: "http://vllm:8000/v1", api_key_env: VLLM_API_KEY, versions: {"1": llama-3-8b-v1, "2": llama-3-8b-v2}}
  azure:
    openai:
      base_url: "https://example.openai.azure.com/openai/deployments/support-bot"
      header_env: {api-key: AZURE_OPENAI_KEY}
```
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field

from stanch.models.actions import ActionSpec, AppliedAction
from stanch.probe.endpoint import ChatEndpoint
from stanch.targets.base import ApplyResult, JobStatus, PlannedCall, TargetError

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
MODEL_PLACEHOLDER = "{model}"
VERSION_PLACEHOLDER = "{version}"
RELEASE = "release"  # the version a fix deploys (Target.chat_endpoint); verify asks for it when the alert named none


class OpenAITarget:
    """Probes a model at its own OpenAI-compatible endpoint; refuses every change."""

    kind: ClassVar[str] = "openai"
    label: ClassVar[str] = "OpenAI-compatible endpoint"

    class Config(BaseModel):
        """The keys under `openai:` in targets.yaml."""

        model_config = ConfigDict(extra="forbid")

        base_url: str = Field(min_length=1, description="where /chat/completions answers, e.g. http://vllm:8000/v1")
        api_key_env: str | None = Field(None, pattern=ENV_NAME, description="sent as `Authorization: Bearer <key>`")
        model: str = Field(
            MODEL_PLACEHOLDER, min_length=1, description="the model name in the request body; {model} and {version} are filled in"
        )
        versions: dict[str, str] = Field(
            default_factory=dict,
            description="version -> the upstream model name serving it; empty: the URL serves one version, whatever is asked",
        )
        headers: dict[str, str] = Field(default_factory=dict, description="extra headers, no secrets (an api-version, a tenant)")
        header_env: dict[str, str] = Field(
            default_factory=dict, description="header -> the environment variable holding its value (Azure's `api-key`)"
        )
        timeout_seconds: float = Field(60.0, gt=0, description="how long a probe waits for an answer")

    def __init__(self, config: Config, *, name: str = "openai", env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.name = name
        self._env: Mapping[str, str] = env or {}

    @classmethod
    def from_config(cls, config: Config, *, name: str, base: Path, env: Mapping[str, str]) -> Self:
        missing = [variable for variable in _secret_variables(config) if not env.get(variable)]
        if missing:
            raise ValueError(f"the environment variable {', '.join(missing)} is not set")
        return cls(config, name=name, env=env)

    # --- where probes go -----------------------------------------------------------------

    def upstream_model(self, model: str, version: str | None) -> str:
        """The model name this endpoint serves the version under.

        "release" (what verify asks for when the alert named no version) is the version users
        get: the one `versions:` maps under that name, else the default `model`."""
        versions = self.config.versions
        if version == RELEASE and RELEASE not in versions:
            return self._release_model(model)
        if version is not None and versions:
            if version not in versions:
                raise TargetError(
                    f"target {self.name} ({self.label}) maps no version {version!r} of {model}: "
                    f"it maps {sorted(versions)} (targets.yaml versions:)",
                    retryable=False,
                )
            return versions[version]
        return self.config.model.replace(MODEL_PLACEHOLDER, model).replace(VERSION_PLACEHOLDER, version or "")

    def _release_model(self, model: str) -> str:
        served = self.config.model.replace(MODEL_PLACEHOLDER, model)
        if VERSION_PLACEHOLDER in served:
            # The name needs a version, and nothing says which one users get.
            raise TargetError(
                f"target {self.name} ({self.label}) cannot tell which version of {model} is the release: its model "
                f'{self.config.model!r} needs a {VERSION_PLACEHOLDER}; map one under versions: as "{RELEASE}" (targets.yaml)',
                retryable=False,
            )
        return served

    def chat_endpoint(self, model: str, version: str | None = None) -> ChatEndpoint:
        headers = dict(self.config.headers)
        if self.config.api_key_env:
            headers["Authorization"] = f"Bearer {self._secret(self.config.api_key_env, 'api_key_env')}"
        for header, variable in self.config.header_env.items():
            headers[header] = self._secret(variable, f"header_env.{header}")
        return ChatEndpoint(
            base_url=self.config.base_url,
            model=self.upstream_model(model, version),
            headers=headers,
            timeout_seconds=self.config.timeout_seconds,
            label=f"target {self.name}",
        )

    def _secret(self, variable: str, field: str) -> str:
        value = self._env.get(variable, "").strip()
        if not value:
            raise TargetError(f"target {self.name}: {field}: environment variable {variable} is not set or empty", retryable=False)
        return value

    # --- what it knows, and what it refuses ------------------------------------------------

    async def state(self, model: str) -> dict[str, Any]:
        """What this target knows without asking anyone: where it probes, and the names it maps."""
        served = self.config.model.replace(MODEL_PLACEHOLDER, model)
        return {
            "target": self.name,
            "adapter": self.kind,
            "base_url": self.config.base_url,
            "model": served if VERSION_PLACEHOLDER not in served else None,
            "versions": dict(self.config.versions),
        }

    def _refuse(self, what: str) -> TargetError:
        return TargetError(
            f"target {self.name} ({self.label}) only answers probes, it cannot {what}: act through the gateway or a registry "
            "(name that target on the runbook's steps)",
            retryable=False,
        )

    async def apply(self, model: str, action: ActionSpec, idempotency_key: str, incident_id: str, holder: str | None = None) -> ApplyResult:
        raise self._refuse(f"apply {action.kind}")

    async def undo(self, applied: AppliedAction, undo_key: str) -> ApplyResult:
        raise self._refuse(f"undo {applied.kind}")

    async def start_job(self, model: str, kind: str, params: dict[str, Any], idempotency_key: str) -> JobStatus:
        raise self._refuse(f"run a {kind} job")

    async def job_status(self, job_id: str) -> JobStatus:
        raise self._refuse("report on jobs")

    def plan(self, model: str, action: ActionSpec, idempotency_key: str) -> list[PlannedCall]:
        return []


def _secret_variables(config: OpenAITarget.Config) -> list[str]:
    return ([config.api_key_env] if config.api_key_env else []) + list(config.header_env.values())
