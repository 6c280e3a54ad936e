"""`/admin/exposure`: who a model served in a window, and (content sampling on) what, for
Stanch's blast-radius measure. Under /admin/, so the gateway's admin token guards it like every
admin route: samples hold what users typed and what they were answered."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Query

from stanch.gateway.samples import SampleStore


def _window(since: datetime, until: datetime | None) -> tuple[datetime, datetime]:
    since = since if since.tzinfo else since.replace(tzinfo=UTC)
    end = until or datetime.now(UTC)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    if end < since:
        raise HTTPException(422, f"the window ends ({end.isoformat()}) before it starts ({since.isoformat()}): check `since` and `until`")
    return since, end


def exposure_routes(samples: SampleStore) -> APIRouter:
    router = APIRouter(prefix="/admin/exposure", tags=["exposure"])

    def require_model(model: str) -> None:
        if samples.store.model_row(model) is None:
            raise HTTPException(404, f"unknown model {model!r}; known models: {', '.join(samples.store.model_names())}")

    @router.get("")
    def exposure(
        model: str = Query(description="the gateway's model name"),
        since: datetime = Query(description="start of the window (ISO 8601)"),
        until: datetime | None = Query(None, description="end of the window; now when left out"),
    ) -> dict[str, Any]:
        """Requests per version, the users and tenants each version served: counts and ids."""
        require_model(model)
        return samples.exposure(model, *_window(since, until))

    @router.get("/samples")
    def sampled(
        model: str = Query(description="the gateway's model name"),
        since: datetime = Query(description="start of the window (ISO 8601)"),
        until: datetime | None = Query(None, description="end of the window; now when left out"),
        after: int = Query(0, ge=0, description="the `next_after` of the page before"),
        limit: int = Query(200, ge=1, le=1000),
    ) -> dict[str, Any]:
        """Decrypted samples (prompt and the answer served) for re-scoring, a page at a time."""
        require_model(model)
        return samples.samples(model, *_window(since, until), after=after, limit=limit)

    return router
