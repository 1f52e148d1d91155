"""Requests that reach inside (issue 14.6): a hostile provider on loopback hands out links to
another loopback service, directly, by redirect, scheme-relative, by a name that resolves to
127.0.0.1; a webhook caller names a loopback or link-local callback. None of them is fetched or
posted to, and each is reported as the other side's fault. Hosts an admin configured (the
backend's URL, ``VIDEOBOT_ALLOWED_HOSTS``) still work.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from adapters.webhook import WebhookNotifier, job_routes
from bot import outbound
from bot.backends.http import HttpBackend
from bot.errors import BackendError
from bot.outbound import BlockedDestination, OutboundPolicy
from tests.fakes.provider import FakeProvider, Reply, video_bytes
from tests.fakes.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.timeout(60)


class Inside:
    """A loopback service the bot must never reach (a Redis, a metadata endpoint, an admin UI)."""

    def __init__(self) -> None:
        self.hits = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> Inside:
        async def secret(request: web.Request) -> web.Response:
            self.hits += 1
            return web.Response(body=video_bytes(1000), content_type="video/mp4")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", secret)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def inside() -> AsyncIterator[Inside]:
    service = await Inside().start()
    yield service
    await service.stop()


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as fake:
        yield fake


@pytest.fixture
async def backend(provider: FakeProvider) -> AsyncIterator[HttpBackend]:
    made = HttpBackend(provider.base_url, "sk-key", timeout_s=2.0, max_retries=0, backoff_base_s=0.01)
    yield made
    await made.aclose()


async def _map_names(host: str, port: int) -> list[str]:
    """A resolver hook: names a hostile DNS would answer with inside addresses."""
    table = {
        "evil.example": ["127.0.0.1"],
        "rebind.example": ["93.184.216.34", "127.0.0.1"],  # one public, one loopback
        "metadata.example": ["169.254.169.254"],
        "lan.example": ["192.168.1.20"],
        "v6.example": ["::1"],
        "mapped.example": ["::ffff:127.0.0.1"],
        "cdn.example": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
    }
    if host in table:
        return table[host]
    raise socket.gaierror(socket.EAI_NONAME, "unknown name")


async def _fetch_from(backend: HttpBackend, provider: FakeProvider, video_url: str, tmp_path: Path) -> BackendError:
    provider.queue("poll", Reply(json={"status": "succeeded", "output": {"video_url": video_url}}))
    with pytest.raises(BackendError) as caught:
        state = await backend.poll("task-1")
        await backend.fetch(state, tmp_path / "clip.mp4", 10_000_000)
    assert not (tmp_path / "clip.mp4").exists()
    return caught.value


@pytest.mark.parametrize(
    "link",
    [
        "http://127.0.0.1:{inside}/secret",  # directly
        "//127.0.0.1:{inside}/secret",  # scheme-relative: resolved against the provider's URL
        "http://localhost:{inside}/secret",  # a name that resolves to loopback
        "http://evil.example:{inside}/secret",  # a name mapped to 127.0.0.1 by the resolver hook
        "http://rebind.example:{inside}/secret",  # one of its addresses is loopback
        "http://[::1]:{inside}/secret",
        "http://mapped.example:{inside}/secret",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.example/latest/meta-data/",
        "http://lan.example:{inside}/x",
        "http://10.0.0.1:{inside}/x",
        "http://2130706433:{inside}/x",  # 127.0.0.1 written as one number
        "file:///etc/passwd",
        "ftp://127.0.0.1:{inside}/x",
    ],
)
async def test_a_provider_link_to_an_inside_address_is_not_followed(
    link: str, provider: FakeProvider, backend: HttpBackend, inside: Inside, tmp_path: Path
) -> None:
    outbound.configure(resolver=_map_names)
    error = await _fetch_from(backend, provider, link.format(inside=inside.port), tmp_path)
    assert inside.hits == 0
    assert str(error).startswith("The video service sent") and not error.retryable


async def test_a_redirect_to_an_inside_address_is_refused_at_the_hop(
    provider: FakeProvider, backend: HttpBackend, inside: Inside, tmp_path: Path
) -> None:
    provider.serve_video(1000)
    provider.queue("video", Reply(302, headers={"Location": f"http://localhost:{inside.port}/secret"}))
    error = await _fetch_from(backend, provider, "/files/clip.mp4", tmp_path)
    assert inside.hits == 0 and len(provider.requests_to("video")) == 1
    assert "will not follow" in str(error)


async def test_a_redirect_loop_and_a_bad_encoding_are_the_providers_fault(
    provider: FakeProvider, backend: HttpBackend, tmp_path: Path
) -> None:
    loop = Reply(302, headers={"Location": "/files/clip.mp4"})
    provider.queue("video", *[loop] * 30)
    error = await _fetch_from(backend, provider, "/files/clip.mp4", tmp_path)
    assert str(error) == "The video service sent a link that redirects too many times."

    garbled = Reply(body=b"not gzip at all" * 100, content_type="video/mp4", headers={"Content-Encoding": "gzip"})
    provider.queue("video", garbled)
    error = await _fetch_from(backend, provider, "/files/clip.mp4", tmp_path)
    assert str(error) == "The video service sent a body that cannot be decoded."

    provider.queue("poll", Reply(json={"status": "succeeded", "output": {"video_url": "http://[::1"}}))
    with pytest.raises(BackendError, match="a video link we cannot follow"):
        await backend.poll("task-1")


async def test_the_backends_own_host_and_listed_hosts_are_reached(
    provider: FakeProvider, backend: HttpBackend, inside: Inside, tmp_path: Path
) -> None:
    provider.serve_video(2000)
    provider.queue("poll", Reply(json={"status": "succeeded", "output": {"video_url": "/files/clip.mp4"}}))
    await backend.fetch(await backend.poll("task-1"), tmp_path / "own.mp4", 10_000)
    assert (tmp_path / "own.mp4").stat().st_size == 2000  # a worker on loopback/LAN: its own URL

    outbound.allow(f"127.0.0.1:{inside.port}")  # VIDEOBOT_ALLOWED_HOSTS=127.0.0.1:<port>
    provider.queue("poll", Reply(json={"status": "succeeded", "output": {"video_url": f"http://127.0.0.1:{inside.port}/v"}}))
    await backend.fetch(await backend.poll("task-1"), tmp_path / "listed.mp4", 10_000)
    assert inside.hits == 1


async def test_every_address_a_name_resolves_to_must_be_public() -> None:
    outbound.configure(resolver=_map_names)
    policy = OutboundPolicy()
    assert await policy.check(httpx.URL("https://cdn.example/v.mp4")) == "93.184.216.34"
    assert await policy.check(httpx.URL("https://93.184.216.34/v.mp4")) == "93.184.216.34"
    for url in ("http://rebind.example/", "http://evil.example/", "http://nowhere.example/", "http://0.0.0.0/",
                "http://100.64.0.1/", "http://[fe80::1]/", "http://224.0.0.1/", "gopher://cdn.example/"):
        with pytest.raises(BlockedDestination):
            await policy.check(httpx.URL(url))
    outbound.configure(["lan.example", "10.0.0.5:8900"], resolver=_map_names)
    assert await policy.check(httpx.URL("http://lan.example:1234/")) is None  # any port of a listed host
    assert await policy.check(httpx.URL("http://10.0.0.5:8900/v1")) is None
    with pytest.raises(BlockedDestination):
        await policy.check(httpx.URL("http://10.0.0.5:6379/"))  # only the listed port


async def test_a_public_name_is_connected_at_the_address_that_was_checked() -> None:
    """DNS rebinding: the guard connects to the address it checked, keeping the name for Host."""
    outbound.configure(resolver=_map_names)
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"ok")

    client = outbound.guarded_client(transport=httpx.MockTransport(record))
    async with client:
        await client.get("https://cdn.example/v.mp4")
    [sent] = seen
    assert sent.url.host == "93.184.216.34" and sent.headers["Host"] == "cdn.example"
    assert sent.extensions["sni_hostname"] == "cdn.example"


# -- callbacks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "callback",
    [
        "http://127.0.0.1:{port}/hook",
        "http://localhost:{port}/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://192.168.0.10/hook",
        "http://[::1]:{port}/hook",
    ],
)
async def test_the_job_api_refuses_a_callback_to_an_inside_address(
    callback: str, make_core, tmp_path: Path
) -> None:
    folder = tmp_path / "received"
    folder.mkdir()
    receiver = await WebhookReceiver(folder).start()  # on loopback, but nobody listed it
    try:
        core = await make_core(start=False)
        port = await core.serve_ops("127.0.0.1", 0, job_routes(core.service, "api-key-123456"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            answer = await client.post(
                "/v1/jobs",
                json={"prompt": "a fox", "callback_url": callback.format(port=receiver.port)},
                headers={"Authorization": "Bearer api-key-123456"},
            )
        assert answer.status_code == 400 and answer.json()["error"].startswith("callback_url is refused")
        assert receiver.events == [] and receiver.delivery_posts == 0
    finally:
        await receiver.stop()


async def test_the_notifier_itself_never_posts_inside(inside: Inside) -> None:
    """Even a job stored before the check (or a name that changed since) is not posted to."""
    from storage.tables import Job

    notifier = WebhookNotifier()
    job = Job(id=1, prompt="x", platform="webhook", workspace_id="w", channel_id="c", user_id="u",
              origin_extra={"callback_url": f"http://localhost:{inside.port}/hook"})
    with pytest.raises(BlockedDestination):
        await notifier.fail(job, "nope")
    await notifier.aclose()
    assert inside.hits == 0


async def test_a_listed_lan_receiver_gets_its_events(receiver: WebhookReceiver) -> None:
    """The ``receiver`` fixture is listed as VIDEOBOT_ALLOWED_HOSTS would list it."""
    from storage.tables import Job

    notifier = WebhookNotifier()
    job = Job(id=7, prompt="x", platform="webhook", workspace_id="w", channel_id="c", user_id="u",
              origin_extra={"callback_url": receiver.url})
    await notifier.fail(job, "it broke")
    await notifier.aclose()
    assert receiver.for_job(7) == [{"job_id": 7, "event": "failed", "message": "it broke"}]


def test_allowed_hosts_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.settings import Settings

    monkeypatch.setenv("VIDEOBOT_ALLOWED_HOSTS", " hooks.lan , 10.0.0.5:8900,")
    assert Settings.from_env(dotenv=False).allowed_hosts == ("hooks.lan", "10.0.0.5:8900")


async def test_requests_through_an_environment_proxy_are_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY still applies (corporate networks), and the guard sits in front of it."""
    asked: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked.append(await reader.readline())
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    client = outbound.guarded_client()
    try:
        async with client:
            with pytest.raises(BlockedDestination):
                await client.get("https://localhost/secret")
            assert asked == []
            with pytest.raises(httpx.HTTPError):  # a public address goes to the proxy, unpinned
                await client.get("https://93.184.216.34/")
            assert asked == [b"CONNECT 93.184.216.34:443 HTTP/1.1\r\n"]
    finally:
        server.close()
