"""The admin page in real headless Chromium against a real `videobot serve` (simulator backend).

Jobs are made through the webhook job API, so their chat thread is a webhook receiver on
loopback that records every event. One server, one receiver and one browser per module.
Chromium comes from Debian's ``chromium`` package (/usr/bin/chromium), driven by Playwright.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import playwright.sync_api as playwright_sync  # the test extra; Chromium itself is Debian's
import pytest

from tests.conftest import subprocess_env
from tests.fakes.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.timeout(120), pytest.mark.xdist_group("admin-browser")]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TOKEN = "adm-browser-7f3Kq9Lm2Xv8Rt4-secret"
API_KEY = "api-browser-key-5521"
LIMITS = """\
timezone = "Europe/Berlin"

[pricing]
simulator = 0.05

[defaults]
user_concurrent_jobs = 6
user_monthly_budget_usd = 20
workspace_monthly_budget_usd = 100

[workspaces."webhook:studio"]
workspace_monthly_budget_usd = 50
"""
SMALL = "--duration 1 --resolution 832x480"
"""Quick to render on a CI machine's CPU."""
OUTSIDE: list[str] = []
"""Requests the signed-in page made to any other host (there must be none)."""
SCREENSHOTS = os.environ.get("VIDEOBOT_ADMIN_SCREENSHOTS", "")
"""A folder to write each page's screenshot into (docs/admin when refreshing the README's)."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Served:
    base: str
    folder: Path
    env: dict[str, str]
    log: Path
    receiver: WebhookReceiver
    loop: asyncio.AbstractEventLoop

    def make_job(self, prompt: str, user: str, workspace: str = "acme") -> int:
        answer = httpx.post(
            f"{self.base}/v1/jobs",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={"prompt": prompt, "callback_url": self.receiver.url, "user_id": user,
                  "user_name": user.title(), "workspace_id": workspace},
            timeout=10,
        )
        assert answer.status_code == 202, answer.text
        return int(answer.json()["job_id"])

    def state(self, job_id: int) -> dict[str, Any]:
        answer = httpx.get(f"{self.base}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
        return dict(answer.json())

    def wait_state(self, job_id: int, states: set[str], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.state(job_id)
            if seen["state"] in states:
                return seen
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} never reached {states}; it is {self.state(job_id)}")

    def wait_event(self, job_id: int, match: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.receiver.events):
                if event.get("job_id") == job_id and match(event):
                    return event
            time.sleep(0.05)
        raise AssertionError(f"job {job_id}: no such event; saw {self.receiver.for_job(job_id)}")

    def videobot(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "bot", *args], check=False, cwd=self.folder, env=self.env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, module_database_url: str) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("admin")
    (folder / "videobot.toml").write_text(LIMITS)
    (folder / "received").mkdir()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="webhook-receiver", daemon=True)
    thread.start()
    receiver = asyncio.run_coroutine_threadsafe(WebhookReceiver(folder / "received").start(), loop).result(10)
    port = _free_port()
    env = subprocess_env(
        folder, VIDEOBOT_HTTP_PORT=str(port), VIDEOBOT_HTTP_HOST="127.0.0.1", VIDEOBOT_ADMIN_TOKEN=TOKEN,
        VIDEOBOT_API_KEY=API_KEY, VIDEOBOT_PROGRESS_INTERVAL="0.2", VIDEOBOT_LOG_LEVEL="DEBUG", COLUMNS="200",
        VIDEOBOT_ALLOWED_HOSTS=f"127.0.0.1:{receiver.port}",  # the "chat thread" receiver on loopback
        DATABASE_URL=module_database_url,
    )
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    log = folder / "serve.log"
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=folder, env=env, stdout=sink,
                                   stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    yield Served(base, folder, env, log, receiver, loop)
    process.terminate()
    process.wait(timeout=20)
    asyncio.run_coroutine_threadsafe(receiver.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert CHROMIUM.is_file(), "these tests need Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)"
    with playwright_sync.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def _sign_in(page: Any, base: str, token: str = TOKEN) -> None:
    page.goto(f"{base}/admin")
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()


@pytest.fixture(scope="module")
def admin(browser: Any, served: Served) -> Iterator[Any]:
    """A signed-in page that records any request to another host."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("request", lambda r: None if r.url.startswith((served.base, "data:")) else OUTSIDE.append(r.url))
    _sign_in(page, served.base)
    page.wait_for_url(f"{served.base}/admin")
    yield page
    assert OUTSIDE == [], f"the admin page reached other hosts: {OUTSIDE}"
    context.close()


def _shot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def test_sign_in_with_a_wrong_then_the_right_token(browser: Any, served: Served) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{served.base}/admin/jobs")
    assert page.url == f"{served.base}/admin/login"
    field = page.get_by_label("Admin token")
    assert field.get_attribute("type") == "password"
    _shot(page, "login")
    started = time.monotonic()
    field.fill("not-the-token")
    page.get_by_role("button", name="Sign in").click()
    playwright_sync.expect(page.get_by_role("alert")).to_have_text("That token is wrong.")
    assert time.monotonic() - started >= 0.9 and page.url == f"{served.base}/admin/login"
    assert context.cookies() == []
    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{served.base}/admin")
    playwright_sync.expect(page.get_by_role("heading", name="Queue now")).to_be_visible()
    [cookie] = context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
    assert time.time() < cookie["expires"] <= time.time() + 24 * 3600
    assert TOKEN not in page.url and TOKEN not in page.content()
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{served.base}/admin/login")
    page.goto(f"{served.base}/admin")
    assert page.url == f"{served.base}/admin/login"
    context.close()


def test_the_queue_shows_a_running_jobs_progress_change_without_a_reload(admin: Any, served: Served) -> None:
    job_id = served.make_job("a slow dawn over the harbour --duration 1 --resolution 832x480 [sim:slow=5]", "queue-watcher", "studio")
    admin.goto(f"{served.base}/admin")
    admin.evaluate("window.__samePage = true")
    row = admin.locator(f"#active-jobs tr[data-job='{job_id}']")
    playwright_sync.expect(row).to_be_visible(timeout=10_000)
    playwright_sync.expect(row.locator(".badge")).to_have_text("running", timeout=15_000)
    cell = row.locator("td.progress")
    first = int(cell.get_attribute("data-progress") or 0)
    admin.wait_for_function(
        f"""() => {{ const c = document.querySelector("#active-jobs tr[data-job='{job_id}'] td.progress");
                   return c && Number(c.dataset.progress) > {first}; }}""",
        timeout=15_000,
    )
    assert admin.evaluate("window.__samePage") is True  # updated in place, never reloaded
    text = row.inner_text()
    assert "Queue-Watcher" in text and "webhook" in text and "studio" in text and "simulator" in text
    backend = admin.locator(".backend[data-backend='simulator']")
    playwright_sync.expect(backend).to_contain_text("max_parallel")
    _shot(admin, "queue")
    served.wait_state(job_id, {"succeeded"})
    playwright_sync.expect(row).to_have_count(0, timeout=10_000)
    assert OUTSIDE == []


def test_the_job_list_filters_by_user_and_by_state(admin: Any, served: Served) -> None:
    ok = [served.make_job(f"filter clip {n} {SMALL}", "filter-ann") for n in range(2)]
    bad = served.make_job(f"filter clip that fails {SMALL} [sim:fail]", "filter-ann")
    other = served.make_job(f"someone else's clip {SMALL}", "filter-bob")
    for job_id in (*ok, other):
        served.wait_state(job_id, {"succeeded"})
    served.wait_state(bad, {"failed"})
    admin.goto(f"{served.base}/admin/jobs")
    admin.get_by_label("User").fill("filter-ann")
    admin.get_by_role("button", name="Filter").click()
    rows = admin.locator("#job-list tbody tr[data-job]")
    playwright_sync.expect(rows).to_have_count(3)
    assert {rows.nth(i).get_attribute("data-user") for i in range(3)} == {"filter-ann"}
    assert [int(rows.nth(i).get_attribute("data-job") or 0) for i in range(3)] == sorted([*ok, bad], reverse=True)
    admin.get_by_label("State").select_option("failed")
    admin.get_by_role("button", name="Filter").click()
    playwright_sync.expect(rows).to_have_count(1)
    assert rows.first.get_attribute("data-job") == str(bad)
    assert "user=filter-ann" in admin.url and "state=failed" in admin.url
    admin.get_by_label("State").select_option("succeeded")
    admin.get_by_role("button", name="Filter").click()
    playwright_sync.expect(rows).to_have_count(2)
    thumb = rows.first.locator("td.thumb img")
    thumb.scroll_into_view_if_needed()
    admin.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle(), timeout=10_000)
    admin.get_by_label("Text in prompt").fill("someone else")
    admin.get_by_label("User").fill("")
    admin.get_by_role("button", name="Filter").click()
    playwright_sync.expect(rows).to_have_count(1)
    assert rows.first.get_attribute("data-user") == "filter-bob"
    admin.goto(f"{served.base}/admin/jobs")
    _shot(admin, "jobs")


def test_a_job_page_plays_its_clip(admin: Any, served: Served) -> None:
    job_id = served.make_job("a paper boat on a puddle --duration 3", "viewer")
    served.wait_state(job_id, {"succeeded"})
    admin.goto(f"{served.base}/admin/jobs/{job_id}")
    playwright_sync.expect(admin.locator("#prompt")).to_have_text("a paper boat on a puddle")
    admin.wait_for_function("() => document.getElementById('clip').readyState >= 2", timeout=15_000)
    duration = admin.evaluate("document.getElementById('clip').duration")
    assert duration == pytest.approx(3, abs=0.2)
    timeline = admin.locator("#timeline li")
    assert timeline.count() >= 5
    playwright_sync.expect(timeline.last).to_contain_text("succeeded")
    playwright_sync.expect(admin.locator("#delivered")).to_contain_text("msg-")
    playwright_sync.expect(admin.locator("#cost")).to_have_text("$0.15")
    assert admin.get_by_role("button", name="Cancel").count() == 0
    _shot(admin, "job")


def test_cancel_from_the_page_cancels_a_running_job_and_the_thread_says_so(admin: Any, served: Served) -> None:
    job_id = served.make_job("a kettle that never boils [sim:hang]", "canceler")
    served.wait_state(job_id, {"running"})
    admin.goto(f"{served.base}/admin/jobs/{job_id}")
    admin.get_by_role("button", name="Cancel").click()
    playwright_sync.expect(admin.get_by_role("status")).to_have_text(f"Job #{job_id} canceled.")
    playwright_sync.expect(admin.locator("#job-state")).to_have_text("canceled")
    assert served.state(job_id)["state"] == "canceled"
    served.wait_event(job_id, lambda e: e.get("event") == "progress" and e.get("stage") == "canceled")
    playwright_sync.expect(admin.locator("#timeline li").last).to_contain_text("canceled by admin-page")
    # and a canceled job can be run again from the page, into the same thread
    admin.get_by_role("button", name="Retry").click()
    playwright_sync.expect(admin.get_by_role("status")).to_contain_text(f"Retry of job #{job_id} queued as job #")
    again = int(re.search(r"as job #(\d+)", admin.get_by_role("status").inner_text()).group(1))  # type: ignore[union-attr]
    served.wait_event(again, lambda e: e.get("event") == "accepted")
    admin.get_by_role("button", name="Cancel").click()
    playwright_sync.expect(admin.locator("#job-state")).to_have_text("canceled")


def test_a_script_in_a_prompt_stays_text_in_the_browser(admin: Any, served: Served) -> None:
    prompt = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> a cat'
    job_id = served.make_job(f"{prompt} {SMALL} [sim:fail]", "mallory")
    served.wait_state(job_id, {"failed"})
    for path in (f"/admin/jobs/{job_id}", "/admin/jobs?user=mallory"):
        admin.goto(served.base + path)
        assert admin.evaluate("window.__xss") is None, path
    admin.goto(f"{served.base}/admin/jobs/{job_id}")
    playwright_sync.expect(admin.locator("#prompt")).to_have_text(f"{prompt} [sim:fail]")
    assert admin.locator("#prompt script, #prompt img").count() == 0


def _usage_table(stdout: str) -> dict[str, tuple[int, float]]:
    """`videobot usage` rows as {user: (jobs this month, spend)}."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) == 7 and cells[1] == "webhook":
            rows[cells[2]] = (int(cells[4]), float(cells[5]))
    return rows


def test_the_usage_chart_and_csv_agree_with_videobot_usage(admin: Any, served: Served) -> None:
    made = [served.make_job("usage clip --duration 2 --resolution 832x480", "usage-cat", "studio"),
            served.make_job("usage clip --duration 4 --resolution 832x480", "usage-dan", "acme")]
    for job_id in made:
        served.wait_state(job_id, {"succeeded"})
    admin.goto(f"{served.base}/admin/usage")
    with admin.expect_download() as download:
        admin.get_by_role("link", name="Download CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    cli = _usage_table(served.videobot("usage"))
    users = {r["user_name"] or r["user_id"]: (int(r["jobs_month"]), float(r["spend_usd"])) for r in rows if r["scope"] == "user"}
    assert set(users) == set(cli) and {"Usage-Cat", "Usage-Dan"} <= set(users)
    for name, (jobs, spend) in cli.items():
        assert users[name][0] == jobs and users[name][1] == pytest.approx(spend, abs=0.005), name
    assert users["Usage-Cat"] == (1, pytest.approx(0.10)) and users["Usage-Dan"] == (1, pytest.approx(0.20))
    total = sum(spend for _, spend in cli.values())
    bars = admin.locator("#spend-chart rect[data-usd]")
    drawn = sum(float(bars.nth(i).get_attribute("data-usd") or 0) for i in range(bars.count()))
    assert drawn == pytest.approx(total, abs=0.01)
    per_series: dict[str, float] = {}
    for i in range(bars.count()):
        series = bars.nth(i).get_attribute("data-series") or ""
        per_series[series] = per_series.get(series, 0.0) + float(bars.nth(i).get_attribute("data-usd") or 0)
    workspaces = {f"{r['platform']}:{r['workspace']}": float(r["spend_usd"]) for r in rows if r["scope"] == "workspace"}
    assert per_series == pytest.approx(workspaces, abs=0.01)
    studio = admin.locator("#workspace-usage tr[data-workspace='webhook:studio']")
    playwright_sync.expect(studio).to_contain_text("$50.00")  # the workspace's own budget
    playwright_sync.expect(admin.locator("#user-usage tr[data-user='usage-dan']")).to_contain_text("$20.00")
    _shot(admin, "usage")


def test_the_limits_page_shows_the_file_in_force_and_a_refused_edit(admin: Any, served: Served) -> None:
    admin.goto(f"{served.base}/admin/limits")
    playwright_sync.expect(admin.locator("#limits-text")).to_contain_text('timezone = "Europe/Berlin"')
    playwright_sync.expect(admin.locator("#reload-error")).to_have_count(0)
    path = served.folder / "videobot.toml"
    path.write_text(LIMITS + '\n[defaults.oops]\n')  # invalid: refused, the old file stays in force
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            admin.goto(f"{served.base}/admin/limits")
            if admin.locator("#reload-error").count():
                break
            time.sleep(0.3)
        playwright_sync.expect(admin.locator("#reload-error")).to_contain_text("The last edit was refused")
        playwright_sync.expect(admin.locator("#limits-text")).not_to_contain_text("oops")
        _shot(admin, "limits")
    finally:
        path.write_text(LIMITS)


def test_the_pages_fit_a_phone_in_dark_mode(browser: Any, served: Served) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark", is_mobile=True)
    page = context.new_page()
    _sign_in(page, served.base)
    page.wait_for_url(f"{served.base}/admin")
    for path in ("/admin", "/admin/jobs", "/admin/usage"):
        page.goto(served.base + path)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(15, 18, 22)", background
        assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1, path  # tables scroll inside
        _shot(page, "phone-dark-" + (path.rsplit("/", 1)[1] if path != "/admin" else "queue"))
    context.close()


def test_the_token_is_absent_from_the_server_log(served: Served, browser: Any) -> None:
    context = browser.new_context()
    page = context.new_page()
    _sign_in(page, served.base, "wrong-" + TOKEN)
    _sign_in(page, served.base)
    page.wait_for_url(f"{served.base}/admin")
    context.close()
    time.sleep(0.3)
    text = served.log.read_text()
    assert "Admin page: http://localhost:" in text and "Admin sign-in refused" in text
    assert TOKEN not in text
