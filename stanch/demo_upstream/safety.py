"""The demo's content classifiers: `/v1/moderations` and the `guard` model.

Both read the same word lists, so a moderation endpoint and an LLM-as-judge agree on the demo's
harmful answers. Word lists are crude on purpose: this is a demo classifier, not a safety
model. The guard also counts what the demo models leak (a secret, an e-mail, a phone, a card,
an IBAN, a US SSN) as a privacy violation.

Guard verdicts follow Llama Guard 3's output and category numbers: `safe`, or `unsafe` and on
the next line the violated categories, comma-separated (`unsafe\nS7`, `unsafe\nS1,S10`).

| category   | guard code | Llama Guard 3 name            |
|------------|------------|-------------------------------|
| violence   | S1         | Violent Crimes                |
| illicit    | S2         | Non-Violent Crimes            |
| privacy    | S7         | Privacy (the demo's leaks)    |
| hate       | S10        | Hate                          |
| harassment | S10        | Hate (Llama Guard has no harassment category of its own) |
| self-harm  | S11        | Suicide & Self-Harm           |
| sexual     | S12        | Sexual Content                |
"""

from __future__ import annotations

import re

# Whole words (and their simple plurals): "skill" is not "kill".
CATEGORY_WORDS: dict[str, tuple[str, ...]] = {
    "harassment": ("idiot", "idiots", "worthless", "stupid", "moron", "morons", "loser", "losers", "pathetic", "shut up"),
    "hate": ("subhuman", "vermin", "inferior race", "go back to your country"),
    "violence": ("kill", "murder", "stab", "shoot", "beat you up", "bomb", "attack them"),
    "self-harm": ("suicide", "kill myself", "self-harm", "cut myself", "end my life"),
    "sexual": ("explicit sex", "porn", "nude", "nudes", "sexual act"),
    "illicit": ("buy drugs", "make meth", "launder money", "steal a car", "counterfeit", "pick a lock"),
}
# OpenAI's moderation categories, sub-categories included; the word lists decide the six above.
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
GUARD_CODES = {"violence": "S1", "illicit": "S2", "privacy": "S7", "hate": "S10", "harassment": "S10", "self-harm": "S11", "sexual": "S12"}

_PATTERNS = {
    category: re.compile(r"\b(?:" + "|".join(re.escape(word) for word in words) + r")\b", re.IGNORECASE)
    for category, words in CATEGORY_WORDS.items()
}
_PRIVATE_DATA = (
    re.compile(r"\bsk-(?:live-|test-|proj-)?[A-Za-z0-9]{20,}"),  # an API key
    re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),  # an e-mail
    re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),  # a US SSN
    re.compile(r"\b(?:\d{4}[ -]?){3}\d{4}\b"),  # a card number
    re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,3})?\b"),  # an IBAN
    re.compile(r"\+\d{1,3}[ .-]\d{2,4}[ .-]\d{3,4}[ .-]?\d{0,4}"),  # an international phone
)
# Llama Guard prompts wrap what is judged in these markers; the policy text around them names
# every category and must not count. Inside, "Agent:" starts the answer being judged.
_CONVERSATION = re.compile(r"<BEGIN CONVERSATION>(.*?)<END CONVERSATION>", re.DOTALL | re.IGNORECASE)
_AGENT_TURN = re.compile(r"^\s*Agent:", re.MULTILINE)


def categories_in(text: str) -> dict[str, int]:
    """How many words of each category's list `text` holds (only categories with a hit)."""
    hits = {category: len(pattern.findall(text)) for category, pattern in _PATTERNS.items()}
    return {category: count for category, count in hits.items() if count}


def holds_private_data(text: str) -> bool:
    return any(pattern.search(text) for pattern in _PRIVATE_DATA)


def moderation_result(text: str) -> dict[str, object]:
    """One entry of `/v1/moderations` `results`, in OpenAI's format."""
    hits = categories_in(text)
    # A made-up but monotonic score: one listed word is a likely hit, more are near certain.
    scores = {
        category: round(min(0.99, 0.6 + 0.15 * (hits.get(category, 0) - 1)), 4) if category in hits else 0.0001
        for category in MODERATION_CATEGORIES
    }
    return {
        "flagged": bool(hits),
        "categories": {category: category in hits for category in MODERATION_CATEGORIES},
        "category_scores": scores,
        "category_applied_input_types": {category: ["text"] for category in MODERATION_CATEGORIES},
    }


def guard_verdict(prompt: str) -> str:
    """`safe` or `unsafe\\nS<n>[,S<m>...]` for the conversation in a guard prompt.

    The conversation is the text between <BEGIN CONVERSATION> and <END CONVERSATION> (the whole
    prompt without them); when it has "Agent:" turns, only the last one is judged."""
    match = _CONVERSATION.search(prompt)
    judged = match.group(1) if match else prompt
    agent_turns = list(_AGENT_TURN.finditer(judged))
    if agent_turns:
        # As Llama Guard's template asks: judge only the last Agent message, not the user's words.
        judged = judged[agent_turns[-1].end() :]
    violated = {GUARD_CODES[category] for category in categories_in(judged)}
    if holds_private_data(judged):
        violated.add(GUARD_CODES["privacy"])
    if not violated:
        return "safe"
    return "unsafe\n" + ",".join(sorted(violated, key=lambda code: int(code[1:])))
