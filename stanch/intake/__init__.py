"""Signals in: authenticating senders, turning their payloads into signals, routing each to
its runbook and incident, and opening or joining that incident."""
