"""The admin page's guard: nothing without a session, cookie flags, CSRF, the token kept out of
pages, URLs and logs, prompts shown as text. A real core and its ops server on loopback."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.admin import AdminSite
from adapters.admin._sessions import COOKIE
from bot.app import Core
from bot.grammar import parse_request
from storage.tables import JobState
from tests.conftest import subprocess_env, webhook_origin
from tests.fakes.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.timeout(60)

TOKEN = "adm-Zq8rT3kP9vW2xY7-secret"
DELAY_S = 0.3


class Admin:
    def __init__(self, core: Core, base: str, receiver: WebhookReceiver) -> None:
        self.core = core
        self.base = base
        self.receiver = receiver

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, follow_redirects=False, timeout=10)

    async def sign_in(self, client: httpx.AsyncClient) -> str:
        """Give ``client`` a session; returns its CSRF token (read from a page's form)."""
        answer = await client.post("/admin/login", data={"token": TOKEN})
        assert answer.status_code == 303 and answer.headers["location"] == "/admin"
        page = (await client.get("/admin")).text
        csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        return csrf

    async def job(self, prompt: str = "a heron in the reeds [sim:hang]", user: str = "alice") -> int:
        job = await self.core.service.submit(parse_request(prompt), webhook_origin(self.receiver, user))
        return job.id or 0


@pytest.fixture
async def admin(make_core: Any, receiver: WebhookReceiver) -> AsyncIterator[Admin]:
    core: Core = await make_core()
    site = AdminSite(core, TOKEN, wrong_token_delay_s=DELAY_S)
    port = await core.serve_ops("127.0.0.1", 0, site.routes())
    yield Admin(core, f"http://127.0.0.1:{port}", receiver)


async def test_nothing_is_served_without_a_session(admin: Admin) -> None:
    job_id = await admin.job()
    paths = [
        "/admin", "/admin/", "/admin/live/queue", "/admin/jobs", f"/admin/jobs/{job_id}",
        f"/admin/jobs/{job_id}/thumb.jpg", f"/admin/jobs/{job_id}/clip.mp4", f"/admin/jobs/{job_id}/image",
        "/admin/usage", "/admin/usage.csv", "/admin/limits", "/admin/static/admin.css", "/admin/static/htmx.min.js",
    ]
    async with admin.client() as client:
        for path in paths:
            answer = await client.get(path)
            assert (answer.status_code, answer.headers.get("location")) == (303, "/admin/login"), path
            assert "heron" not in answer.text and "htmx" not in answer.text
        live = await client.get("/admin/live/queue", headers={"HX-Request": "true"})
        assert live.status_code == 401 and live.headers["HX-Redirect"] == "/admin/login"
        for action in ("cancel", "retry"):
            answer = await client.post(f"/admin/jobs/{job_id}/{action}", data={"csrf": "x"})
            assert answer.status_code == 303 and answer.headers["location"] == "/admin/login"
        # a made-up cookie is no session either
        client.cookies.set(COOKIE, "not-a-session", domain="127.0.0.1", path="/admin")
        assert (await client.get("/admin/jobs")).status_code == 303
    assert (await admin.core.service.status(job_id)).state != JobState.CANCELED.value


async def test_the_session_cookie_is_httponly_strict_and_expires(admin: Admin) -> None:
    async with admin.client() as client:
        plain = await client.post("/admin/login", data={"token": TOKEN})
        flags = [part.strip().lower() for part in plain.headers["set-cookie"].split(";")]
        assert "httponly" in flags and "samesite=strict" in flags and "path=/admin" in flags
        assert any(f.startswith("max-age=") and 0 < int(f.split("=")[1]) <= 24 * 3600 for f in flags)
        assert "secure" not in flags  # served over plain http here
        proxied = await client.post("/admin/login", data={"token": TOKEN}, headers={"X-Forwarded-Proto": "https"})
        assert "secure" in [p.strip().lower() for p in proxied.headers["set-cookie"].split(";")]
        assert TOKEN not in plain.headers["set-cookie"] and TOKEN not in plain.headers["location"]


async def test_a_wrong_token_waits_and_says_so(admin: Admin) -> None:
    async with admin.client() as client:
        started = time.monotonic()
        answer = await client.post("/admin/login", data={"token": TOKEN + "x"})
        assert time.monotonic() - started >= DELAY_S
        assert answer.status_code == 401 and "That token is wrong." in answer.text
        assert "set-cookie" not in answer.headers
        assert TOKEN not in answer.text


async def test_a_change_without_the_csrf_token_is_refused(admin: Admin) -> None:
    job_id = await admin.job()
    async with admin.client() as client:
        csrf = await admin.sign_in(client)
        for data in ({}, {"csrf": ""}, {"csrf": csrf[:-2] + "xx"}):
            answer = await client.post(f"/admin/jobs/{job_id}/cancel", data=data)
            assert answer.status_code == 403, data
        assert (await admin.core.service.status(job_id)).job_state.terminal is False
        answer = await client.post(f"/admin/jobs/{job_id}/cancel", data={"csrf": csrf})
        assert answer.status_code == 303 and answer.headers["location"].startswith(f"/admin/jobs/{job_id}?")
        assert (await admin.core.service.status(job_id)).state == JobState.CANCELED.value
        # sign out needs it too, then the session is gone
        assert (await client.post("/admin/logout", data={})).status_code == 403
        assert (await client.post("/admin/logout", data={"csrf": csrf})).status_code == 303
        assert (await client.get("/admin")).status_code == 303


async def test_a_script_in_a_prompt_is_shown_as_text(admin: Admin) -> None:
    job_id = await admin.job('<script>alert("x")</script><img src=x onerror=alert(1)> [sim:hang]')
    async with admin.client() as client:
        await admin.sign_in(client)
        for path in (f"/admin/jobs/{job_id}", "/admin/jobs", "/admin", "/admin/live/queue"):
            page = await client.get(path)
            assert page.status_code == 200
            assert "<script>alert" not in page.text and "<img src=x" not in page.text, path
            assert "&lt;script&gt;alert(" in page.text, path
            assert "script-src 'self'" in page.headers["content-security-policy"]


async def test_the_token_never_reaches_a_page_or_a_log(admin: Admin, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await admin.job()
    async with admin.client() as client:
        await admin.sign_in(client)
        await client.post("/admin/login", data={"token": "wrong-" + TOKEN})
        for path in ("/admin", "/admin/jobs", "/admin/usage", "/admin/usage.csv", "/admin/limits", "/admin/login"):
            answer = await client.get(path)
            assert TOKEN not in answer.text and TOKEN not in str(answer.url)
    assert TOKEN not in caplog.text
    assert "Admin sign-in refused" in caplog.text


async def test_media_outside_the_media_folder_is_never_served(admin: Admin, tmp_path: Path) -> None:
    job_id = await admin.job()
    secret = tmp_path / "elsewhere.mp4"
    secret.write_bytes(b"not for the admin page")
    db = admin.core.service.db
    await db.run(db.repo.update, job_id, output_path=str(secret), image_path="/etc/passwd")
    async with admin.client() as client:
        await admin.sign_in(client)
        for path in ("clip.mp4", "thumb.jpg", "image"):
            assert (await client.get(f"/admin/jobs/{job_id}/{path}")).status_code == 404
        assert (await client.get("/admin/static/..%2Fadmin.css")).status_code == 404


def test_without_a_token_the_page_is_off_and_the_banner_says_how(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = subprocess_env(tmp_path, VIDEOBOT_HTTP_PORT=str(port), VIDEOBOT_HTTP_HOST="127.0.0.1", COLUMNS="200")
    process = subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "videobot is running" in line:
                break
        banner = "".join(lines)
        assert "Admin page: off (set VIDEOBOT_ADMIN_TOKEN" in banner, banner
        assert httpx.get(f"http://127.0.0.1:{port}/admin").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=20)
