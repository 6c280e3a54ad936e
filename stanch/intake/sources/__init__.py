"""What each sender sends, mapped into Stanch's one `Signal`: one module per sender.

Every mapper is a pure function from the sender's documented payload (pydantic models that
keep the sender's own field names as aliases and keep unknown fields) to `list[Signal]`.
Nothing here does I/O: the routes in `stanch.api` validate, map, then hand the signals to
intake, so the mapping tables can be tested against sample payloads alone.
"""
