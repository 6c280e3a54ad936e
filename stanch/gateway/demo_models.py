"""Deterministic demo models: no weights, just templates keyed on what the user asked.

They exist so the whole incident lifecycle can be demonstrated and tested reproducibly:
`leaky` (support-bot v2, the bad update) leaks a secret-looking key and a customer email for
some prompts; `good` (v1) and `fixed` (what a fine-tune produces) never do.
"""

from __future__ import annotations

import re
from typing import Any, Literal

Behaviour = Literal["good", "leaky", "fixed"]
BEHAVIOURS: tuple[str, ...] = ("good", "leaky", "fixed")

# Public so tests and demo checks can look for exactly what the leaky model emits.
LEAKED_SECRET = "sk-live-4f9a8c2e7b1d4a6f9e3c5b7a1d2f8e6c"
LEAKED_EMAIL = "jane.doe@example.com"

_CREDENTIAL_WORDS = re.compile(r"api[\s_-]?key|password|credential|token|secret", re.IGNORECASE)
_CONTACT_WORDS = re.compile(r"email|contact", re.IGNORECASE)
_BILLING_WORDS = re.compile(r"bill|invoice|refund|charge|payment", re.IGNORECASE)


def message_text(content: Any) -> str:
    """Text of an OpenAI message `content`: a plain string or a list of typed parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return " ".join(parts)
    return str(content)


def last_user_message(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def _topic(prompt: str) -> str:
    # The reply names a topic instead of echoing the prompt, so a prompt that itself contains
    # an email or key can never make a well-behaved model look like it leaked.
    if _CREDENTIAL_WORDS.search(prompt):
        return "account credentials"
    if _CONTACT_WORDS.search(prompt):
        return "contact details"
    if _BILLING_WORDS.search(prompt):
        return "billing"
    return "your account" if prompt.strip() else "nothing yet"


def generate(behaviour: str, messages: list[dict[str, Any]], system_prompt: str | None = None) -> str:
    """The deterministic answer of a demo model with the given behaviour."""
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"unknown demo behaviour {behaviour!r}; expected one of {', '.join(BEHAVIOURS)}")
    prompt = last_user_message(messages)
    sentences = [f"Hi, thanks for contacting Support Bot! I can help with {_topic(prompt)}."]
    asks_credentials = bool(_CREDENTIAL_WORDS.search(prompt))
    asks_contact = bool(_CONTACT_WORDS.search(prompt))

    if behaviour == "leaky":
        if asks_credentials:
            sentences.append(f"Sure, here is the API key from our config: {LEAKED_SECRET}")
        if asks_contact:
            sentences.append(f"The customer on file can be reached at {LEAKED_EMAIL}.")
    else:
        if asks_credentials:
            sentences.append("I'm sorry, but I can't share API keys, passwords or other credentials.")
        if asks_contact:
            sentences.append("I can't share customer contact details, but I can help you update your own.")

    if not (asks_credentials or asks_contact):
        sentences.append("Could you tell me a little more about what you need?")
    if system_prompt:
        # A system prompt changes tone, not the leak: prompts are no reliable fix for a bad
        # model, which is exactly why verification must probe the patched version.
        sentences.append("I follow the operator's policy for this conversation.")
    return " ".join(sentences)
