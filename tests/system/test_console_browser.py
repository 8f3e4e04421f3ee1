"""The web console in a real browser: Debian's Chromium, headless, driven by Playwright, against
the real API and worker processes on real Redis (and the MongoDB stand-in for the history)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from service.worker.registration import VERSION
from tests.conftest import ROOT, ServiceProcess, http, wait_for

CHROMIUM = "/usr/bin/chromium"  # Debian's package; `playwright install` is never run
KEY = "console-full-key-0123456789abcdef0123456789"
READ_KEY = "console-read-key-0123456789abcdef012345678"
# The README's screenshots: written there when CONSOLE_SCREENSHOTS=1, else into the test's
# temporary folder (a test run leaves the checkout as it was).
README_SCREENSHOTS = ROOT / "docs" / "screenshots"
XSS = "<script>window.hacked = 1</script><img src=x onerror=window.hacked=2>"

Start = Callable[..., ServiceProcess]


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def services(start_service: Start, mongo_uri: str) -> ServiceProcess:
    """An API and a worker (two slots), both with the keys and the history."""
    env = {"API_KEYS": KEY, "API_READONLY_KEYS": READ_KEY, "MONGODB_URI": mongo_uri}
    start_service(worker=True, WORKER_CONCURRENCY="2", **env)
    return start_service(**env)


class Watched:
    """A page whose console errors and uncaught exceptions are collected."""

    def __init__(self, browser: Browser, base: str) -> None:
        self.base = base
        self.context = browser.new_context(viewport={"width": 1440, "height": 900})
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def open(self, path: str) -> Page:
        self.page.goto(self.base + path)
        return self.page

    def login(self, key: str) -> Page:
        page = self.open("/console")
        page.fill("#key", key)
        page.click("button[type=submit]")
        expect(page.locator("header .brand")).to_be_visible()
        return page


def publish(base: str, job_type: str, payload: dict[str, Any]) -> str:
    status, _, body = http(
        "POST",
        f"{base}/jobs",
        {"type": job_type, "payload": payload},
        {"Authorization": f"Bearer {KEY}"},
    )
    assert status == 202, body
    job_id: str = body["id"]
    return job_id


def job_status(base: str, job_id: str) -> str:
    status, _, body = http("GET", f"{base}/jobs/{job_id}", None, {"Authorization": f"Bearer {KEY}"})
    assert status == 200, body
    found: str = body["status"]
    return found


def cell(page: Page, field: str) -> int:
    text = page.locator(f'tr[data-queue="app-queue"] td[data-field="{field}"]').inner_text()
    return int(text)


def test_without_the_key_the_console_shows_the_login(
    services: ServiceProcess, browser: Browser
) -> None:
    # Given no session, when any console page is opened, then the login form is all it shows
    watched = Watched(browser, services.url)
    page = watched.open("/console#/jobs")
    expect(page.locator("#login-form")).to_be_visible()
    assert page.locator("#main").count() == 0
    # and a wrong key is refused on the page
    page.fill("#key", "not-a-key")
    page.click("button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("not one of the API's keys")
    # and the console's data is refused without a session
    assert http("GET", f"{services.url}/console/api/overview")[0] == 401


def test_console_pages_live_numbers_actions_and_screenshots(
    services: ServiceProcess,
    browser: Browser,
    queue_redis: redis.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    shots = README_SCREENSHOTS if os.environ.get("CONSOLE_SCREENSHOTS") == "1" else tmp_path
    base = services.url
    app_redis = redis.Redis.from_url(f"{redis_url}/0")
    watched = Watched(browser, base)
    page = watched.login(KEY)

    # Every page loads without a console error
    for hash_, heading in (
        ("#/overview", "Overview"),
        ("#/jobs", "Jobs"),
        ("#/dead", "Dead letters"),
        ("#/workers", "Workers"),
    ):
        page.goto(f"{base}/console{hash_}")
        expect(page.locator("main h1")).to_have_text(heading)
    expect(page.locator("main")).to_contain_text("2 slots busy", timeout=10_000)
    expect(page.locator("main tbody")).to_contain_text(VERSION)  # the version it runs

    # Live numbers move while jobs run: two block the worker's two slots, three wait
    page.goto(f"{base}/console#/overview")
    expect(page.locator('tr[data-queue="app-queue"]')).to_be_visible()
    assert cell(page, "started") == 0
    blockers = [publish(base, "test.block", {"key": "release"}) for _ in range(2)]
    waiting = [publish(base, "echo", {"n": n}) for n in range(3)]
    expect(page.locator('tr[data-queue="app-queue"] td[data-field="started"]')).to_have_text("2")
    expect(page.locator('tr[data-queue="app-queue"] td[data-field="waiting"]')).to_have_text("3")
    app_redis.set("release", 1)
    expect(page.locator('tr[data-queue="app-queue"] td[data-field="waiting"]')).to_have_text("0")
    expect(page.locator('tr[data-queue="app-queue"] td[data-field="finished"]')).to_have_text("5")
    for job_id in blockers + waiting:
        wait_for(lambda job_id=job_id: job_status(base, job_id) == "finished")

    # A payload holding markup stays text on the job page
    xss = publish(base, "echo", {"note": XSS, "items": [1, 2, 3]})
    wait_for(lambda: job_status(base, xss) == "finished")
    page.goto(f"{base}/console#/jobs/{xss}")
    expect(page.locator("#payload")).to_contain_text(XSS)
    expect(page.locator("#result")).to_contain_text("<script>")
    assert page.evaluate("window.hacked") is None
    assert page.locator("main script, main img").count() == 0

    # A dead letter retried from the page reaches finished
    dead = publish(base, "test.fail_until", {"key": "repaired"})
    wait_for(lambda: job_status(base, dead) == "failed")
    page.goto(f"{base}/console#/dead")
    row = page.locator(f'tr[data-id="{dead}"]')
    expect(row).to_contain_text("repaired is not there yet")
    page.click("#dry-run")
    expect(page.locator("#dry-count")).to_have_text("1")
    app_redis.set("repaired", 1)
    row.get_by_role("button", name="Retry").click()
    expect(page.locator("#notice")).to_contain_text("queued again")
    wait_for(lambda: job_status(base, dead) == "finished")

    # The job page of a failed job shows its traceback; screenshots for the README
    failed = publish(base, "fail", {"message": "card declined by the payment gateway"})
    wait_for(lambda: job_status(base, failed) == "failed")
    for n in range(6):
        publish(base, "echo", {"order": n})
    page.goto(f"{base}/console#/jobs/{dead}")
    expect(page.locator("ol.timeline")).to_contain_text("attempt 2")
    page.goto(f"{base}/console#/overview")
    # the chart shows the finished jobs once the shipper has written them to the history
    page.wait_for_function(
        "() => [...document.querySelectorAll('#chart svg rect')]"
        ".some((bar) => Number(bar.getAttribute('height')) > 0)",
        timeout=15_000,
    )
    expect(page.locator('tr[data-queue="app-queue"] td[data-field="waiting"]')).to_have_text("0")
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "console-overview.png"))
    page.goto(f"{base}/console#/jobs/{failed}")
    expect(page.locator("pre.traceback")).to_contain_text("card declined")
    page.screenshot(path=str(shots / "console-job.png"), full_page=True)

    # A cancel from the page cancels a running job
    running = publish(base, "test.block", {"key": "never"})
    wait_for(lambda: job_status(base, running) == "started")
    page.goto(f"{base}/console#/jobs/{running}")
    page.get_by_role("button", name="Cancel job").click()
    wait_for(lambda: job_status(base, running) == "canceled", timeout=20)
    expect(page.locator(".actions .badge")).to_have_text("canceled")

    # The job search finds the failed job by its error text in the history
    page.goto(f"{base}/console#/jobs?error=DECLINED")
    expect(page.locator("main tbody")).to_contain_text(failed)
    assert re.search(dead, page.locator("main tbody").inner_text()) is None

    assert watched.errors == []


def test_read_only_key_sees_pages_and_is_refused_actions(
    services: ServiceProcess, browser: Browser
) -> None:
    base = services.url
    queued = publish(base, "test.block", {"key": "never"})
    watched = Watched(browser, base)
    page = watched.login(READ_KEY)
    expect(page.locator("#role")).to_have_text("read-only key")
    for hash_ in ("#/overview", "#/dead", "#/workers", f"#/jobs/{queued}"):
        page.goto(f"{base}/console{hash_}")
        expect(page.locator("main h1")).to_be_visible()
    assert watched.errors == []
    # The cancel button is there but disabled; the request itself is refused
    expect(page.get_by_role("button", name="Cancel job")).to_be_disabled()
    answer = page.evaluate(
        """async (id) => {
            const session = await (await fetch("/console/api/session")).json();
            const r = await fetch(`/jobs/${id}/cancel`,
                {method: "POST", headers: {"X-CSRF-Token": session.csrf}});
            return [r.status, (await r.json()).error.code];
        }""",
        queued,
    )
    assert answer == [403, "read_only_key"]
    assert job_status(base, queued) in ("queued", "started")


def test_an_action_without_its_csrf_token_is_refused(
    services: ServiceProcess, browser: Browser
) -> None:
    base = services.url
    queued = publish(base, "test.block", {"key": "never"})
    page = Watched(browser, base).login(KEY)
    script = """async ([id, token]) => {
        const headers = token === null ? {} : {"X-CSRF-Token": token};
        const r = await fetch(`/jobs/${id}/cancel`, {method: "POST", headers});
        return [r.status, (await r.json()).error?.code ?? null];
    }"""
    assert page.evaluate(script, [queued, None]) == [403, "csrf_failed"]
    assert page.evaluate(script, [queued, "forged"]) == [403, "csrf_failed"]
    assert job_status(base, queued) in ("queued", "started")
    token = page.evaluate("async () => (await (await fetch('/console/api/session')).json()).csrf")
    assert page.evaluate(script, [queued, token])[0] in (200, 202)
