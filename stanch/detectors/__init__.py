"""Deterministic output detectors: does a model's answer leak a secret or personal data, show
that a prompt injection worked, or fall apart; and the masking applied before a signal enters
a history."""
