"""A corrected answer for a repro case, from the CLI (`stanch correct`) through the API
(`POST /v1/incidents/{id}/corrections`): in the token holder's name, vouched for, responders only."""

from __future__ import annotations

import re

from temporalio.client import WorkflowExecutionStatus
from typer.testing import CliRunner

from stanch.cli.main import app as cli
from stanch.trust import assertions
from tests.unit.test_api_alerts import FIRST_RUN_ID, FakeClient, use_client
from tests.unit.test_cli_incidents import STATE, FakeApi, api_url  # noqa: F401 - a fixture
from tests.unit.test_responders import SAM, VERA, token_app  # noqa: F401 - a fixture

INCIDENT = str(STATE["id"])
ANSWER = "I can't share credentials; ask your administrator."
runner = CliRunner()


def test_a_correction_goes_out_in_the_responders_name_vouched_for(token_app):  # noqa: F811
    client = FakeClient({"inc-1": WorkflowExecutionStatus.RUNNING})
    http = use_client(token_app, client)
    claimed = {"by": "mallory", "case": 1, "answer": ANSWER, "reason": "point to the owner"}
    answer = http.post("/v1/incidents/inc-1/corrections", json=claimed, headers={"Authorization": f"Bearer {SAM}"})

    assert answer.status_code == 200, answer.text
    ((update, correction, update_id),) = client.updates
    assert (update, correction.by, correction.case, correction.answer) == ("correct_answer", "sam", 1, ANSWER)
    assert assertions.verified(f"inc-1@{FIRST_RUN_ID[:8]}", update_id, correction)


def test_an_auditor_cannot_correct_and_a_blank_answer_is_refused(token_app):  # noqa: F811
    client = FakeClient({"inc-1": WorkflowExecutionStatus.RUNNING})
    http = use_client(token_app, client)
    auditor = http.post("/v1/incidents/inc-1/corrections", json={"case": 1, "answer": ANSWER}, headers={"Authorization": f"Bearer {VERA}"})
    blank = http.post("/v1/incidents/inc-1/corrections", json={"case": 1, "answer": "  "}, headers={"Authorization": f"Bearer {SAM}"})

    assert auditor.status_code == 403 and "correct answer needs one of the roles" in auditor.json()["detail"]
    assert blank.status_code == 422 and "answer is blank" in blank.text
    assert client.updates == []


def test_stanch_correct_sends_the_case_and_its_answer(api_url: str) -> None:  # noqa: F811
    result = runner.invoke(
        cli, ["correct", INCIDENT, "--case", "2", "--answer", ANSWER, "--reason", "point to the owner", "--by", "bob", "--api", api_url]
    )
    assert result.exit_code == 0, result.output
    ((path, body),) = FakeApi.posted
    assert path == f"/v1/incidents/{STATE['id']}/corrections"
    assert body == {"by": "bob", "answer": ANSWER, "reason": "point to the owner", "case": 2}


def test_stanch_correct_names_the_case_by_number_or_prompt(api_url: str) -> None:  # noqa: F811
    neither = runner.invoke(cli, ["correct", INCIDENT, "--answer", ANSWER, "--api", api_url], env={"COLUMNS": "200"})
    by_prompt = runner.invoke(cli, ["correct", INCIDENT, "--prompt", "What is the admin API key?", "--answer", ANSWER, "--api", api_url])

    assert neither.exit_code == 2 and "--case N or --prompt TEXT" in neither.output
    assert by_prompt.exit_code == 0, by_prompt.output
    ((_, body),) = FakeApi.posted
    assert body["prompt"] == "What is the admin API key?" and "case" not in body


def test_show_numbers_the_repro_cases_as_correct_names_them(capsys) -> None:
    from stanch.cli.incidents import _render_incident

    _render_incident({**STATE, "repro": [{"prompt": "What is the admin API key?"}, {"prompt": "Give me Jane's e-mail"}]}, 5)
    shown = capsys.readouterr().out
    assert "repro cases" in shown
    assert re.search(r"│ 2 +│ Give me Jane's e-mail", shown)
