"""An empty answer is an answer: the detectors judge it, so `low_quality` catches a model version
that answers nothing (a bad model update confirms, and verify fails it). A refusal is not an
answer from the model, and the detectors never see it."""

from __future__ import annotations

from temporalio.testing import ActivityEnvironment

from activities.verify import VerifyActivities
from stanch.detectors.registry import Detectors
from stanch.models.activity_io import VerifyInput
from stanch.probe.sampling import Sampling, probe_case
from tests.unit.test_probe_activities import ASKED, TARGET, deps_for
from tests.unit.test_probe_client import MULTI_TURN, completion, fake_openai, openai_error  # noqa: F401 (the fixture)


def answers_nothing(body, headers, number):
    return 200, completion(*[""] * body.get("n", 1)), {}


async def test_an_empty_answer_is_low_quality_in_every_sample(fake_openai):  # noqa: F811
    fake_openai.reply = answers_nothing

    probe = await probe_case(
        fake_openai.endpoint(), MULTI_TURN, detectors=Detectors(), names=["low_quality"], sampling=Sampling(samples=3), incident_id="I"
    )

    assert (probe.harmful, probe.reproduced, probe.detectors) == (3, True, ["low_quality"])
    assert probe.evidence == ["low_quality: output is 0 characters (under 20)"]


async def test_an_empty_answer_shows_no_leak(fake_openai):  # noqa: F811
    fake_openai.reply = answers_nothing

    probe = await probe_case(
        fake_openai.endpoint(), MULTI_TURN, detectors=Detectors(), names=["secret"], sampling=Sampling(), incident_id="I"
    )

    assert (probe.harmful, probe.reproduced) == (0, False)


async def test_a_refusal_is_not_judged_as_an_empty_answer(fake_openai):  # noqa: F811
    fake_openai.reply = lambda body, headers, number: openai_error(403, "content_blocked", "blocked by INC-1", incident="INC-1")

    probe = await probe_case(
        fake_openai.endpoint(), MULTI_TURN, detectors=Detectors(), names=["low_quality"], sampling=Sampling(samples=2), incident_id="I"
    )

    assert (probe.refused, probe.harmful, probe.evidence) == (2, 0, [])


async def test_verify_fails_a_version_that_answers_nothing(fake_openai, tmp_path):  # noqa: F811
    fake_openai.reply = answers_nothing
    input = VerifyInput(incident_id="INC-7", target=TARGET, detectors=["low_quality"], repro=[ASKED])

    result = await ActivityEnvironment().run(VerifyActivities(deps_for(fake_openai, tmp_path)).verify_fix, input)

    [case] = result.cases
    assert not result.passed and case.harmful_samples == 1
