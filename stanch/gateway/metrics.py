"""`GET /metrics` on the gateway: what each model and version was asked, what was refused and
why, what the detectors found, and how its upstream answered — in Prometheus text format.

These are the series a monitoring rule turns into an alert for Stanch (a version's refusal or
error rate above a threshold, or its harmful-output rate: deploy/prometheus/rules/). Probes (`x-stanch-probe`) and verification requests
(`x-stanch-version`) are Stanch's own traffic and are not counted as users'.

Each app has its own CollectorRegistry: tests build many apps in one process.
"""

from __future__ import annotations

from fastapi import Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder

from stanch.detectors.registry import Detectors

# Model answers take seconds; a streamed one is timed to its last byte.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# Every answer served to a user is checked with these, block or no block: a leak is counted the
# first time it reaches a user, before any incident exists, which is what lets a Prometheus rule
# open the incident. Regex only: cheap enough for every answer.
WATCHED_DETECTORS = ("secret", "pii")


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "stanch_gateway_requests",
            "Requests users sent, by model, the version that answered (empty if none did), route and outcome "
            "(answered, refused, upstream_error)",
            ["model", "version", "route", "outcome"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "stanch_gateway_refusals",
            "Requests a protection refused, by model and refusal code (content_blocked, feature_disabled, ...)",
            ["model", "code"],
            registry=self.registry,
        )
        self.detector_hits = Counter(
            "stanch_gateway_detector_hits",
            "Prompts and answers a blocking detector found harmful, by model, version, detector and direction",
            ["model", "version", "detector", "direction"],
            registry=self.registry,
        )
        self.harmful_outputs = Counter(
            "stanch_gateway_harmful_outputs",
            "Answers served to users in which a watched detector (secret, pii) found something, by model, version and "
            "detector; counted whether or not a block is in place (a blocked answer is not served: see detector_hits)",
            ["model", "version", "detector"],
            registry=self.registry,
        )
        self._watchers = Detectors()
        self.upstream_errors = Counter(
            "stanch_gateway_upstream_errors",
            "Upstream answers of HTTP 5xx, timeouts and unreachable upstreams, by model and version",
            ["model", "version"],
            registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "stanch_gateway_upstream_seconds",
            "Time the upstream took to answer, by model and version",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def watch_answer(self, model: str, version: str, served_text: str, prompt: str) -> None:
        """Count each watched detector that finds something in an answer a user was served.
        What the user typed is not a leak when the model repeats it (the detectors skip it)."""
        scan = self._watchers.scan_regex(WATCHED_DETECTORS, served_text, prompt)
        for detector in sorted({hit.detector for hit in scan.hits}):
            self.harmful_outputs.labels(model, version, detector).inc()

    def exposition(self, accept: str | None) -> Response:
        encoder, content_type = choose_encoder(accept or "")
        return Response(encoder(self.registry), media_type=content_type)
