"""The incident board in a real headless Chromium against the real stack.

Dev server, gateway, worker and API run as processes; Debian's `chromium` is driven by
Playwright's Python package (never `playwright install`: no browser download). Two
responders sign in from two browser contexts, watch the demo incident appear in the list
without reloading, open it, see the block already in place (reversible, so at once), approve the pending
`rollback` step — four eyes, one of them safety — and watch the stage finish live, on a desktop and a 375 px phone. With tokens:
a bad token and a viewer are refused in the API's own words, two tokens approve. Screenshots
land in test-artifacts/board/.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Self

import httpx
import pytest
import yaml

from stanch.cli.demo import Demo
from stanch.intake.auth import INTAKE_SOURCES
from stanch.temporal.devserver import wait_for_port
from stanch.trust.responders import token_sha256
from tests.e2e.processes import Process, free_port, start_demo_models, stop_all, wait_http

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "board"
# Chromium logs every non-2xx answer; the tests provoke refusals (a bad token, a viewer
# approving, approving twice) on purpose, and stop the API under an open board.
EXPECTED = re.compile(r"^Failed to load resource: (the server responded with a status of (401|403|409)|net::ERR_CONNECTION_REFUSED)")
LIVE = 90_000  # ms: how long the browser waits for the workflow to move


class Stack:
    """Temporal dev server, gateway, worker and API, each a process, on free loopback ports."""

    def __init__(self, tmp: Path, api_args: tuple[str, ...] = ("--insecure-dev",), env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.api_args = api_args
        self.ports = {name: free_port() for name in ("temporal", "ui", "api", "gateway")}
        self.api = f"http://127.0.0.1:{self.ports['api']}"
        self.ui = f"http://127.0.0.1:{self.ports['ui']}"
        self.env = {
            "STANCH_HOME": str(tmp / "home"),
            "TEMPORAL_ADDRESS": f"127.0.0.1:{self.ports['temporal']}",
            "STANCH_GATEWAY_URL": f"http://127.0.0.1:{self.ports['gateway']}",
            "STANCH_API_URL": self.api,
            "STANCH_TEMPORAL_UI": self.ui,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.processes: list[Process] = []

    def start(self, name: str, *args: str) -> Process:
        process = Process(name, list(args), self.env, self.tmp)
        self.processes.append(process)
        return process

    def __enter__(self) -> Self:
        try:
            home = str(self.tmp / "home")
            self.start(
                "dev-server", "dev-server", "--home", home, "--port", str(self.ports["temporal"]), "--ui-port", str(self.ports["ui"])
            )
            wait_for_port("127.0.0.1", self.ports["temporal"], 60)
            self.env.update(start_demo_models(self.env, self.tmp, self.processes))
            gateway = self.start("gateway", "gateway", "--port", str(self.ports["gateway"]), "--db", str(self.tmp / "gateway.db"), "--dev")
            self.start("worker", "worker")
            api = self.start("api", "api", "--port", str(self.ports["api"]), *self.api_args)
            wait_http(f"{self.env['STANCH_GATEWAY_URL']}/healthz", gateway)
            wait_http(f"{self.api}/readyz", api)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        stop_all(self.processes)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail(15)}" for p in self.processes)


def chromium() -> str:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the board is tested in Debian's Chromium. Install it with `apt-get install -y chromium` (.ci/run does)"
        )
    return str(CHROMIUM)


def playwright_api():
    chromium()
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("Playwright's Python package is missing: `pip install -e '.[test]'` installs it (never `playwright install`)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return expect, sync_playwright


class Board:
    """One headless Chromium against the stack: each `open` is a fresh context (its own
    sessionStorage, so its own sign-in). On failure every page is screenshotted and the
    processes' logs printed; at the end no page may have logged an error."""

    def __init__(self, playwright, stack: Stack, prefix: str) -> None:
        self.browser = playwright.chromium.launch(executable_path=chromium(), args=LAUNCH_ARGS)
        self.stack, self.prefix, self.pages = stack, prefix, []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, error, trace) -> None:
        try:
            if kind is not None:
                for n, page in enumerate(p for p in self.pages if not p.is_closed()):
                    page.screenshot(path=str(ARTIFACTS / f"{self.prefix}failure-{n}.png"), full_page=True)
                print(self.stack.logs())
            else:
                for page in self.pages:
                    assert page.problems == [], page.problems
        finally:
            self.browser.close()

    def open(self, **context_options):
        page = self.browser.new_context(base_url=self.stack.api, **context_options).new_page()
        page.problems = []  # uncaught errors and console errors (CSP refusals land there too)
        page.on("pageerror", lambda error: page.problems.append(f"pageerror: {error}"))
        page.on(
            "console",
            lambda message: (
                message.type == "error" and not EXPECTED.search(message.text) and page.problems.append(f"console: {message.text}")
            ),
        )
        self.pages.append(page)
        page.goto("/board")
        return page

    def sign_in(self, user: str, roles: str, screenshot: str = "", **context_options):
        """Development mode: the name and roles typed are who you are."""
        page = self.open(**context_options)
        page.get_by_label("Your name").fill(user)
        assert "Development mode (insecure-dev)" in page.locator("form.signin").inner_text()
        page.get_by_label("Your roles").fill(roles)
        if screenshot:
            page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
        page.get_by_role("button", name="Sign in").click()
        signed_in(page, user, roles)
        return page

    def sign_in_with_token(self, token: str, **context_options):
        page = self.open(**context_options)
        page.get_by_label("API token").fill(token)
        page.get_by_role("button", name="Sign in").click()
        return page


def signed_in(page, user: str, roles: str) -> None:
    page.get_by_role("heading", name="Incidents", level=1).wait_for()
    assert page.locator("#who-name").inner_text() == f"Signed in as {user} · {roles}"


def test_the_board_serves_every_file_it_ships_and_nothing_else():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from stanch.board import ASSETS, board_router

    app = FastAPI()
    app.include_router(board_router)
    client = TestClient(app)
    shipped = {path.name for path in (Path(__file__).resolve().parents[2] / "stanch" / "board" / "static").iterdir()}
    assert shipped == set(ASSETS) | {"index.html"}
    for name in ASSETS:
        answer = client.get(f"/board/assets/{name}")
        assert (
            answer.status_code == 200
            and answer.headers["content-type"] == ASSETS[name]
            and answer.headers["x-content-type-options"] == "nosniff"
        )
    for page in ("/board", "/board/incidents/harmful-output-support-bot-0123456789"):
        assert client.get(page).text.startswith("<!doctype html>")
    assert client.get("/board/assets/..%2f__init__.py").status_code == 404
    assert client.get("/board/incidents/not%20plain").status_code == 422


def stage(page, name: str, status: str):
    return page.locator(f'li[data-stage="{name}"][data-status="{status}"]')


def no_horizontal_scroll(page) -> None:
    width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways at {width[1]} px: it is {width[0]} px wide"


def test_containment_goes_on_at_once_and_two_responders_approve_the_rollback_from_the_board(tmp_path):
    expect, sync_playwright = playwright_api()
    desktop = {"viewport": {"width": 1280, "height": 900}}
    with Stack(tmp_path) as stack, sync_playwright() as playwright, Board(playwright, stack, "") as board:
        page = httpx.get(f"{stack.api}/board")
        assert page.status_code == 200, (
            f"the API does not serve the board (is board_router included in stanch/api/app.py?): {page.status_code}"
        )
        assert "default-src 'none'" in page.headers["content-security-policy"]
        oncall = board.sign_in("demo-oncall", "oncall", "sign-in.png", **desktop)
        safety = board.sign_in("demo-safety", "safety", **desktop)
        expect(oncall.get_by_text("No incidents match these filters.")).to_be_visible()
        expect(oncall.locator("#list-live")).to_contain_text("Live")
        oncall.evaluate("() => { window.notReloaded = true; }")

        # The alert fires; the incident shows up in the open list, no reload.
        demo = Demo(stack.api, timeout=180)
        demo.deploy_the_bad_update()
        incident_id = demo.fire_alert()
        link = oncall.get_by_role("link", name=incident_id)
        expect(link).to_be_visible(timeout=LIVE)
        assert oncall.evaluate("() => window.notReloaded") is True
        expect(oncall.locator(f'tr[data-incident="{incident_id}"]').get_by_text("new", exact=True)).to_be_visible()
        expect(oncall.locator("#announcer")).to_contain_text(f"New incident {incident_id}")
        # The filters are the API's: high severity keeps it, low hides it.
        oncall.get_by_label("Severity").select_option("low")
        oncall.get_by_role("button", name="Apply filters").click()
        expect(link).to_be_hidden(timeout=LIVE)
        assert "severity=low" in oncall.url
        oncall.get_by_role("button", name="Clear").click()
        expect(link).to_be_visible(timeout=LIVE)
        oncall.screenshot(path=str(ARTIFACTS / "list.png"), full_page=True)

        # Open it: the block went on at once (reversible), and switching the update off waits for
        # four eyes (the leaked secret makes it high severity).
        link.click()
        oncall.wait_for_url(f"**/board/incidents/{incident_id}")
        expect(stage(oncall, "contain", "done")).to_be_visible(timeout=LIVE)
        expect(oncall.locator("#actions")).to_contain_text("block outputs")
        expect(stage(oncall, "rollback", "awaiting_approval")).to_be_visible(timeout=LIVE)
        expect(oncall.get_by_role("heading", name="rollback awaits approval")).to_be_visible()
        assert oncall.locator("ol.stages > li").count() == 9
        ui_link = oncall.get_by_role("link", name="Open the workflow in the Temporal UI")
        assert ui_link.get_attribute("href") == f"{stack.ui}/namespaces/default/workflows/{incident_id}"
        expect(oncall.locator("#evidence")).to_contain_text(re.compile(r"SHA-256\s*[0-9a-f]{64}"))
        oncall.evaluate("() => { window.notReloaded = true; }")
        oncall.screenshot(path=str(ARTIFACTS / "incident.png"), full_page=True)

        oncall.get_by_role("button", name="Acknowledge").click()
        expect(oncall.get_by_text("You acknowledged the incident at")).to_be_visible()
        expect(oncall.get_by_role("button", name="Acknowledge")).to_be_hidden(timeout=LIVE)
        expect(oncall.locator("#main")).to_contain_text("by demo-oncall")

        oncall.get_by_label("Comment").fill("switching the leaking update off")
        oncall.get_by_role("button", name="Approve rollback").click()
        expect(oncall.get_by_text("You approved rollback at")).to_be_visible()
        expect(stage(oncall, "rollback", "awaiting_approval")).to_be_visible()  # one of two

        # Approving twice is refused, and the board shows the workflow's reason verbatim.
        expect(oncall.get_by_text("You have approved this step")).to_be_visible(timeout=LIVE)
        oncall.get_by_role("button", name="Approve rollback").click()
        refusal = oncall.locator("#decision-error")
        expect(refusal).to_contain_text("The API refused (409): ")
        headers = {"X-Stanch-User": "demo-oncall", "X-Stanch-Roles": "oncall"}
        again = httpx.post(f"{stack.api}/v1/incidents/{incident_id}/approvals", json={"stage": "rollback"}, headers=headers)
        assert again.status_code == 409
        assert refusal.inner_text() == f"The API refused (409): {again.json()['detail']}"

        # The safety lead sees the first approval arrive, is asked why before rejecting, approves.
        safety.goto(f"/board/incidents/{incident_id}")
        expect(safety.locator("#needs-you")).to_contain_text("1 of 2: demo-oncall", timeout=LIVE)
        safety.get_by_role("button", name="Reject rollback").click()
        expect(safety.locator("#decision-error")).to_have_text(re.compile("A rejection needs a comment"))
        expect(safety.get_by_label("Comment")).to_be_focused()
        safety.get_by_role("button", name="Approve rollback").click()
        expect(safety.get_by_text("You approved rollback at")).to_be_visible()

        # Both boards watch the rollback happen, without reloading.
        expect(stage(oncall, "rollback", "done")).to_be_visible(timeout=LIVE)
        expect(stage(safety, "rollback", "done")).to_be_visible(timeout=LIVE)
        assert oncall.evaluate("() => window.notReloaded") is True
        expect(oncall.locator("#announcer")).to_contain_text("Stage rollback: done")
        expect(oncall.locator("#actions")).to_contain_text("disable version")
        expect(oncall.locator("#actions")).to_contain_text(incident_id)  # idempotency keys name the incident
        expect(oncall.locator("#approvals")).to_contain_text("switching the leaking update off")
        oncall.screenshot(path=str(ARTIFACTS / "after-approval.png"), full_page=True)

        # On a phone: same pages, nothing wider than the screen.
        phone = board.sign_in(
            "demo-oncall", "oncall", viewport={"width": 375, "height": 812}, is_mobile=True, has_touch=True, device_scale_factor=2
        )
        expect(phone.get_by_role("link", name=incident_id)).to_be_visible(timeout=LIVE)
        no_horizontal_scroll(phone)
        phone.screenshot(path=str(ARTIFACTS / "phone-list.png"), full_page=True)
        phone.goto(f"/board/incidents/{incident_id}")
        expect(stage(phone, "rollback", "done")).to_be_visible(timeout=LIVE)
        no_horizontal_scroll(phone)
        phone.screenshot(path=str(ARTIFACTS / "phone.png"), full_page=True)

        # Stopping the API while boards are open: their streams end, it stops at once, they say so.
        api = next(process for process in stack.processes if process.name == "api")
        asked = time.monotonic()
        assert api.stop(timeout=20) != -signal.SIGKILL, api.tail()  # SIGINT, not the kill after 20 s
        assert time.monotonic() - asked < 10, f"the API waited {time.monotonic() - asked:.0f}s for the boards' event streams"
        expect(oncall.locator("#incident-live")).to_contain_text("Reconnecting", timeout=LIVE)

        # Landmarks and the live region a screen reader relies on.
        for page in (oncall, phone):
            assert page.locator("header").count() and page.locator("main#main").count() and page.locator("nav[aria-label]").count()
            assert page.locator("[aria-live]").count() >= 1


TOKENS = {"ada-token": ("ada", ["oncall"]), "sam-token": ("sam", ["safety"]), "vic-token": ("vic", ["viewer"])}


def token_mode_files(tmp: Path) -> dict[str, str]:
    """A responders file (token hashes only) and an intake file: alertmanager by bearer token,
    every other source off. Without --insecure-dev the API insists on both."""
    responders = {
        "tokens": [{"user": user, "roles": roles, "token_sha256": token_sha256(token)} for token, (user, roles) in TOKENS.items()]
    }
    intake = {source: {"enabled": False} for source in INTAKE_SOURCES} | {
        "alertmanager": [{"bearer": {"token_env": "BOARD_TEST_ALERT_TOKEN"}}]
    }
    (tmp / "responders.yaml").write_text(yaml.safe_dump(responders))
    (tmp / "intake-auth.yaml").write_text(yaml.safe_dump(intake))
    return {
        "STANCH_RESPONDERS": str(tmp / "responders.yaml"),
        "STANCH_INTAKE_AUTH": str(tmp / "intake-auth.yaml"),
        "BOARD_TEST_ALERT_TOKEN": "alert-token",
    }


def test_with_tokens_a_bad_token_and_a_viewer_are_refused_in_the_apis_words_and_two_tokens_approve(tmp_path):
    expect, sync_playwright = playwright_api()
    env = token_mode_files(tmp_path)
    with Stack(tmp_path, api_args=(), env=env) as stack, sync_playwright() as playwright, Board(playwright, stack, "token-") as board:
        assert httpx.get(f"{stack.api}/v1/auth").json() == {"mode": "token"}
        ada = board.sign_in_with_token("not-a-token")
        refused = httpx.get(f"{stack.api}/v1/me", headers={"Authorization": "Bearer not-a-token"})
        assert refused.status_code == 401
        expect(ada.locator("#signin-error")).to_have_text(f"Sign-in refused (401): {refused.json()['detail']}")
        ada.get_by_label("API token").fill("ada-token")
        ada.get_by_role("button", name="Sign in").click()
        signed_in(ada, "ada", "oncall")
        expect(ada.locator("#dev-banner")).to_be_hidden()
        ada.screenshot(path=str(ARTIFACTS / "token-signed-in.png"), full_page=True)

        demo = Demo(stack.api, timeout=180, oncall_token="ada-token", safety_token="sam-token")
        demo.http.headers["Authorization"] = "Bearer alert-token"  # the alert is sent as Alertmanager, not as ada
        demo.deploy_the_bad_update()
        incident_id = demo.fire_alert()
        ada.get_by_role("link", name=incident_id).click()
        expect(stage(ada, "rollback", "awaiting_approval")).to_be_visible(timeout=LIVE)

        # A viewer reads the incident but cannot act: the API's reason, word for word.
        vic = board.sign_in_with_token("vic-token")
        signed_in(vic, "vic", "viewer")
        vic.goto(f"/board/incidents/{incident_id}")
        expect(vic.get_by_text("Approving needs one of the roles")).to_be_visible(timeout=LIVE)
        vic.get_by_role("button", name="Approve rollback").click()
        forbidden = httpx.post(
            f"{stack.api}/v1/incidents/{incident_id}/approvals", json={"stage": "rollback"}, headers={"Authorization": "Bearer vic-token"}
        )
        assert forbidden.status_code == 403
        expect(vic.locator("#decision-error")).to_have_text(f"The API refused (403): {forbidden.json()['detail']}")

        # Two tokens, two people: four eyes, each decision in its token's name.
        sam = board.sign_in_with_token("sam-token")
        signed_in(sam, "sam", "safety")
        sam.goto(f"/board/incidents/{incident_id}")
        for page in (ada, sam):
            page.get_by_role("button", name="Approve rollback").click()
            expect(page.get_by_text("You approved rollback at")).to_be_visible()
        expect(stage(ada, "rollback", "done")).to_be_visible(timeout=LIVE)
        state = httpx.get(f"{stack.api}/v1/incidents/{incident_id}", headers={"Authorization": "Bearer vic-token"}).json()
        assert sorted((a["approver"], a["roles"]) for a in state["approvals"] if a["stage"] == "rollback") == [
            ("ada", ["oncall"]),
            ("sam", ["safety"]),
        ]
