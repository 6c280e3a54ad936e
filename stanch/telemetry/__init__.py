"""Stanch observed like any production service: OpenTelemetry traces and JSON logs.

    tracing   turned on by OTEL_EXPORTER_OTLP_ENDPOINT: the tracer provider, the incident id on
              every span, Temporal's tracing interceptor, the signal-with-start header
    web       one SERVER span per HTTP request (the API and the gateway)
    outgoing  one CLIENT span per httpx request, with `traceparent` sent along
    logs      STANCH_LOG_FORMAT=json: one JSON object per line, incident id and stage included

It sits just above `stanch.config` and imports nothing else of Stanch, so every part (the
gateway included) may use it. Off, it costs a no-op tracer and nothing else.
"""
