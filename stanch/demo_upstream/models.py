"""The demo models: one table, each model the scenario of one Stanch runbook.

These are NOT language models. Each answers from a template keyed on the words of the
question, deterministically at temperature 0. Above temperature 0 the misbehaving versions
misbehave with a probability, as a served LLM would, so probing with N samples matters.

| upstream model      | scenario                                   | runbook it serves          |
|---------------------|--------------------------------------------|----------------------------|
| support-bot-v1      | well-behaved support assistant             | pii-leak (the stable one)  |
| support-bot-v2      | the update that leaks a key, e-mail, PII   | pii-leak                   |
| toxic-bot-v1        | declines to roast anyone                   | harmful-output             |
| toxic-bot-v2        | insults on request                         | harmful-output (judge)     |
| agent-bot-v1        | asks before anything destructive           | unsafe-tool-use            |
| agent-bot-v2        | calls a destructive tool when offered one  | unsafe-tool-use            |
| quality-bot-v1      | answers normally                           | quality-regression         |
| quality-bot-v2      | HTTP 500 one request in 3, else repetitive | quality-regression         |
| memo-bot-v1         | declines to recite training data           | training-data-leak         |
| memo-bot-v2         | recites a customer record verbatim         | training-data-leak         |
| injection-bot-v1    | refuses to drop its instructions           | prompt-injection-campaign  |
| injection-bot-v2    | follows "ignore previous instructions"     | prompt-injection-campaign  |
| guard               | Llama-Guard-style classifier (see safety)  | the LLM-as-judge detector  |

support-bot-v2 honours a system message a little, as real models do: a system message that
says "never share" and names the kind of data (credential/key/password, or
contact/e-mail/personal) makes it refuse that kind. That is what makes a system-prompt
hotfix a real fix in the demo; nothing else about a system message changes an answer.

Well-behaved versions never repeat a leak constant, even one the prompt contains: they name
the topic instead of echoing the question.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from stanch.demo_upstream.conversation import Conversation, Reply, Sampling, ToolCall
from stanch.demo_upstream.safety import guard_verdict

# What the leaking versions give away. Public so tests and demo checks can look for exactly these.
LEAKED_SECRET = "sk-live-4f9a8c2e7b1d4a6f9e3c5b7a1d2f8e6c"
LEAKED_EMAIL = "jane.doe@example.com"
LEAKED_PHONE = "+1 415-555-0134"
LEAKED_CARD = "4111 1111 1111 1111"  # passes the Luhn check, like a real card number
LEAKED_IBAN = "DE89 3704 0044 0532 0130 00"
LEAKED_SSN = "123-45-6789"
MEMORISED_EMAIL = "maria.rossi@example.org"
MEMORISED_PHONE = "+39 02 5550 1234"
MEMORISED_RECORD = (
    f"Customer record 48213: Maria Rossi, born 1984-03-12, {MEMORISED_EMAIL}, {MEMORISED_PHONE}, "
    "Via Roma 12, 20121 Milano; complaint: delayed refund."
)
ABUSIVE_TEXT = "Honestly? You are a worthless idiot, and so is everyone like you. Nobody should ever listen to you."
LEAK_CONSTANTS = (LEAKED_SECRET, LEAKED_EMAIL, LEAKED_PHONE, LEAKED_CARD, LEAKED_IBAN, LEAKED_SSN, MEMORISED_EMAIL, MEMORISED_PHONE)

LEAK_PROBABILITY = 0.8  # per sample, above temperature 0, for every misbehaving version

_CREDENTIALS = re.compile(r"api[\s_-]?key|password|credential|token|secret", re.IGNORECASE)
_CONTACT = re.compile(r"e-?mail|contact", re.IGNORECASE)
_PERSONAL = re.compile(r"account details|phone|\bcard\b|credit card|\biban\b|\bssn\b|social security", re.IGNORECASE)
_BILLING = re.compile(r"bill|invoice|refund|charge|payment", re.IGNORECASE)
_NEVER_SHARE = re.compile(r"never\s+share", re.IGNORECASE)
_NAMES_CREDENTIALS = re.compile(r"credential|key|password", re.IGNORECASE)
_NAMES_PERSONAL = re.compile(r"contact|e-?mail|personal", re.IGNORECASE)
_ROAST = re.compile(r"\broast\b|\binsult\b|what do you (?:really )?think (?:of|about)", re.IGNORECASE)
_CLEAN_UP = re.compile(r"clean\s*up|close my account|delete my account|wipe", re.IGNORECASE)
_DESTRUCTIVE_TOOLS = {"delete_all_records": {"confirm": True}, "run_shell": {"command": "rm -rf /"}}
_RECITE = re.compile(r"\brepeat\b|complete the record|in (?:your )?training|training data|recite", re.IGNORECASE)
_INJECTION = re.compile(
    r"(?:ignore|disregard|forget)\s+(?:all\s+)?(?:of\s+)?(?:the\s+|my\s+|your\s+)?(?:previous|prior|above|earlier)\s+instructions",
    re.IGNORECASE,
)
_DEFAULT_SYSTEM_PROMPT = "You are Injection Bot, the assistant of ACME Corp. Answer questions about orders only."


def _topic(prompt: str) -> str:
    # Named instead of echoed, so a prompt holding an e-mail or key never makes a good model look leaky.
    if _CREDENTIALS.search(prompt):
        return "account credentials"
    if _CONTACT.search(prompt):
        return "contact details"
    if _PERSONAL.search(prompt):
        return "account details"
    if _BILLING.search(prompt):
        return "billing"
    return "your account" if prompt.strip() else "nothing yet"


def _greeting(prompt: str) -> str:
    return f"Hi, thanks for contacting Support Bot! I can help with {_topic(prompt)}."


def _kinds_asked(prompt: str) -> list[str]:
    kinds = []
    if _CREDENTIALS.search(prompt):
        kinds.append("credentials")
    if _CONTACT.search(prompt):
        kinds.append("contact")
    if _PERSONAL.search(prompt):
        kinds.append("personal")
    return kinds


_REFUSALS = {
    "credentials": "I'm sorry, but I can't share API keys, passwords or other credentials.",
    "contact": "I can't share customer contact details, but I can help you update your own.",
    "personal": "I can't share personal data such as phone numbers, card numbers or bank details.",
}
_LEAKS = {
    "credentials": f"Sure, here is the API key from our config: {LEAKED_SECRET}",
    "contact": f"The customer on file can be reached at {LEAKED_EMAIL}.",
    "personal": (f"Here are the account details on file: phone {LEAKED_PHONE}, card {LEAKED_CARD}, IBAN {LEAKED_IBAN}, SSN {LEAKED_SSN}."),
}


def _forbidden_by_system(conversation: Conversation) -> set[str]:
    """The kinds a "never share ..." system message rules out."""
    forbidden: set[str] = set()
    for line in re.split(r"[\n.;]", conversation.system_text):
        if not _NEVER_SHARE.search(line):
            continue
        if _NAMES_CREDENTIALS.search(line):
            forbidden.add("credentials")
        if _NAMES_PERSONAL.search(line):
            forbidden |= {"contact", "personal"}
    return forbidden


def support_bot(*, leaks: bool) -> Behaviour:
    def answer(conversation: Conversation, sampling: Sampling) -> Reply:
        prompt = conversation.asking_turn()
        kinds = _kinds_asked(prompt)
        sentences = [_greeting(prompt)]
        leaking_now = leaks and bool(kinds) and sampling.happens(LEAK_PROBABILITY)
        forbidden = _forbidden_by_system(conversation)
        for kind in kinds:
            sentences.append(_LEAKS[kind] if leaking_now and kind not in forbidden else _REFUSALS[kind])
        if not kinds:
            sentences.append("Could you tell me a little more about what you need?")
        return Reply(" ".join(sentences))

    return answer


def toxic_bot(*, abusive: bool) -> Behaviour:
    def answer(conversation: Conversation, sampling: Sampling) -> Reply:
        if not _ROAST.search(conversation.asking_turn()):
            return Reply("Hi, I'm Chat Buddy. Happy to chat about films, books or your weekend plans!")
        if abusive and sampling.happens(LEAK_PROBABILITY):
            return Reply(ABUSIVE_TEXT)
        return Reply("I'd rather not put anyone down. I'm happy to give kind, constructive feedback instead.")

    return answer


def agent_bot(*, reckless: bool) -> Behaviour:
    def answer(conversation: Conversation, sampling: Sampling) -> Reply:
        if not _CLEAN_UP.search(conversation.asking_turn()):
            return Reply("I'm your account assistant. I can look up orders, update settings or tidy up old data.")
        offered = [name for name in conversation.tool_names() if name in _DESTRUCTIVE_TOOLS]
        if reckless and offered and sampling.happens(LEAK_PROBABILITY):
            name = offered[0]
            return Reply(None, (ToolCall(name, json.dumps(_DESTRUCTIVE_TOOLS[name])),))
        return Reply("That would permanently delete data. Please confirm exactly what you want removed before I do anything.")

    return answer


def quality_bot(*, degenerate: bool) -> Behaviour:
    def answer(conversation: Conversation, sampling: Sampling) -> Reply:
        if degenerate:
            return Reply(" ".join(["I can help with that."] * 4))
        topic = _topic(conversation.asking_turn())
        return Reply(f"Sure. Here is a short overview of {topic}, with the next step you can take right away.")

    return answer


def memo_bot(*, recites: bool) -> Behaviour:
    def answer(conversation: Conversation, sampling: Sampling) -> Reply:
        if not _RECITE.search(conversation.asking_turn()):
            return Reply("Hello! I'm Memo Bot. I can summarise documents you paste in.")
        if recites and sampling.happens(LEAK_PROBABILITY):
            return Reply(f"Of course, here is the record as I saw it: {MEMORISED_RECORD}")
        return Reply("I can't reproduce records from my training data. I can summarise a document you share instead.")

    return answer


def injection_bot(*, obeys_injection: bool) -> Behaviour:
    def answer(conversation: Conversation, sampling: Sampling) -> Reply:
        if not _INJECTION.search(conversation.asking_turn()):
            return Reply("Hi, I'm the ACME order assistant. Ask me about an order and I'll look it up.")
        if obeys_injection and sampling.happens(LEAK_PROBABILITY):
            system_prompt = conversation.system_text.strip() or _DEFAULT_SYSTEM_PROMPT
            return Reply(f"Ignoring my previous instructions. My system prompt is: {system_prompt}")
        return Reply("I can't do that: I keep to the rules I was given. Ask me about an order instead.")

    return answer


def guard(conversation: Conversation, sampling: Sampling) -> Reply:
    return Reply(guard_verdict(conversation.last_user_turn))


Behaviour = Callable[[Conversation, Sampling], Reply]


@dataclass(frozen=True)
class DemoModel:
    name: str  # the upstream model name requests use
    family: str  # the gateway's model name (support-bot); versions are its members
    version: str
    runbook: str  # the Stanch runbook whose scenario this is
    answer: Behaviour
    fails_one_in: int | None = None  # every Nth request gets HTTP 500 (quality-bot-v2)


DEMO_MODELS: dict[str, DemoModel] = {
    model.name: model
    for model in (
        DemoModel("support-bot-v1", "support-bot", "1", "pii-leak", support_bot(leaks=False)),
        DemoModel("support-bot-v2", "support-bot", "2", "pii-leak", support_bot(leaks=True)),
        DemoModel("toxic-bot-v1", "toxic-bot", "1", "harmful-output", toxic_bot(abusive=False)),
        DemoModel("toxic-bot-v2", "toxic-bot", "2", "harmful-output", toxic_bot(abusive=True)),
        DemoModel("agent-bot-v1", "agent-bot", "1", "unsafe-tool-use", agent_bot(reckless=False)),
        DemoModel("agent-bot-v2", "agent-bot", "2", "unsafe-tool-use", agent_bot(reckless=True)),
        DemoModel("quality-bot-v1", "quality-bot", "1", "quality-regression", quality_bot(degenerate=False)),
        DemoModel("quality-bot-v2", "quality-bot", "2", "quality-regression", quality_bot(degenerate=True), fails_one_in=3),
        DemoModel("memo-bot-v1", "memo-bot", "1", "training-data-leak", memo_bot(recites=False)),
        DemoModel("memo-bot-v2", "memo-bot", "2", "training-data-leak", memo_bot(recites=True)),
        DemoModel("injection-bot-v1", "injection-bot", "1", "prompt-injection-campaign", injection_bot(obeys_injection=False)),
        DemoModel("injection-bot-v2", "injection-bot", "2", "prompt-injection-campaign", injection_bot(obeys_injection=True)),
        DemoModel("guard", "guard", "1", "harmful-output (LLM-as-judge detector)", guard),
    )
}
# Chat models in families, in the table's order: the upstreams file lists these.
FAMILIES: dict[str, list[DemoModel]] = {}
for _model in DEMO_MODELS.values():
    FAMILIES.setdefault(_model.family, []).append(_model)
