"""Fixtures several unit test modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stanch.telemetry import tracing


@pytest.fixture
def exported() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A tracer provider as Stanch builds it (scrubbing included), exporting to memory at once."""
    exporter = InMemorySpanExporter()
    provider = tracing.tracer_provider("stanch-test", exporter, batched=False)
    yield provider, exporter
    provider.shutdown()
