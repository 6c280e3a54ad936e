"""Which adapter serves a runbook's target: the one place that knows every control plane.

A runbook names targets (`target.adapter`, and a step's own `target:`); the targets file
(`$STANCH_HOME/targets.yaml` or `STANCH_TARGETS`, see `stanch.targets.config`) maps each name to
an adapter kind and its connection. The name `gateway` is always there — the reference gateway
at `settings.gateway_url` — unless the file defines it itself; so is `trainer` (the OpenAI
fine-tuning API at `settings.trainer_url`) when that is set.

Adapter modules are imported only when a targets file names their kind, so an installation
that never configures MLflow never imports the MLflow adapter.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

from stanch.config.settings import Settings
from stanch.models.actions import TargetRef
from stanch.targets.base import Target, TargetError
from stanch.targets.gateway import GatewayTarget

# kind (the key under a target's name in targets.yaml) -> "module:class"
ADAPTER_KINDS: dict[str, str] = {
    "gateway": "stanch.targets.gateway:GatewayTarget",
    "http": "stanch.targets.http:HttpTarget",
    "mlflow": "stanch.targets.mlflow:MlflowTarget",
    "flagd": "stanch.targets.flagd:FlagdTarget",
    "openai": "stanch.targets.openai:OpenAITarget",  # a model's own OpenAI-compatible serving URL: probes only
    "trainer": "stanch.targets.trainer:OpenAITrainer",  # the OpenAI fine-tuning API
}

DEFAULT_TARGET = "gateway"
DEFAULT_TRAINER = "trainer"  # where a deploy_finetune step trains unless it names another (`params.trainer`)


def adapter_class(kind: str) -> type[Any]:
    """The adapter class for a kind; ImportError or KeyError say why it cannot be had.

    Imported by name, so typed loosely: every adapter has a `Config` model and `from_config`,
    which mypy cannot check on a nested class through a Protocol."""
    module_name, _, class_name = ADAPTER_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


class TargetRegistry:
    """Every configured target by name; `get` picks the one a TargetRef names."""

    def __init__(self, settings: Settings, extra: dict[str, Target] | None = None, *, env: Mapping[str, str] | None = None) -> None:
        from stanch.targets.config import (
            load_targets,  # config imports adapter_class from here
        )

        configured = load_targets(settings.targets_path, env=os.environ if env is None else env, required=settings.targets is not None)
        defaults: dict[str, Target] = {DEFAULT_TARGET: default_gateway(settings)}
        if settings.trainer_url:
            defaults[DEFAULT_TRAINER] = default_trainer(settings)
        self._targets: dict[str, Target] = {**defaults, **configured, **(extra or {})}

    def get(self, ref: TargetRef) -> Target:
        try:
            return self._targets[ref.adapter]
        except KeyError:
            raise TargetError(
                f"no target named {ref.adapter!r} is configured (for {ref}); configured: {sorted(self._targets)}",
                retryable=False,
            ) from None

    def names(self) -> list[str]:
        return sorted(self._targets)

    def kind_of(self, name: str) -> str:
        target = self._targets[name]
        return getattr(target, "kind", type(target).__name__)

    def __contains__(self, name: object) -> bool:
        return name in self._targets


def default_gateway(settings: Settings) -> GatewayTarget:
    """The reference gateway at `settings.gateway_url`, with its admin token when one is set."""
    token = settings.gateway_admin_token.get_secret_value() if settings.gateway_admin_token else None
    return GatewayTarget(settings.gateway_url, admin_token=token)


def default_trainer(settings: Settings) -> Target:
    """The OpenAI fine-tuning API at `settings.trainer_url`, with its API key when one is set."""
    from stanch.targets.trainer import OpenAITrainer  # imported only where a trainer is configured

    key = settings.trainer_api_key.get_secret_value() if settings.trainer_api_key else None
    return OpenAITrainer(OpenAITrainer.Config(base_url=settings.trainer_url or ""), name=DEFAULT_TRAINER, api_key=key)
