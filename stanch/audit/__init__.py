"""Audit tools: an incident's Temporal history is its audit record; these read it back.

    history.py   load a history from a `temporal workflow show --output json` file or from
                 Temporal; trust the installation's decision keys; decode payloads
    replay.py    replay histories with today's workflow code and name where one diverges
    models.py    the timeline's pydantic models
    timeline.py  build a timeline from a history alone, event by event: signals, decisions,
                 actions, timers, notifications
    derived.py   what it concludes: decisions in words, stage durations, key warnings
    render.py    the timeline as Markdown or a self-contained HTML page
    bundle.py    export histories, timelines and evidence into a bundle whose manifest is a
                 sha256 hash chain; verify it
    signing.py   Ed25519 keys for signing a bundle's manifest head
    stored.py    audit bundles in the artefact store: export --to-store packs and stores one;
                 fetch brings it back on any host and unpacks it safely

The CLI on top of them is `stanch audit …` (stanch/cli/audit.py).
"""
