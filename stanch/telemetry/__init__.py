"""Stanch observed like any production service: OpenTelemetry traces and JSON logs.

    tracing   turned on by OTEL_EXPORTER_OTLP_ENDPOINT: the tracer provider, the incident id on
              every span, Temporal's tracing interceptor, the signal-with-start header
    scrub     what leaves the process: exception types on spans, never their messages
    web       one SERVER span per HTTP request (the API and the gateway); a public door starts
              its own trace, linked to the caller's, and never reads the caller's baggage
    outgoing  one CLIENT span per httpx request; only Stanch's own services get `traceparent`
    logs      STANCH_LOG_FORMAT=json: one JSON object per line, incident id and stage included

It sits just above `stanch.config` and imports nothing else of Stanch, so every part (the
gateway included) may use it. Off, it costs a no-op tracer and nothing else.
"""
