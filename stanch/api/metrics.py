"""`GET /metrics`: what the intake received and how it answered, in Prometheus text format.

The outcome of a delivery is read from the status it was answered with, in one ASGI
middleware, so authentication, body limits, validation, Temporal outages and unhandled
errors are all counted the same way without each of them knowing about metrics:

    202 accepted · 401 rejected_auth · 404 rejected_unknown_source · 413 rejected_too_large
    (the body, or a field over its limit) · other 4xx rejected_invalid · 503 temporal_unavailable ·
    anything else error (502 included: Temporal refused the API's own access)

Names say what is counted. A delivery (one HTTP request) may carry several signals, so
deliveries are `stanch_intake_requests_total`; signals Temporal accepted are
`stanch_signals_routed_total{runbook}`, read from the 202 answer's `incidents` list. A closing
notice (resolved, acknowledged) with no open incident to go to is answered 202 but recorded
nowhere: it is counted in `stanch_closing_notices_dropped_total{source}` instead. The
intake cannot tell cheaply whether a signal opened an incident or joined one, so there is no
"incidents opened" counter here: Temporal's visibility (IncidentOpenedAt) knows that.

Open incidents and the approvals they wait for are read from Temporal when scraped: see
`stanch.api.incident_metrics`.

Each app has its own CollectorRegistry: tests build many apps in one process, and the API's
numbers should not mix with anything else imported into it.
"""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stanch.api.auth import intake_source
from stanch.api.deps import TemporalConnection
from stanch.api.incident_metrics import IncidentGauges, untraced
from stanch.intake.auth import INTAKE_SOURCES

OUTCOMES = (
    "accepted",
    "rejected_auth",
    "rejected_invalid",
    "rejected_too_large",
    "rejected_unknown_source",
    "temporal_unavailable",
    "error",
)
# Up to 30 s: connecting to an unreachable Temporal takes the 10 s connect timeout.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A 202 answer lists one entry per signal; far larger bodies are not intake answers.
MAX_ANSWER_BYTES = 1 << 20


def outcome_for(status: int) -> str:
    if 200 <= status < 300:
        return "accepted"
    return {401: "rejected_auth", 404: "rejected_unknown_source", 413: "rejected_too_large", 503: "temporal_unavailable"}.get(
        status, "rejected_invalid" if 400 <= status < 500 else "error"
    )


class IntakeMetrics:
    def __init__(self, sources: tuple[str, ...] = INTAKE_SOURCES) -> None:
        self.sources = frozenset(sources)
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "stanch_intake_requests",
            "Intake deliveries (HTTP requests) by source and how they were answered.",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.signals_routed = Counter(
            "stanch_signals_routed",
            "Signals Temporal recorded (each opened or joined an incident), by source and runbook.",
            ["source", "runbook"],
            registry=self.registry,
        )
        self.incidents_opened = Counter(
            "stanch_incidents_opened",
            "Incidents a signal opened (the rest joined an open incident), by runbook.",
            ["runbook"],
            registry=self.registry,
        )
        self.closing_notices_dropped = Counter(
            "stanch_closing_notices_dropped",
            "Closing notices (resolved, acknowledged) that matched no open incident: answered 202, recorded nowhere.",
            ["source"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "stanch_intake_latency_seconds",
            "Time from receiving an intake request to finishing its answer, by source.",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Every known series exists from the start at 0, so rate() and alerts on them work
        # before the first delivery of each kind.
        for source in sorted(self.sources):
            self.latency.labels(source=source)
            self.closing_notices_dropped.labels(source=source)
            for outcome in OUTCOMES:
                self.requests.labels(source=source, outcome=outcome)

    def source_label(self, path: str) -> str | None:
        """The `source` label for a path: None outside the intake, "unknown" for a source we
        do not serve (never the path itself: anyone could mint new series)."""
        source = intake_source(path)
        if source is None:
            return None
        return source if source in self.sources else "unknown"

    def record(self, source: str, status: int, seconds: float, answer: bytes = b"") -> None:
        self.requests.labels(source=source, outcome=outcome_for(status)).inc()
        self.latency.labels(source=source).observe(seconds)
        if 200 <= status < 300 and answer:
            for runbook, opened, dropped in _routed_runbooks(answer):
                if dropped:
                    self.closing_notices_dropped.labels(source=source).inc()
                    continue
                self.signals_routed.labels(source=source, runbook=runbook).inc()
                if opened:
                    self.incidents_opened.labels(runbook=runbook).inc()

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def _routed_runbooks(answer: bytes) -> list[tuple[str, bool, bool]]:
    """(runbook, opened, dropped) for each signal of a 202 answer."""
    try:
        incidents = json.loads(answer).get("incidents", [])
        return [
            (str(item["runbook"]), bool(item.get("opened")), bool(item.get("dropped")))
            for item in incidents
            if isinstance(item, dict) and item.get("runbook")
        ]
    except (ValueError, AttributeError, TypeError):
        return []


class IntakeMetricsMiddleware:
    """Times every intake request and counts it by the status it was answered with."""

    def __init__(self, app: ASGIApp, metrics: IntakeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        source = self.metrics.source_label(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if source is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts, the request failed
        answer: list[bytes] = []
        size = 0

        async def observing_send(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and 200 <= status < 300:
                size += len(message.get("body", b""))
                if size <= MAX_ANSWER_BYTES:
                    answer.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            self.metrics.record(source, status, time.perf_counter() - started, b"".join(answer) if size <= MAX_ANSWER_BYTES else b"")


router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format (OpenMetrics on request)"}},
)
async def metrics(request: Request) -> Response:
    """Intake deliveries by source and outcome, signals routed by runbook, closing notices
    dropped, intake latency; open incidents, waiting approvals and acknowledgements past their
    SLA, read from Temporal
    (`stanch_visibility_up` 0 when it could not be: the intake's numbers are served anyway)."""
    intake_metrics: IntakeMetrics = request.app.state.metrics
    await incident_gauges(request).refresh()
    body, content_type = intake_metrics.exposition(request.headers.get("accept"))
    return Response(body, media_type=content_type)


def incident_gauges(request: Request) -> IncidentGauges:
    """The app's incident gauges, made at the first scrape and registered beside the intake's
    counters (an app never scraped never reads Temporal's visibility). They share the API's
    connection through a client without tracing: a scrape is not worth a trace."""
    gauges: IncidentGauges | None = getattr(request.app.state, "incident_gauges", None)
    if gauges is None:
        connection: TemporalConnection = request.app.state.temporal
        gauges = request.app.state.incident_gauges = IncidentGauges(untraced(connection.client))
        request.app.state.metrics.registry.register(gauges)
    return gauges
