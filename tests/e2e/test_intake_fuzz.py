"""Property-based fuzzing of every intake endpoint against the API's own OpenAPI schema.

A real API process in front of a real dev server: whatever schemathesis sends, the answer is
never a 5xx, and a request the API refused opened no incident (every incident Temporal
lists was named in a 202 answer).
"""

from __future__ import annotations

import itertools
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from stanch.temporal.devserver import wait_for_port
from tests.e2e.processes import Process, free_port, wait_for, wait_http

pytestmark = pytest.mark.e2e

INTAKE_PATHS = r"^/v1/(alerts|reports|findings)"


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("fuzz")
    ports = {name: free_port() for name in ("temporal", "ui", "api")}
    env = {"STANCH_HOME": str(tmp / "home"), "TEMPORAL_ADDRESS": f"127.0.0.1:{ports['temporal']}"}
    temporal = Process(
        "dev-server", ["dev-server", "--home", str(tmp / "home"), "--port", str(ports["temporal"]), "--ui-port", str(ports["ui"])], env, tmp
    )
    wait_for_port("127.0.0.1", ports["temporal"], 60)
    api_process = Process("api", ["api", "--port", str(ports["api"]), "--insecure-dev"], env, tmp)  # no worker: intake only
    url = f"http://127.0.0.1:{ports['api']}"
    try:
        wait_http(f"{url}/readyz", api_process)
        yield url
    finally:
        api_process.stop()
        temporal.stop()


@pytest.fixture(scope="module")
def intake_schema(api: str):
    return schemathesis.openapi.from_url(f"{api}/openapi.json").include(path_regex=INTAKE_PATHS)


def test_intake_never_answers_5xx_and_refused_requests_open_no_incident(api: str, intake_schema):
    answers: Counter = Counter()
    incidents_named_in_202s: set[str] = set()
    operations = [result.ok() for result in intake_schema.get_all_operations()]
    assert len(operations) >= 9, [op.label for op in operations]
    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            response = case.call(timeout=30)
            assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text[:500]}"
            answers[(mode.value, response.status_code // 100)] += 1  # noqa: B023 (runs within this iteration)
            if response.status_code == 202:
                # A closing notice with no incident open is dropped: it names the incident it would have joined.
                recorded = [item for item in response.json()["incidents"] if not item.get("dropped")]
                incidents_named_in_202s.update(item["incident_id"] for item in recorded)  # noqa: B023 (this iteration)

        fuzz()
    assert answers[("positive", 2)] and answers[("negative", 4)], f"both valid and invalid requests were sent: {answers}"

    # Only what was accepted opened an incident: every refused request left nothing behind.
    def listed() -> set[str]:
        return {incident["id"] for incident in httpx.get(f"{api}/v1/incidents", params={"limit": 1000}, timeout=30).json()}

    assert incidents_named_in_202s, "the fuzzing accepted nothing at all: the schema's examples should be valid"
    assert wait_for(listed, lambda ids: ids >= incidents_named_in_202s, timeout=30) == incidents_named_in_202s
