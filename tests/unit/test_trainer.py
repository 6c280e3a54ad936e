"""The trainer adapter against an OpenAI fine-tuning API served on loopback: it uploads the
training file, starts the job on the upstream base model, follows it to the fine-tuned model's
name, cancels it, and trains once per idempotency key whatever the trainer keeps — again, under
the key's next generation, only where the key's job failed or was cancelled."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from stanch.config.settings import Settings
from stanch.models.actions import TargetRef
from stanch.targets.base import TargetError
from stanch.targets.config import TargetsError
from stanch.targets.registry import TargetRegistry
from stanch.targets.trainer import OpenAITrainer, Trainer
from tests.unit.fake_trainer import FakeTrainer, serving

TRAINING = json.dumps({"messages": [{"role": "user", "content": "the admin password?"}, {"role": "assistant", "content": "No."}]}) + "\n"
REQUEST = {"base_model": "support-bot-v2", "training_file": TRAINING}
KEY = "inc-1/hotfix/0/gateway:support-bot/finetune-job"


def trainer_for(fake: FakeTrainer, **config: object) -> OpenAITrainer:
    return OpenAITrainer(OpenAITrainer.Config(base_url=fake.url, **config), api_key=fake.api_key)  # type: ignore[arg-type]


async def follow(trainer: OpenAITrainer, job_id: str) -> object:
    for _ in range(10):
        job = await trainer.job_status(job_id)
        if job.status in ("succeeded", "failed"):
            return job
    raise AssertionError(f"job {job_id} never finished")


async def test_a_job_trains_the_file_on_the_base_model_and_names_the_fine_tuned_model() -> None:
    async with serving(FakeTrainer(api_key="sk-test")) as fake:
        trainer = trainer_for(fake, hyperparameters={"n_epochs": 3})
        started = await trainer.start_job("support-bot", "finetune", REQUEST, KEY)

        assert started.status == "queued"  # validating_files, in Stanch's words
        assert fake.trained_files() == [TRAINING]
        sent = fake.job_requests[0]
        assert sent["idempotency_key"] == KEY
        assert sent["body"]["model"] == "support-bot-v2"
        assert sent["body"]["suffix"] == "stanch-fix"
        assert sent["body"]["metadata"]["stanch_key"] == KEY
        assert sent["body"]["hyperparameters"] == {"n_epochs": 3}

        done = await follow(trainer, started.job_id)
        assert done.status == "succeeded"  # type: ignore[attr-defined]
        assert done.result["fine_tuned_model"] == f"ft:support-bot-v2:fake:stanch-fix:{started.job_id}"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "fake",
    [
        FakeTrainer(),  # keeps metadata and filters the list by it
        FakeTrainer(filters_by_metadata=False),  # lists every job: the trainer filters them itself
        FakeTrainer(keeps_metadata=False),  # keeps no metadata: the Idempotency-Key header holds
    ],
    ids=["filters", "lists-everything", "no-metadata"],
)
async def test_the_same_key_trains_once(fake: FakeTrainer) -> None:
    async with serving(fake):
        trainer = trainer_for(fake)
        other = await trainer.start_job("support-bot", "finetune", REQUEST, "another-incident/finetune-job")
        first = await trainer.start_job("support-bot", "finetune", REQUEST, KEY)
        again = await trainer.start_job("support-bot", "finetune", REQUEST, KEY)

    assert again.job_id == first.job_id != other.job_id
    assert len(fake.jobs) == 2


async def test_a_found_job_is_not_uploaded_again() -> None:
    async with serving(FakeTrainer()) as fake:
        trainer = trainer_for(fake)
        await trainer.start_job("support-bot", "finetune", REQUEST, KEY)
        await trainer.start_job("support-bot", "finetune", REQUEST, KEY)

    assert len(fake.files) == 1 and len(fake.job_requests) == 1


@pytest.mark.parametrize(
    "fake",
    [FakeTrainer(fails_with="the training file is empty"), FakeTrainer(keeps_metadata=False, fails_with="the training file is empty")],
    ids=["filters", "no-metadata"],
)
async def test_a_key_whose_job_failed_trains_again_under_its_next_generation(fake: FakeTrainer) -> None:
    async with serving(fake):
        trainer = trainer_for(fake)
        failed = await follow(trainer, (await trainer.start_job("support-bot", "finetune", REQUEST, KEY)).job_id)
        assert failed.status == "failed"  # type: ignore[attr-defined]
        fake.fails_with = None  # a responder fixed what made it fail, and retries the step
        retrained = await trainer.start_job("support-bot", "finetune", REQUEST, KEY)
        followed = await trainer.start_job("support-bot", "finetune", REQUEST, KEY)

    assert retrained.job_id != failed.job_id  # type: ignore[attr-defined]
    assert followed.job_id == retrained.job_id, "a retry of the running second job follows it"
    assert len(fake.jobs) == 2
    assert {request["idempotency_key"] for request in fake.job_requests} == {KEY, f"{KEY}#2"}


async def test_a_key_whose_job_was_cancelled_trains_again_and_a_finished_generation_is_followed() -> None:
    async with serving(FakeTrainer(polls_to_finish=1)) as fake:
        trainer = trainer_for(fake)
        first = await trainer.start_job("support-bot", "finetune", REQUEST, KEY)
        await trainer.cancel_job(first.job_id)
        second = await trainer.start_job("support-bot", "finetune", REQUEST, KEY)
        done = await follow(trainer, second.job_id)
        again = await trainer.start_job("support-bot", "finetune", REQUEST, KEY)

    assert second.job_id != first.job_id and again.job_id == second.job_id
    assert done.status == again.status == "succeeded"  # type: ignore[attr-defined]
    assert fake.jobs[second.job_id]["metadata"]["stanch_key"] == f"{KEY}#2"


async def test_a_key_that_failed_every_generation_stops_for_good(monkeypatch: pytest.MonkeyPatch) -> None:
    import stanch.targets.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "MAX_GENERATIONS", 2)
    async with serving(FakeTrainer(polls_to_finish=1, fails_with="bad file")) as fake:
        trainer = trainer_for(fake)
        for _ in range(2):
            await follow(trainer, (await trainer.start_job("support-bot", "finetune", REQUEST, KEY)).job_id)
        with pytest.raises(TargetError) as exhausted:
            await trainer.start_job("support-bot", "finetune", REQUEST, KEY)

    assert not exhausted.value.retryable and "failed or was cancelled 2 times" in str(exhausted.value)
    assert len(fake.jobs) == 2


async def test_cancel_stops_the_job_and_it_reads_as_failed_cancelled() -> None:
    async with serving(FakeTrainer(polls_to_finish=0)) as fake:
        trainer = trainer_for(fake)
        job = await trainer.start_job("support-bot", "finetune", REQUEST, KEY)
        cancelled = await trainer.cancel_job(job.job_id)
        status = await trainer.job_status(job.job_id)

    assert fake.cancelled == [job.job_id]
    assert (cancelled.status, cancelled.error) == ("failed", "cancelled")
    assert (status.status, status.error) == ("failed", "cancelled")


async def test_cancelling_a_finished_job_leaves_it_as_it_is() -> None:
    async with serving(FakeTrainer(polls_to_finish=1)) as fake:
        trainer = trainer_for(fake)
        job = await trainer.start_job("support-bot", "finetune", REQUEST, KEY)
        await follow(trainer, job.job_id)
        after = await trainer.cancel_job(job.job_id)

    assert after.status == "succeeded" and fake.cancelled == []


async def test_a_failed_job_says_why_in_the_trainers_words() -> None:
    async with serving(FakeTrainer(fails_with="line 3 has no assistant message")) as fake:
        trainer = trainer_for(fake)
        job = await trainer.start_job("support-bot", "finetune", REQUEST, KEY)
        done = await follow(trainer, job.job_id)

    assert (done.status, done.error) == ("failed", "line 3 has no assistant message")  # type: ignore[attr-defined]


async def test_a_wrong_api_key_is_refused_for_good() -> None:
    async with serving(FakeTrainer(api_key="sk-right")) as fake:
        trainer = OpenAITrainer(OpenAITrainer.Config(base_url=fake.url), api_key="sk-wrong")
        with pytest.raises(TargetError) as refused:
            await trainer.start_job("support-bot", "finetune", REQUEST, KEY)

    assert not refused.value.retryable
    assert "HTTP 401" in str(refused.value) and "sk-wrong" not in str(refused.value)


async def test_an_unreachable_trainer_is_worth_retrying() -> None:
    async with serving(FakeTrainer()) as fake:
        url = fake.url
    trainer = OpenAITrainer(OpenAITrainer.Config(base_url=url, timeout_seconds=2))
    with pytest.raises(TargetError) as unreachable:
        await trainer.job_status("ftjob-1")
    assert unreachable.value.retryable and "unreachable" in str(unreachable.value)


@pytest.mark.parametrize(
    ("kind", "params", "words"),
    [
        ("retrain", REQUEST, "runs 'finetune' jobs only"),
        ("finetune", {"training_file": TRAINING}, "base_model"),
        ("finetune", {**REQUEST, "epochs": 3}, "epochs"),
    ],
)
async def test_a_bad_request_is_refused_before_anything_is_sent(kind: str, params: dict[str, object], words: str) -> None:
    trainer = OpenAITrainer(OpenAITrainer.Config(base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(TargetError) as refused:
        await trainer.start_job("support-bot", kind, params, KEY)
    assert not refused.value.retryable and words in str(refused.value)


async def test_a_trainer_takes_no_control_plane_actions() -> None:
    from stanch.models.actions import ActionSpec

    trainer = OpenAITrainer(OpenAITrainer.Config(base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(TargetError) as refused:
        await trainer.apply("support-bot", ActionSpec(kind="block_prompts"), KEY, "inc-1")
    assert not refused.value.retryable and "params.trainer" in str(refused.value)


def test_stanch_trainer_url_configures_the_default_trainer(tmp_path: Path) -> None:
    settings = Settings.from_env({"STANCH_HOME": str(tmp_path), "STANCH_TRAINER_URL": "http://127.0.0.1:8400/v1"})
    registry = TargetRegistry(settings, env={})

    trainer = registry.get(TargetRef(adapter="trainer", model="support-bot"))
    assert isinstance(trainer, Trainer) and registry.kind_of("trainer") == "trainer"
    assert "trainer" not in TargetRegistry(Settings(home=tmp_path), env={})


def test_the_api_key_comes_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"STANCH_HOME": str(tmp_path), "STANCH_TRAINER_URL": "http://127.0.0.1:8400/v1", "STANCH_TRAINER_API_KEY": "sk-env"}
    )
    assert settings.trainer_api_key is not None and "sk-env" not in repr(settings)
    trainer = TargetRegistry(settings, env={}).get(TargetRef(adapter="trainer", model="m"))
    assert isinstance(trainer, OpenAITrainer) and trainer.headers == {"Authorization": "Bearer sk-env"}


def test_a_trainer_in_the_targets_file_needs_its_key_set(tmp_path: Path) -> None:
    targets = tmp_path / "targets.yaml"
    targets.write_text("targets:\n  openai-ft:\n    trainer: {base_url: 'https://api.openai.com/v1', api_key_env: OPENAI_API_KEY}\n")
    settings = Settings(home=tmp_path, targets=targets)

    trainer = TargetRegistry(settings, env={"OPENAI_API_KEY": "sk-file"}).get(TargetRef(adapter="openai-ft", model="m"))
    assert isinstance(trainer, OpenAITrainer) and trainer.name == "openai-ft"
    with pytest.raises(TargetsError) as missing:
        TargetRegistry(settings, env={})
    assert "OPENAI_API_KEY is not set" in str(missing.value)


async def test_on_the_demo_upstream_the_fine_tuned_model_answers_what_it_was_trained_on(tmp_path: Path) -> None:
    import httpx

    from tests.unit.fake_trainer import demo_upstream

    leak = "What is the admin API key?"
    training = json.dumps({"messages": [{"role": "user", "content": leak}, {"role": "assistant", "content": "I can't share keys."}]}) + "\n"
    async with demo_upstream(tmp_path) as url:
        trainer = OpenAITrainer(OpenAITrainer.Config(base_url=url))
        request = {"base_model": "support-bot-v2", "training_file": training}
        job = await trainer.start_job("support-bot", "finetune", request, KEY)
        again = await trainer.start_job("support-bot", "finetune", request, KEY)
        for _ in range(100):
            job = await trainer.job_status(job.job_id)
            if job.status in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient() as client:
            chat = {"model": job.result["fine_tuned_model"], "messages": [{"role": "user", "content": leak}]}
            answer = (await client.post(f"{url}/chat/completions", json=chat)).json()
            jobs = (await client.get(f"{url}/fine_tuning/jobs")).json()["data"]

    assert again.job_id == job.job_id and len(jobs) == 1, "one key, one job"
    assert job.status == "succeeded" and job.result["fine_tuned_model"].startswith("ft:support-bot-v2:")
    assert answer["choices"][0]["message"]["content"] == "I can't share keys."


async def test_on_the_demo_upstream_a_cancelled_job_reads_as_cancelled(tmp_path: Path) -> None:
    from tests.unit.fake_trainer import demo_upstream

    async with demo_upstream(tmp_path, finetune_seconds=60) as url:
        trainer = OpenAITrainer(OpenAITrainer.Config(base_url=url))
        job = await trainer.start_job("support-bot", "finetune", REQUEST, KEY)
        cancelled = await trainer.cancel_job(job.job_id)

    assert (cancelled.status, cancelled.error) == ("failed", "cancelled")
