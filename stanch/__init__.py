"""Stanch: incident response for AI models, on Temporal.

The library, in layers; a sub-package imports its own layer and those below, never above
(`tests/unit/test_layers.py` holds the same map and enforces it). Low to high:

    config                     settings from the environment, secrets, config-file errors
    telemetry                  traces and JSON logs (OpenTelemetry), for every process
    models runbooks detectors  what flows through an incident: signals, actions, decisions,
                               incident state; the runbook schema and its loader (models and
                               schema refer to each other); the output detectors
    trust targets notify       who vouches for a decision; control plane adapters; notification
    review stores temporal     channels; review documents; the regression suite; the Temporal
    probe                      client, codec, search attributes and activity dependencies;
                               probing a model through any OpenAI-compatible endpoint
    intake audit gate          a signal opening or joining an incident; reading histories back;
                               the regression gate (the suite replayed against a candidate)
    api board                  the HTTP API and the incident board it serves
    cli                        the `stanch` command (and `python -m stanch`)

Above the library, outside it, each importing only what is below it:

    activities/   activity functions only
    workflows/    deterministic orchestration of those activities
    workers/      the worker process, where both run

Inside stanch only `stanch.cli` imports them (it runs the worker). `stanch.gateway` is a
separate service, the enforcement proxy in front of the models: it imports nothing from the
rest of stanch but the detectors and telemetry (it blocks by the same ones confirm and verify run), Stanch
reaches it over HTTP, and only `stanch.cli` imports it, to start it. `stanch.demo_upstream`,
the demo models' OpenAI-compatible server, is another such service and imports nothing.
"""
