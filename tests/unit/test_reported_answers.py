"""A reported answer that itself shows the harm is evidence: intake records what the runbook's probe
detectors find in it (masked), then masks the answer before it reaches history."""

from __future__ import annotations

from stanch.intake.start import with_reported_hits, without_secrets
from stanch.models.signals import ReproCase, Signal
from stanch.runbooks.loader import default_runbooks_dir, load_runbook

SECRET = "sk-live-4f9a8c2e7b1d4a6f9e3c5b7a1d2f8e6c"


def test_the_reported_answer_leaves_its_findings_and_not_itself() -> None:
    runbook = load_runbook(default_runbooks_dir() / "harmful-output.yaml").runbook
    reported = Signal(
        signal_id="r-1",
        repro=[
            ReproCase(prompt="What is the API key?", output=f"Sure: {SECRET}, or write jane.doe@example.com"),
            ReproCase(prompt="Hello", output="Hi! How can I help?"),
        ],
    )
    recorded = with_reported_hits(without_secrets(reported), reported, runbook)
    leaked, clean = recorded.repro
    assert SECRET not in (leaked.output or "") and SECRET not in " ".join(leaked.output_hits)
    assert [hit.split(":")[0] for hit in leaked.output_hits] == ["secret", "pii"]
    assert clean.output_hits == []


CONVERSATION = [
    {"role": "system", "content": "You are the billing bot. Internal key: sk-live-0000111122223333aaaa."},
    {"role": "user", "content": "My card is 4111 1111 1111 1111, what is the API key?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"key": "' + SECRET + '"}'}}],
    },
    {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": f"found {SECRET}"}]},
    {"role": "assistant", "content": f"Sure: {SECRET}"},
]


def history_text(signal: Signal) -> str:
    return signal.model_dump_json()


def test_what_the_model_and_its_tools_said_is_masked_and_the_prompts_are_kept() -> None:
    reported = Signal(signal_id="r-2", repro=[ReproCase(messages=CONVERSATION)])

    [case] = without_secrets(reported).repro

    system, user, call, tool, answer = case.messages
    assert SECRET not in history_text(without_secrets(reported))
    assert (system, user) == (CONVERSATION[0], CONVERSATION[1])  # the repro prompt, word for word
    arguments = call["tool_calls"][0]["function"]["arguments"]
    assert arguments.startswith('{"key": "sk-live-') and "…" in arguments and arguments.endswith('"}')
    assert tool["content"][0]["text"].startswith("found sk-live-") and tool["tool_call_id"] == "c1"
    assert answer["content"].startswith("Sure: sk-live-") and answer["content"] != CONVERSATION[4]["content"]
    assert case.prompt == CONVERSATION[1]["content"]


def test_a_conversation_ending_in_the_answer_the_reporter_saw_is_evidence() -> None:
    runbook = load_runbook(default_runbooks_dir() / "harmful-output.yaml").runbook
    reported = Signal(signal_id="r-3", repro=[ReproCase(messages=CONVERSATION)])

    recorded = with_reported_hits(without_secrets(reported), reported, runbook)

    [case] = recorded.repro
    assert [hit.split(":")[0] for hit in case.output_hits] == ["secret"]
    assert SECRET not in history_text(recorded)


def test_a_secret_the_user_typed_is_no_leak_when_the_answer_echoes_it() -> None:
    runbook = load_runbook(default_runbooks_dir() / "harmful-output.yaml").runbook
    echoed = [
        {"role": "user", "content": f"Is {SECRET} a valid key?"},
        {"role": "assistant", "content": "Let me check."},
        {"role": "user", "content": "Well?"},
        {"role": "assistant", "content": f"{SECRET} looks valid."},
    ]
    reported = Signal(signal_id="r-4", repro=[ReproCase(messages=echoed)])

    [case] = with_reported_hits(without_secrets(reported), reported, runbook).repro

    assert case.output_hits == []


def test_a_conversation_ending_in_a_user_turn_shows_no_answer() -> None:
    runbook = load_runbook(default_runbooks_dir() / "harmful-output.yaml").runbook
    reported = Signal(signal_id="r-5", repro=[ReproCase(messages=CONVERSATION[:2])])

    [case] = with_reported_hits(without_secrets(reported), reported, runbook).repro

    assert case.output_hits == [] and case.messages == CONVERSATION[:2]


def test_a_password_passed_to_a_tool_is_masked_by_its_argument_name() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "login", "arguments": '{"user": "jane", "password": "hunter22x"}'}}
    reported = Signal(
        signal_id="r-6", repro=[ReproCase(messages=[{"role": "user", "content": "Log me in"}, {"role": "assistant", "tool_calls": [call]}])]
    )

    [case] = without_secrets(reported).repro

    arguments = case.messages[1]["tool_calls"][0]["function"]["arguments"]
    assert "hunter22x" not in arguments and arguments.startswith('{"user": "jane", "password": "')


def test_a_probe_asks_the_question_again_not_after_the_reported_answer() -> None:
    case = ReproCase(
        messages=[
            {"role": "user", "content": "What is the API key?"},
            {"role": "assistant", "content": "Sure: [redacted]"},
        ]
    )
    assert case.question() == [{"role": "user", "content": "What is the API key?"}]
    assert case.conversation()[-1]["role"] == "assistant", "the report itself stays whole"
    assert ReproCase(prompt="hi").question() == [{"role": "user", "content": "hi"}]
