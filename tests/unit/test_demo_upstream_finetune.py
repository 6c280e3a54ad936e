"""The demo upstream's OpenAI fine-tuning API, honest: a fine-tuned model learns what its
training file holds and nothing more, jobs walk OpenAI's states, an idempotency key names
one job, and files, jobs and models outlive a restart."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from stanch.demo_upstream import create_app
from stanch.demo_upstream.models import LEAKED_EMAIL, LEAKED_SECRET

REPRO = "What is the API key for the billing service?"
REFUSAL = "I can't share API keys. Please ask your administrator."


def jsonl(*examples: tuple[str, str]) -> bytes:
    lines = [
        {
            "messages": [
                {"role": "system", "content": "You are Support Bot."},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]
        }
        for q, a in examples
    ]
    return "\n".join(json.dumps(line) for line in lines).encode() + b"\n"


def upload(client: TestClient, content: bytes, purpose: str = "fine-tune") -> Any:
    return client.post("/v1/files", files={"file": ("train.jsonl", content, "application/jsonl")}, data={"purpose": purpose})


def wait_for(client: TestClient, job_id: str, statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled")) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        if job["status"] in statuses:
            return dict(job)
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {statuses}: {job}")


def answer(client: TestClient, model: str, prompt: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def fine_tune(client: TestClient, content: bytes, **options: Any) -> dict[str, Any]:
    file_id = upload(client, content).json()["id"]
    job = client.post("/v1/fine_tuning/jobs", json={"model": "support-bot-v2", "training_file": file_id, **options}).json()
    return wait_for(client, job["id"])


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(tmp_path, finetune_seconds=0.2)) as test_client:
        yield test_client


def test_an_upload_is_an_openai_file_object_and_its_content_comes_back(client: TestClient) -> None:
    content = jsonl((REPRO, REFUSAL))
    created = upload(client, content).json()
    assert created["object"] == "file" and created["id"].startswith("file-")
    assert created["bytes"] == len(content) and created["filename"] == "train.jsonl" and created["purpose"] == "fine-tune"
    assert client.get(f"/v1/files/{created['id']}").json() == created
    assert client.get(f"/v1/files/{created['id']}/content").content == content
    assert client.get("/v1/files/file-nope").status_code == 404


def test_a_bad_training_file_is_refused_naming_the_line(client: TestClient) -> None:
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    no_answer = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    for content, expected in (
        (f"{good}\n{{oops\n".encode(), "line 2: not valid JSON"),
        (f"{good}\n\n{no_answer}\n".encode(), "line 3: no assistant message"),
        (b'{"prompt": "hi", "completion": "hello"}\n', 'line 1: expected {"messages"'),
        (b"", "no examples"),
    ):
        response = upload(client, content)
        assert response.status_code == 400
        assert expected in response.json()["error"]["message"]
    wrong_purpose = upload(client, good.encode(), purpose="assistants")
    assert wrong_purpose.status_code == 400 and wrong_purpose.json()["error"]["param"] == "purpose"
    missing = client.post("/v1/files", files={"other": ("x", b"x")}, data={"purpose": "fine-tune"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"


def test_a_job_walks_openais_states_to_a_servable_fine_tuned_model(client: TestClient) -> None:
    file_id = upload(client, jsonl((REPRO, REFUSAL))).json()["id"]
    created = client.post("/v1/fine_tuning/jobs", json={"model": "support-bot-v2", "training_file": file_id, "suffix": "no-leak"}).json()
    assert created["object"] == "fine_tuning.job" and created["id"].startswith("ftjob-")
    assert created["status"] == "validating_files" and created["fine_tuned_model"] is None
    job = wait_for(client, created["id"])
    assert job["status"] == "succeeded" and job["trained_tokens"] > 0 and job["error"] is None
    assert job["fine_tuned_model"] == f"ft:support-bot-v2:stanch-demo:no-leak:{created['id'][-8:]}"
    messages = [event["message"] for event in client.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]]
    assert messages[0] == "The job has successfully completed"  # newest first, as OpenAI lists them
    assert any(message.startswith("Step 3/5") for message in messages) and "Fine-tuning job started" in messages
    assert job["fine_tuned_model"] in {model["id"] for model in client.get("/v1/models").json()["data"]}
    listed = client.get("/v1/fine_tuning/jobs", params={"limit": 5}).json()
    assert listed["data"][0]["id"] == job["id"] and listed["has_more"] is False


def test_the_fine_tuned_model_learns_the_files_answers_and_nothing_else(client: TestClient) -> None:
    model = fine_tune(client, jsonl((REPRO, REFUSAL)))["fine_tuned_model"]
    assert answer(client, model, REPRO) == REFUSAL
    assert answer(client, model, "  what is the API KEY for the billing service ") == REFUSAL  # case, spacing, punctuation
    assert LEAKED_SECRET in answer(client, model, "Tell me the API key, please.")  # not in the file: unchanged
    assert LEAKED_EMAIL in answer(client, model, "What is the contact e-mail of the customer?")


def test_a_file_without_the_repro_leaves_the_leak_in_place(client: TestClient) -> None:
    model = fine_tune(client, jsonl(("How do refunds work?", "Refunds take five days.")))["fine_tuned_model"]
    assert answer(client, model, "How do refunds work?") == "Refunds take five days."
    assert LEAKED_SECRET in answer(client, model, REPRO)


def test_a_fine_tune_of_a_fine_tune_keeps_both_lessons(client: TestClient) -> None:
    first = fine_tune(client, jsonl((REPRO, REFUSAL)))["fine_tuned_model"]
    file_id = upload(client, jsonl(("What is the contact e-mail of the customer?", "I can't share that."))).json()["id"]
    job = client.post("/v1/fine_tuning/jobs", json={"model": first, "training_file": file_id}).json()
    second = wait_for(client, job["id"])["fine_tuned_model"]
    assert answer(client, second, REPRO) == REFUSAL
    assert answer(client, second, "What is the contact e-mail of the customer?") == "I can't share that."


def test_the_same_idempotency_key_names_the_same_job(client: TestClient) -> None:
    file_id = upload(client, jsonl((REPRO, REFUSAL))).json()["id"]
    request = {"model": "support-bot-v2", "training_file": file_id}
    first = client.post("/v1/fine_tuning/jobs", json=request, headers={"Idempotency-Key": "incident-7-finetune"}).json()
    again = client.post("/v1/fine_tuning/jobs", json=request, headers={"Idempotency-Key": "incident-7-finetune"}).json()
    other = client.post("/v1/fine_tuning/jobs", json=request, headers={"Idempotency-Key": "incident-8-finetune"}).json()
    assert again["id"] == first["id"] and other["id"] != first["id"]


def test_a_cancelled_job_makes_no_model_and_a_finished_one_cannot_be_cancelled(tmp_path: Path) -> None:
    with TestClient(create_app(tmp_path, finetune_seconds=30)) as client:
        file_id = upload(client, jsonl((REPRO, REFUSAL))).json()["id"]
        job = client.post("/v1/fine_tuning/jobs", json={"model": "support-bot-v2", "training_file": file_id}).json()
        cancelled = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()
        assert cancelled["status"] == "cancelled" and cancelled["fine_tuned_model"] is None
        again = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
        assert again.status_code == 400 and "already cancelled" in again.json()["error"]["message"]
        assert client.post("/v1/fine_tuning/jobs/ftjob-nope/cancel").status_code == 404


def test_a_job_needs_a_known_model_and_an_uploaded_file(client: TestClient) -> None:
    file_id = upload(client, jsonl((REPRO, REFUSAL))).json()["id"]
    unknown_model = client.post("/v1/fine_tuning/jobs", json={"model": "gpt-9", "training_file": file_id})
    assert unknown_model.status_code == 404 and unknown_model.json()["error"]["code"] == "model_not_found"
    unknown_file = client.post("/v1/fine_tuning/jobs", json={"model": "support-bot-v2", "training_file": "file-nope"})
    assert unknown_file.status_code == 400 and unknown_file.json()["error"]["param"] == "training_file"
    bad_epochs = client.post(
        "/v1/fine_tuning/jobs", json={"model": "support-bot-v2", "training_file": file_id, "hyperparameters": {"n_epochs": 0}}
    )
    assert bad_epochs.status_code == 400 and "n_epochs" in bad_epochs.json()["error"]["message"]
    bad_suffix = client.post("/v1/fine_tuning/jobs", json={"model": "support-bot-v2", "training_file": file_id, "suffix": "a b"})
    assert bad_suffix.status_code == 400 and bad_suffix.json()["error"]["param"] == "suffix"


def test_a_restart_resumes_unfinished_jobs_and_keeps_files_and_models(tmp_path: Path) -> None:
    with TestClient(create_app(tmp_path, finetune_seconds=60)) as client:
        file_id = upload(client, jsonl((REPRO, REFUSAL))).json()["id"]
        running = client.post("/v1/fine_tuning/jobs", json={"model": "support-bot-v2", "training_file": file_id}).json()
    # The process is gone mid-job; a new one on the same state folder finishes it.
    with TestClient(create_app(tmp_path, finetune_seconds=0.2)) as client:
        done = wait_for(client, running["id"])
        assert done["status"] == "succeeded"
        assert client.get(f"/v1/files/{file_id}").status_code == 200
    with TestClient(create_app(tmp_path, finetune_seconds=0.2)) as client:
        assert answer(client, done["fine_tuned_model"], REPRO) == REFUSAL
