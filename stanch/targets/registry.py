"""Which adapter serves a runbook's target: the one place that knows every control plane."""

from __future__ import annotations

from stanch.config import Settings
from stanch.models import TargetRef
from stanch.targets.base import Target, TargetError
from stanch.targets.gateway import GatewayTarget


class TargetRegistry:
    def __init__(self, settings: Settings, extra: dict[str, Target] | None = None) -> None:
        self._targets: dict[str, Target] = {"gateway": GatewayTarget(settings.gateway_url), **(extra or {})}

    def get(self, ref: TargetRef) -> Target:
        try:
            return self._targets[ref.adapter]
        except KeyError:
            raise TargetError(
                f"no adapter {ref.adapter!r} is configured for target {ref}; configured: {sorted(self._targets)}",
                retryable=False,
            ) from None
