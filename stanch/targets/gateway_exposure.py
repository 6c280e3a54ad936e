"""Reading the reference gateway's sample store (`/admin/exposure`): who a model served in a
window, and the sampled answers, for the blast-radius measure on confirmation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from stanch.targets.base import Target
from stanch.targets.gateway import GatewayTarget

SAMPLES_PER_PAGE = 500


def keeps_samples(target: Target) -> bool:
    """Only the reference gateway keeps samples; other control planes serve no traffic through Stanch."""
    return isinstance(target, GatewayTarget)


async def served(target: GatewayTarget, model: str, since: datetime, until: datetime) -> dict[str, Any]:
    """Per version: requests, users and tenants served in the window; whether content is sampled."""
    params = {"model": model, "since": since.isoformat(), "until": until.isoformat()}
    return await target._request("GET", "/admin/exposure", params=params)  # the adapter's own errors and token


async def sampled(target: GatewayTarget, model: str, since: datetime, until: datetime) -> AsyncIterator[dict[str, Any]]:
    """Pages of decrypted samples (prompt, answer, user, tenant, version, request id), oldest first."""
    after = 0
    while True:
        params = {"model": model, "since": since.isoformat(), "until": until.isoformat(), "after": str(after)}
        page = await target._request("GET", "/admin/exposure/samples", params={**params, "limit": str(SAMPLES_PER_PAGE)})
        yield page
        if page.get("next_after") is None:
            return
        after = int(page["next_after"])
