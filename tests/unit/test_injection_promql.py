"""An alert's model label cannot change a runbook's PromQL: it is filled in as the content of the
string literal the runbook writes around `{model}`, or the query is not sent at all."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from temporalio.testing import ActivityEnvironment

from activities.confirm import ConfirmActivities
from stanch.config.settings import Settings
from stanch.models.actions import TargetRef
from stanch.models.activity_io import ConfirmInput, Finding
from stanch.runbooks.schema import ConfirmCheck
from stanch.temporal.activity_deps import ActivityDeps
from tests.http_recorder import Received, Recorder, RecordingServer

QUALITY = 'avg_over_time(stanch_answer_quality{model="{model}"}[15m])'  # as runbooks/quality-regression.yaml writes it


class Prometheus(Recorder):
    """Answers every instant query with one series at 0.5 and records what was asked."""

    def answer_for(self, received: Received) -> tuple[int, object]:
        return 200, {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "0.5"]}]}}

    def queries(self) -> list[str]:
        return [parse_qs(urlsplit(r.path).query)["query"][0] for r in self.requests if r.path.startswith("/api/v1/query")]


@pytest.fixture
def prometheus():
    with RecordingServer(Prometheus()) as running:
        yield running


async def run_metric_check(prometheus: RecordingServer, tmp_path: Path, model: str, query: str = QUALITY) -> Finding:
    deps = ActivityDeps(settings=Settings(home=tmp_path, prometheus_url=prometheus.url), targets=None)  # type: ignore[arg-type]
    check = ConfirmCheck(kind="metric", query=query, threshold=0.7, comparison="<")
    result = await ActivityEnvironment().run(
        ConfirmActivities(deps).confirm_incident, ConfirmInput(incident_id="inc-1", target=TargetRef(model=model), checks=[check])
    )
    (finding,) = result.findings
    return finding


def sent(prometheus: RecordingServer) -> list[str]:
    recorder = prometheus.recorder
    assert isinstance(recorder, Prometheus)
    return recorder.queries()


async def test_a_plain_model_is_filled_in_as_before(prometheus, tmp_path):
    finding = await run_metric_check(prometheus, tmp_path, "support-bot")

    assert sent(prometheus) == ['avg_over_time(stanch_answer_quality{model="support-bot"}[15m])']
    assert finding.outcome == "confirmed"


@pytest.mark.parametrize(
    ("model", "literal"),
    [
        # Closing the string and the selector, then OR-ing a series that always breaches.
        ('x"}[5m]) or vector(1)', r"x\"}[5m]) or vector(1)"),
        ("back\\slash", r"back\\slash"),
        ('ends with a backslash\\"', r"ends with a backslash\\\""),
        ("two\nlines", r"two\nlines"),
        ("tab\tand\rreturn", r"tab\tand\rreturn"),
    ],
)
async def test_quotes_backslashes_and_newlines_stay_inside_the_string_literal(prometheus, tmp_path, model, literal):
    await run_metric_check(prometheus, tmp_path, model)

    assert sent(prometheus) == ['avg_over_time(stanch_answer_quality{model="' + literal + '"}[15m])']


async def test_single_quoted_strings_escape_their_own_quote(prometheus, tmp_path):
    await run_metric_check(prometheus, tmp_path, "o'brien\\", query="up{model='{model}'}")

    assert sent(prometheus) == [r"up{model='o\'brien\\'}"]


async def test_a_regex_matcher_matches_the_model_literally(prometheus, tmp_path):
    # `.*` in a `=~` matcher would match every model's series; escaped, it matches only its own.
    await run_metric_check(prometheus, tmp_path, "bot.*", query='up{model=~"{model}"}')

    assert sent(prometheus) == [r'up{model=~"bot\\.\\*"}']


@pytest.mark.parametrize(
    ("model", "query", "reason"),
    [
        ("bell\x07", QUALITY, "control character"),
        ("", QUALITY, "empty"),
        ("support-bot", "stanch_answer_quality_{model}", "outside a \"...\" or '...' string"),
        # A backquoted string takes no escapes: nothing keeps a backquote in a model from closing it.
        ("support-bot", "up{model=`{model}`}", "outside a \"...\" or '...' string"),
    ],
)
async def test_a_model_that_cannot_be_filled_in_safely_is_refused_and_nothing_is_sent(prometheus, tmp_path, model, query, reason):
    finding = await run_metric_check(prometheus, tmp_path, model, query=query)

    assert finding.outcome == "inconclusive"
    assert reason in finding.detail
    assert "not sent" in finding.detail
    assert sent(prometheus) == []
