"""`stanch demo-upstream`: a DEMO model server that speaks the OpenAI API.

Nothing here is a real model. Every answer comes from a deterministic template keyed on what
the user asked (see `models.py`, one table of demo models, each the scenario of one Stanch
runbook), and every model reports `owned_by: "stanch-demo"` in `/v1/models`. It exists so the
gateway, confirm, verify and the fine-tune step can be shown and tested against an upstream
that behaves like a served LLM: stochastic above temperature 0, streaming, tool calls, and an
OpenAI fine-tuning API whose result depends only on the submitted training file.

It is a separate service: it imports nothing from the rest of `stanch`.
"""

from __future__ import annotations

from stanch.demo_upstream.app import create_app, serve
from stanch.demo_upstream.upstreams_file import upstreams_document, write_upstreams_file

__all__ = ["create_app", "serve", "upstreams_document", "write_upstreams_file"]
