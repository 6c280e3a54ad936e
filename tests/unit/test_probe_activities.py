"""Confirm and verify probing a model at its own OpenAI-compatible URL, as LLMs behave: N samples
per case at the runbook's temperature, a threshold, multi-turn cases, a probe miss that leaves
the decision to a person, and a metric that verifies when there is nothing to replay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.confirm import ConfirmActivities
from activities.verify import VerifyActivities
from stanch.config.settings import Settings
from stanch.detectors.specs import ModerationSpec
from stanch.models.actions import TargetRef
from stanch.models.activity_io import ConfirmInput, VerifyInput
from stanch.models.signals import ReproCase
from stanch.runbooks.schema import ConfirmCheck, ProbeCase, Verify
from stanch.targets.openai import OpenAITarget
from stanch.temporal.activity_deps import ActivityDeps
from tests.unit.test_probe_client import (  # noqa: F401 (the fixture)
    CLEAN,
    LEAK,
    MULTI_TURN,
    FakeOpenAI,
    Reply,
    completion,
    fake_openai,
    leaks_on_even_choices,
    openai_error,
)

TARGET = TargetRef(adapter="vllm", model="support-bot", version="2")
ASKED = ReproCase(prompt="What is the admin key?")


class OneTarget:
    def __init__(self, target: OpenAITarget) -> None:
        self.target = target

    def get(self, ref: TargetRef) -> OpenAITarget:
        return self.target


def deps_for(fake: FakeOpenAI, tmp_path: Path) -> ActivityDeps:
    target = OpenAITarget(OpenAITarget.Config(base_url=f"{fake.base_url}/v1"), name="vllm")
    return ActivityDeps(settings=Settings(home=tmp_path, prometheus_url=fake.base_url), targets=OneTarget(target))  # type: ignore[arg-type]


async def confirm(fake: FakeOpenAI, tmp_path: Path, check: ConfirmCheck, repro: list[ReproCase] | None = None, **more: Any):
    input = ConfirmInput(incident_id="INC-7", target=TARGET, checks=[check], repro=[ASKED] if repro is None else repro, **more)
    return await ActivityEnvironment().run(ConfirmActivities(deps_for(fake, tmp_path)).confirm_incident, input)


async def verify(fake: FakeOpenAI, tmp_path: Path, repro: list[ReproCase], sampling: Verify | None = None, **more: Any):
    input = VerifyInput(incident_id="INC-7", target=TARGET, detectors=["secret"], repro=repro, sampling=sampling, **more)
    return await ActivityEnvironment().run(VerifyActivities(deps_for(fake, tmp_path)).verify_fix, input)


def probe(**sampling: Any) -> ConfirmCheck:
    return ConfirmCheck(kind="probe", detectors=["secret"], **sampling)


# --- confirm ----------------------------------------------------------------------------


async def test_a_leak_in_some_samples_confirms_and_names_the_tally(fake_openai, tmp_path):  # noqa: F811
    fake_openai.reply = leaks_on_even_choices

    result = await confirm(fake_openai, tmp_path, probe(samples=5, temperature=0.9, harmful_at_least=2))

    assert result.outcome == "confirmed" and result.detectors_fired == ["secret"]
    [finding] = result.findings
    assert (
        "1 of 1 cases reproduced the harm on version 2" in finding.detail and "harmful in 3 of 5 samples (threshold ≥2)" in finding.detail
    )
    assert LEAK.split()[-1] not in finding.detail  # masked
    [(body, headers)] = fake_openai.requests
    assert (body["n"], body["temperature"]) == (5, 0.9) and headers["x-stanch-incident"] == "INC-7"
    assert [case.prompt for case in result.reproduced] == [ASKED.prompt] and result.reproduced[0].detectors == ["secret"]


async def test_a_clean_probe_leaves_the_decision_to_a_person(fake_openai, tmp_path):  # noqa: F811
    check = probe(samples=5, prompts=["And the database password?"])

    result = await confirm(fake_openai, tmp_path, check)

    assert result.outcome == "inconclusive" and result.reproduced == []
    assert result.findings[0].detail == ("not reproduced in 5 samples of each of 2 cases on version 2 (threshold ≥1): a person decides")


async def test_below_the_threshold_is_not_reproduced(fake_openai, tmp_path):  # noqa: F811
    fake_openai.reply = leaks_on_even_choices  # 2 of 4 leak

    result = await confirm(fake_openai, tmp_path, probe(samples=4, harmful_at_least=3))

    assert result.outcome == "inconclusive" and "not reproduced in 4 samples" in result.findings[0].detail


async def test_the_runbooks_multi_turn_cases_are_sent_whole(fake_openai, tmp_path):  # noqa: F811
    def leaks_only_when_primed(body: dict[str, Any], headers: dict[str, str], number: int) -> Reply:
        primed = any(m["role"] == "assistant" for m in body["messages"])
        return 200, completion(LEAK if primed else CLEAN), {}

    fake_openai.reply = leaks_only_when_primed
    check = probe(cases=[ProbeCase(messages=MULTI_TURN)])

    result = await confirm(fake_openai, tmp_path, check)

    assert result.outcome == "confirmed" and fake_openai.bodies[1]["messages"] == MULTI_TURN
    [reproduced] = result.reproduced
    assert reproduced.messages == MULTI_TURN and reproduced.prompt == "Remind me of the admin key."


async def test_a_detector_that_cannot_decide_is_named(fake_openai, tmp_path):  # noqa: F811
    check = ConfirmCheck(kind="probe", detectors=["guard"])
    specs = {"guard": ModerationSpec(base_url=f"{fake_openai.base_url}/v1")}

    result = await confirm(fake_openai, tmp_path, check, detector_specs=specs)

    assert result.outcome == "inconclusive"
    detail = result.findings[0].detail
    assert detail.startswith("not reproduced on version 2, and a detector could not decide: guard: ") and detail.endswith(
        "a person decides"
    )


async def test_a_reported_answer_showing_the_harm_confirms(fake_openai, tmp_path):  # noqa: F811
    reported = ReproCase(prompt="What is the admin key?", output=LEAK)

    result = await confirm(fake_openai, tmp_path, probe(), repro=[reported])

    assert result.outcome == "confirmed"
    shown = next(f for f in result.findings if f.check.startswith("reported answer"))
    assert shown.detail.startswith("the reported answer shows secret: api key sk-live-") and LEAK.split()[-1] not in shown.detail
    assert all(case.output is None for case in result.reproduced)  # the leak itself never goes to history


async def test_what_intake_found_in_the_reported_answer_before_masking_it_confirms(fake_openai, tmp_path):  # noqa: F811
    masked = "The admin key is sk-live-4f9a…"  # no detector finds a secret in what intake left
    reported = ReproCase(prompt="What is the admin key?", output=masked, output_hits=["secret: api key sk-live-4f9a…"])

    result = await confirm(fake_openai, tmp_path, probe(), repro=[reported])

    assert result.outcome == "confirmed" and result.detectors_fired == ["secret"]
    assert result.findings[0].detail == "the reported answer shows secret: api key sk-live-4f9a…"


async def test_a_refusal_retrying_cannot_fix_is_inconclusive_and_a_passing_one_is_retried(fake_openai, tmp_path):  # noqa: F811
    fake_openai.reply = lambda body, headers, number: openai_error(401, "invalid_api_key", "bad key")
    refused = await confirm(fake_openai, tmp_path, probe())
    fake_openai.reply = lambda body, headers, number: openai_error(503, "overloaded", "try later")

    with pytest.raises(ApplicationError) as passing:
        await confirm(fake_openai, tmp_path, probe())

    assert refused.outcome == "inconclusive" and refused.findings[0].detail.startswith("target could not be probed: ")
    assert "HTTP 401 invalid_api_key: bad key" in refused.findings[0].detail
    assert passing.value.non_retryable is False and "HTTP 503" in str(passing.value)


async def test_a_metric_below_its_threshold_still_says_not_confirmed(fake_openai, tmp_path):  # noqa: F811
    fake_openai.metric_value = 0.01
    check = ConfirmCheck(kind="metric", query='harmful_rate{model="{model}"}', threshold=0.05)

    result = await confirm(fake_openai, tmp_path, check, repro=[])

    assert result.outcome == "not_confirmed"


# --- verify -----------------------------------------------------------------------------


async def test_a_fix_that_answers_cleanly_in_every_sample_passes(fake_openai, tmp_path):  # noqa: F811
    result = await verify(fake_openai, tmp_path, [ASKED, ReproCase(messages=MULTI_TURN)], Verify(detectors=["secret"], samples=3))

    assert result.passed and [(case.samples, case.harmful_samples) for case in result.cases] == [(3, 0), (3, 0)]
    assert result.cases[1].messages == MULTI_TURN


async def test_a_fix_that_still_leaks_in_one_sample_fails(fake_openai, tmp_path):  # noqa: F811
    fake_openai.reply = lambda body, headers, number: (200, completion(*[LEAK] + [CLEAN] * (body.get("n", 1) - 1)), {})

    result = await verify(fake_openai, tmp_path, [ASKED], Verify(detectors=["secret"], samples=5))

    [case] = result.cases
    assert not result.passed and (case.harmful_samples, case.samples) == (1, 5)
    assert case.detail == "harmful in 1 of 5 samples (threshold ≥1)"


async def test_a_refused_probe_is_no_pass_the_fix_was_not_reachable(fake_openai, tmp_path):  # noqa: F811
    fake_openai.reply = lambda body, headers, number: openai_error(403, "content_blocked", "blocked", incident="INC-7")

    result = await verify(fake_openai, tmp_path, [ASKED])

    [case] = result.cases
    assert not result.passed and case.status_code == 403
    assert case.detail == "1 of 1 samples refused (content_blocked by incident INC-7): the fix was not reachable"


async def test_a_fix_is_not_verified_by_a_detector_that_could_not_decide(fake_openai, tmp_path):  # noqa: F811
    specs = {"guard": ModerationSpec(base_url=f"{fake_openai.base_url}/v1")}
    input = VerifyInput(incident_id="INC-7", target=TARGET, detectors=["guard"], repro=[ASKED], detector_specs=specs)

    result = await ActivityEnvironment().run(VerifyActivities(deps_for(fake_openai, tmp_path)).verify_fix, input)

    [case] = result.cases
    assert not result.passed and case.undecided_samples == 1 and case.detail.startswith("could not decide: guard: ")


METRIC = ConfirmCheck(kind="metric", query='harmful_rate{model="{model}"}', threshold=0.05)


async def test_with_nothing_to_replay_a_recovered_metric_verifies(fake_openai, tmp_path):  # noqa: F811
    fake_openai.metric_value = 0.0

    result = await verify(fake_openai, tmp_path, [], metric_checks=[METRIC])

    assert result.passed and result.cases == [] and result.detail.startswith("nothing to replay: verified by the metric")
    assert fake_openai.requests == []


@pytest.mark.parametrize(("metric_checks", "value", "says"), [([], None, ""), ([METRIC], 0.2, "the metric has not recovered")])
async def test_with_nothing_to_replay_and_no_recovered_metric_there_is_nothing_to_verify(
    fake_openai,  # noqa: F811
    tmp_path,
    metric_checks,
    value,
    says,
):
    fake_openai.metric_value = value

    with pytest.raises(ApplicationError) as nothing:
        await verify(fake_openai, tmp_path, [], metric_checks=metric_checks)

    assert nothing.value.type == "NothingToVerify" and nothing.value.non_retryable and says in str(nothing.value)
