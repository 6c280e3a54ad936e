"""An alert storm on one incident, end to end: 20,000 Alertmanager alerts in batches of 100,
through the real API into one incident on the real dev server and worker. The incident keeps
running, counts every alert, and hands its memory over to a new run (continue-as-new) so that
no run's history grows past Temporal's 10,240-event warning.

The alerts route to the catch-all `triage` runbook, whose incident waits for a human: the
storm arrives while the workflow waits, as it does in production.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from tests.e2e.processes import wait_for
from tests.e2e.test_board import LAUNCH_ARGS, chromium, playwright_api
from tests.e2e.test_intake import Stack

pytestmark = pytest.mark.e2e

ALERTS = 20_000
BATCH = 100
TEMPORAL_WARNS_AT = 10_240
SENDERS = 4  # Alertmanager sends each alert group's notifications on its own


def alertmanager_batch(first: int) -> dict:
    """One webhook of Alertmanager's: one alert rule firing on BATCH instances."""
    alerts = [
        {
            "status": "firing",
            "labels": {"alertname": "ToxicOutputSpike", "model": "support-bot", "instance": f"pod-{n}"},
            "annotations": {"summary": "toxic output spike on support-bot"},
            "startsAt": "2026-12-05T10:00:00Z",
            "fingerprint": f"{n:016x}",
        }
        for n in range(first, first + BATCH)
    ]
    return {"version": "4", "status": "firing", "receiver": "stanch", "groupKey": "storm", "alerts": alerts}


def send_like_alertmanager(api: str, body: dict) -> str:
    """POST until accepted; Alertmanager retries a 5xx (or 429) the same way."""
    with httpx.Client(timeout=60) as http:
        for _ in range(200):
            answer = http.post(f"{api}/v1/alerts/alertmanager", json=body)
            if answer.status_code == 202:
                return answer.json()["incidents"][0]["incident_id"]
            assert answer.status_code in (429, 503), answer.text
            time.sleep(0.2)
    raise AssertionError("the API never accepted the batch")


async def run_lengths(address: str, workflow_id: str) -> tuple[WorkflowExecutionStatus | None, list[int]]:
    """The latest run's status, and events per run from the first, following continue-as-new."""
    client = await Client.connect(address)
    latest = await client.get_workflow_handle(workflow_id).describe()
    run_id = latest.raw_description.workflow_execution_info.first_run_id
    lengths = []
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        lengths.append(len(history.events))
        run_id = history.events[-1].workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return latest.status, lengths


def board_signals(api: str, incident_id: str) -> str:
    """What a responder reads on the board's incident page under "Signals"."""
    expect, sync_playwright = playwright_api()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=LAUNCH_ARGS)
        try:
            page = browser.new_context(base_url=api).new_page()
            page.goto("/board")
            page.get_by_label("Your name").fill("storm-watcher")
            page.get_by_label("Your roles").fill("oncall")
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("heading", name="Incidents", level=1).wait_for()
            page.goto(f"/board/incidents/{incident_id}")
            signals = page.locator(".facts__row", has=page.locator("dt", has_text="Signals")).locator("dd")
            expect(signals).to_contain_text("kept in full", timeout=30_000)
            return signals.inner_text()
        finally:
            browser.close()


@pytest.mark.timeout(900)  # with one pytest worker per core, other tests share the machine
def test_a_storm_of_20000_alerts_is_one_running_incident_counting_every_alert(tmp_path):
    with Stack(tmp_path) as stack:
        started = time.monotonic()
        with ThreadPoolExecutor(SENDERS) as senders:
            batches = [alertmanager_batch(first) for first in range(0, ALERTS, BATCH)]
            incident_ids = set(senders.map(lambda body: send_like_alertmanager(stack.api, body), batches))
        sent_in = time.monotonic() - started
        assert len(incident_ids) == 1, incident_ids
        (incident_id,) = incident_ids

        incident = wait_for(lambda: stack.incident(incident_id), lambda s: s.get("signal_count") == ALERTS, timeout=300)
        assert incident["status"] == "triage", "still waiting for a human, neither failed nor closed"
        assert incident["runs"] >= 3, "a long history was handed over to new runs"
        assert len(incident["signals"]) < incident["signal_count"], "the storm is counted, not kept in full"

        listed = wait_for(lambda: httpx.get(f"{stack.api}/v1/incidents", timeout=15).json(), lambda found: bool(found))
        assert [row["id"] for row in listed] == [incident_id], "one incident, not one row per run"

        assert board_signals(stack.api, incident_id) == f"{ALERTS:,} ({len(incident['signals'])} kept in full)"

        status, lengths = asyncio.run(run_lengths(stack.env["TEMPORAL_ADDRESS"], incident_id))
        assert status == WorkflowExecutionStatus.RUNNING
        assert max(lengths) < TEMPORAL_WARNS_AT, lengths
        print(f"{ALERTS} alerts sent in {sent_in:.0f} s; runs: {lengths}")
