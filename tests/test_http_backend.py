"""HttpBackend against a fake provider over real loopback HTTP: what it sends, how it reads the
answers, how it downloads, how it rides out a flaky service, and that our API key never leaks."""

from __future__ import annotations

import base64
import logging
import socket
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot import outbound
from bot.backends.base import Backend
from bot.backends.http import HttpBackend
from bot.errors import BackendError
from bot.models import GenerationSpec, Quality, TaskState, TaskStatus
from tests.fakes.provider import FakeProvider, Reply, video_bytes

KEY = "sk-test-SECRET123"
BUSY = "The video service is busy (HTTP 429) — try again in a minute."
NOT_RESPONDING = "The video service is not responding."
BAD_KEY = "The video service rejected our API key (check WAN_API_KEY)."

MakeBackend = Callable[..., HttpBackend]


def a_spec(**changes: Any) -> GenerationSpec:
    spec = GenerationSpec(prompt="a fox in the snow", width=1280, height=720, duration_s=5, fps=16, seed=7)
    return replace(spec, **changes)


def closed_port() -> int:
    """A loopback port nothing listens on, so connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(autouse=True)
def key_never_logged(caplog: pytest.LogCaptureFixture) -> Any:
    """Every test runs with all loggers (ours, httpx, httpcore) at DEBUG; none may show the key."""
    caplog.set_level(logging.DEBUG)
    yield
    formatter = logging.Formatter()
    records = caplog.get_records("setup") + caplog.get_records("call") + caplog.records
    assert records
    for record in records:
        assert KEY not in formatter.format(record), record.name


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as fake:
        yield fake


@pytest.fixture
async def cdn() -> AsyncIterator[FakeProvider]:
    """A second server on another port: another origin, like a provider's CDN. It is on
    loopback, so the admin lists it as an allowed host (VIDEOBOT_ALLOWED_HOSTS)."""
    async with FakeProvider() as fake:
        outbound.allow(httpx.URL(fake.base_url).netloc.decode())
        yield fake


@pytest.fixture
async def make_backend(provider: FakeProvider) -> AsyncIterator[MakeBackend]:
    """Backends pointed at the fake with tiny backoff, closed after the test."""
    made: list[HttpBackend] = []

    def make(base_url: str | None = None, **options: Any) -> HttpBackend:
        settings = {"timeout_s": 2.0, "max_retries": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05}
        backend = HttpBackend(base_url or provider.base_url, KEY, **(settings | options))
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()


# --- what we send ----------------------------------------------------------------------------


async def test_text_to_video_request_matches_the_guide(
    provider: FakeProvider, make_backend: MakeBackend
) -> None:
    backend = make_backend()
    assert isinstance(backend, Backend)

    task_id = await backend.submit(a_spec(negative_prompt="blurry"))

    assert task_id == "task-1"
    [sent] = provider.requests
    assert (sent.method, sent.path) == ("POST", "/v1/video/generations")
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.json == {
        "model": "wan-2.6",
        "prompt": "a fox in the snow",
        "negative_prompt": "blurry",
        "parameters": {"duration": 5, "resolution": "1280x720", "fps": 16, "seed": 7},
    }


async def test_high_quality_asks_for_50_steps_and_guidance_7_5_unless_the_spec_says_otherwise(
    provider: FakeProvider, make_backend: MakeBackend
) -> None:
    backend = make_backend(model="wan-2.6-pro")

    await backend.submit(a_spec(quality=Quality.HIGH, fps=24, width=720, height=1280))
    await backend.submit(a_spec(quality=Quality.HIGH, guidance_scale=5.0))

    first, second = (r.json for r in provider.requests_to("t2v"))
    assert first == {
        "model": "wan-2.6-pro",
        "prompt": "a fox in the snow",
        "parameters": {
            "duration": 5,
            "resolution": "720x1280",
            "fps": 24,
            "seed": 7,
            "guidance_scale": 7.5,
            "num_inference_steps": 50,
        },
    }
    assert second["parameters"]["guidance_scale"] == 5.0
    assert second["parameters"]["num_inference_steps"] == 50


async def test_image_to_video_sends_the_image_as_a_data_uri(
    provider: FakeProvider, make_backend: MakeBackend
) -> None:
    image = b"\x89PNG\r\n\x1a\n" + bytes(range(200))

    task_id = await make_backend().submit(
        a_spec(prompt="the fox turns its head", image=image, image_mime="image/png", motion_strength=0.7)
    )

    assert task_id == "task-1"
    [sent] = provider.requests
    assert (sent.method, sent.path) == ("POST", "/v1/video/image-to-video")
    assert sent.json == {
        "model": "wan-2.6",
        "prompt": "the fox turns its head",
        "image": "data:image/png;base64," + base64.b64encode(image).decode(),
        "parameters": {
            "duration": 5,
            "resolution": "1280x720",
            "fps": 16,
            "seed": 7,
            "motion_strength": 0.7,
        },
    }


async def test_image_without_a_type_is_refused_before_anything_is_sent(
    provider: FakeProvider, make_backend: MakeBackend
) -> None:
    with pytest.raises(BackendError, match="no known type") as caught:
        await make_backend().submit(a_spec(image=b"\x89PNG", image_mime=None))

    assert not caught.value.retryable
    assert provider.requests == []


# --- how we read the answers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("queued", TaskStatus.QUEUED),
        ("pending", TaskStatus.QUEUED),
        ("submitted", TaskStatus.QUEUED),
        ("running", TaskStatus.RUNNING),
        ("processing", TaskStatus.RUNNING),
        ("in_progress", TaskStatus.RUNNING),
        ("succeeded", TaskStatus.SUCCEEDED),
        ("success", TaskStatus.SUCCEEDED),
        ("completed", TaskStatus.SUCCEEDED),
        ("SUCCEEDED", TaskStatus.SUCCEEDED),
        ("failed", TaskStatus.FAILED),
        ("error", TaskStatus.FAILED),
        ("canceled", TaskStatus.FAILED),
    ],
)
async def test_poll_maps_the_providers_status_words(
    provider: FakeProvider, make_backend: MakeBackend, word: str, expected: TaskStatus
) -> None:
    provider.queue("poll", Reply(json={"status": word, "output": {"video_url": "/files/clip.mp4"}}))

    state = await make_backend().poll("task-9")

    assert state.status is expected
    [sent] = provider.requests
    assert (sent.method, sent.path) == ("GET", "/v1/video/generations/task-9")
    assert sent.headers["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(
    ("reported", "fraction"), [(0.25, 0.25), (40, 0.4), (100, 1.0), (None, 0.0), ("half", 0.0)]
)
async def test_poll_reads_progress_as_a_fraction_or_a_percentage(
    provider: FakeProvider, make_backend: MakeBackend, reported: object, fraction: float
) -> None:
    provider.queue("poll", Reply(json={"status": "running", "progress": reported}))

    state = await make_backend().poll("task-1")

    assert state.status is TaskStatus.RUNNING
    assert state.progress == pytest.approx(fraction)


async def test_finished_task_gives_a_complete_state_with_an_absolute_video_url(
    provider: FakeProvider, make_backend: MakeBackend
) -> None:
    provider.queue(
        "poll",
        Reply(json={"status": "succeeded", "progress": 99, "output": {"video_url": "/files/clip.mp4"}}),
        Reply(json={"status": "succeeded", "output": {"video_url": "https://cdn.example/x.mp4?sig=1"}}),
    )
    backend = make_backend()

    relative, absolute = await backend.poll("task-1"), await backend.poll("task-1")

    assert relative == TaskState(TaskStatus.SUCCEEDED, 1.0, video_url=f"{provider.origin}/files/clip.mp4")
    assert relative.done
    assert absolute.video_url == "https://cdn.example/x.mp4?sig=1"


@pytest.mark.parametrize(
    "answer",
    [
        {"status": "failed", "error": {"code": "E42", "message": "content policy"}},
        {"status": "failed", "error": "content policy"},
        {"status": "FAILED", "message": "content policy"},
    ],
)
async def test_failed_task_carries_the_providers_reason(
    provider: FakeProvider, make_backend: MakeBackend, answer: dict[str, Any]
) -> None:
    provider.queue("poll", Reply(json=answer))

    state = await make_backend().poll("task-1")

    assert (state.status, state.error, state.done) == (TaskStatus.FAILED, "content policy", True)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"status": "paused"}, "status we do not understand: paused"),
        ({"progress": 10}, r"status we do not understand: \(none\)"),
        ({"status": "succeeded", "output": {}}, "finished the task but sent no video URL"),
    ],
)
async def test_poll_answers_we_cannot_act_on_are_errors(
    provider: FakeProvider, make_backend: MakeBackend, answer: dict[str, Any], message: str
) -> None:
    provider.queue("poll", Reply(json=answer))

    with pytest.raises(BackendError, match=message):
        await make_backend().poll("task-1")


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply(body=b"<html>Welcome to nginx</html>", content_type="text/html"), "cannot read"),
        (Reply(json=["task-1"]), "cannot read"),
        (Reply(json={"id": "task-1"}), "sent no task id"),
    ],
)
async def test_garbage_answers_are_clear_errors(
    provider: FakeProvider, make_backend: MakeBackend, reply: Reply, message: str
) -> None:
    provider.queue("t2v", reply)

    with pytest.raises(BackendError, match=message) as caught:
        await make_backend().submit(a_spec())

    assert not caught.value.retryable
    assert len(provider.requests) == 1


# --- downloading -------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["content-length", "chunked"])
async def test_fetch_writes_the_whole_video_and_nothing_else(
    provider: FakeProvider, make_backend: MakeBackend, tmp_path: Path, stream: bool
) -> None:
    url = provider.serve_video(300_000, stream=stream)
    dest = tmp_path / "clips" / "job-1.mp4"

    saved = await make_backend().fetch(TaskState(TaskStatus.SUCCEEDED, 1.0, video_url=url), dest, 300_000)

    assert saved == dest
    assert dest.read_bytes() == video_bytes(300_000)
    assert list(dest.parent.iterdir()) == [dest]


async def test_fetch_refuses_an_oversized_content_length_before_reading_the_body(
    provider: FakeProvider, make_backend: MakeBackend, tmp_path: Path
) -> None:
    # Headers promise 10 MB, then the body never comes: only a client that trusts the header
    # and stops at once finishes before its 5 s read timeout.
    provider.queue("video", Reply(stream=True, declared_length=10_000_000, stall=True))
    state = TaskState(TaskStatus.SUCCEEDED, 1.0, video_url=f"{provider.origin}/files/clip.mp4")
    started = time.monotonic()

    with pytest.raises(BackendError, match=r"larger than the 1\.0 MiB download limit") as caught:
        await make_backend(timeout_s=5.0).fetch(state, tmp_path / "job.mp4", 2**20)

    assert time.monotonic() - started < 1.0
    assert not caught.value.retryable
    assert list(tmp_path.iterdir()) == []


async def test_fetch_stops_as_soon_as_a_stream_without_length_passes_the_limit(
    provider: FakeProvider, make_backend: MakeBackend, tmp_path: Path
) -> None:
    # 200 kB arrive and the stream stays open: waiting for its end would hit the read timeout.
    provider.queue("video", Reply(body=video_bytes(200_000), stream=True, stall=True))
    state = TaskState(TaskStatus.SUCCEEDED, 1.0, video_url=f"{provider.origin}/files/clip.mp4")
    started = time.monotonic()

    with pytest.raises(BackendError, match="larger than the 100000 bytes download limit") as caught:
        await make_backend(timeout_s=5.0).fetch(state, tmp_path / "job.mp4", 100_000)

    assert time.monotonic() - started < 1.0
    assert not caught.value.retryable
    assert list(tmp_path.iterdir()) == []


async def test_fetch_of_a_state_without_video_url_is_an_error(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    with pytest.raises(BackendError, match="no video to download"):
        await make_backend().fetch(TaskState(TaskStatus.SUCCEEDED, 1.0), tmp_path / "job.mp4", 1000)


async def test_api_key_goes_to_the_api_origin_only_never_to_another_host_or_port(
    provider: FakeProvider, cdn: FakeProvider, make_backend: MakeBackend, tmp_path: Path
) -> None:
    backend = make_backend()
    own_url = provider.serve_video(1000)
    cdn_url = cdn.serve_video(2000)
    provider.queue("video", Reply(status=302, headers={"Location": cdn_url}))

    redirected = await backend.fetch(
        TaskState(TaskStatus.SUCCEEDED, 1.0, video_url=own_url), tmp_path / "a.mp4", 5000
    )
    direct = await backend.fetch(
        TaskState(TaskStatus.SUCCEEDED, 1.0, video_url=cdn_url), tmp_path / "b.mp4", 5000
    )
    own = await backend.fetch(
        TaskState(TaskStatus.SUCCEEDED, 1.0, video_url=own_url), tmp_path / "c.mp4", 5000
    )

    assert redirected.read_bytes() == direct.read_bytes() == video_bytes(2000)
    assert own.read_bytes() == video_bytes(1000)
    to_own = provider.requests_to("video")
    assert [r.headers.get("Authorization") for r in to_own] == [f"Bearer {KEY}"] * 2
    to_cdn = cdn.requests_to("video")
    assert len(to_cdn) == 2
    assert all("Authorization" not in r.headers for r in to_cdn)


# --- riding out a flaky service --------------------------------------------------------------


async def test_rate_limit_waits_as_long_as_retry_after_asks(
    provider: FakeProvider, make_backend: MakeBackend
) -> None:
    provider.queue("t2v", Reply(429, json={"error": "slow down"}, headers={"Retry-After": "0.3"}))

    task_id = await make_backend(backoff_max_s=5.0).submit(a_spec())

    assert task_id == "task-1"
    first, second = provider.requests_to("t2v")
    assert 0.3 <= second.at - first.at < 0.6


async def test_retry_after_as_an_http_date_is_capped_by_backoff_max(
    provider: FakeProvider, make_backend: MakeBackend
) -> None:
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    provider.queue("poll", Reply(503, headers={"Retry-After": in_a_minute}))

    state = await make_backend(backoff_max_s=0.3).poll("task-1")

    assert state.status is TaskStatus.QUEUED
    first, second = provider.requests_to("poll")
    assert 0.3 <= second.at - first.at < 0.6


async def test_server_errors_are_retried_until_the_service_answers(
    provider: FakeProvider, make_backend: MakeBackend
) -> None:
    provider.queue("t2v", Reply(500), Reply(502, body=b"Bad Gateway", content_type="text/html"), Reply(503))

    task_id = await make_backend(max_retries=3).submit(a_spec())

    assert task_id == "task-1"
    assert len(provider.requests_to("t2v")) == 4


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (429, BUSY),
        (503, "The video service is having trouble (HTTP 503) — try again in a few minutes."),
    ],
)
async def test_exhausted_retries_give_a_retryable_error_written_for_people(
    provider: FakeProvider, make_backend: MakeBackend, status: int, message: str
) -> None:
    provider.queue("t2v", *[Reply(status, headers={"Retry-After": "0"})] * 3)

    with pytest.raises(BackendError) as caught:
        await make_backend(max_retries=2).submit(a_spec())

    assert str(caught.value) == message
    assert (caught.value.retryable, caught.value.status_code) == (True, status)
    assert len(provider.requests_to("t2v")) == 3


async def test_a_hanging_service_times_out_and_the_retry_succeeds(
    provider: FakeProvider, make_backend: MakeBackend
) -> None:
    provider.queue("t2v", Reply(hang=True))

    task_id = await make_backend(timeout_s=0.3).submit(a_spec())

    assert task_id == "task-1"
    assert len(provider.requests_to("t2v")) == 2


async def test_a_service_that_never_answers_gives_a_clear_retryable_error(
    provider: FakeProvider, make_backend: MakeBackend
) -> None:
    provider.queue("poll", Reply(hang=True), Reply(hang=True))
    started = time.monotonic()

    with pytest.raises(BackendError) as caught:
        await make_backend(timeout_s=0.3, max_retries=1).poll("task-1")

    assert time.monotonic() - started >= 0.6
    assert str(caught.value) == NOT_RESPONDING
    assert caught.value.retryable
    assert len(provider.requests_to("poll")) == 2


async def test_an_unreachable_service_is_not_responding(make_backend: MakeBackend) -> None:
    with pytest.raises(BackendError) as caught:
        await make_backend(f"http://127.0.0.1:{closed_port()}/v1", max_retries=1).submit(a_spec())

    assert str(caught.value) == NOT_RESPONDING
    assert caught.value.retryable


@pytest.mark.parametrize(
    "answer",
    [
        {"error": {"code": "invalid_parameter", "message": "duration must be between 1 and 10"}},
        {"error": "duration must be between 1 and 10"},
        {"message": "duration must be between 1 and 10"},
    ],
)
async def test_a_refused_request_names_the_providers_reason_and_is_not_retried(
    provider: FakeProvider, make_backend: MakeBackend, answer: dict[str, Any]
) -> None:
    provider.queue("t2v", Reply(400, json=answer))

    with pytest.raises(BackendError) as caught:
        await make_backend().submit(a_spec(duration_s=30))

    assert str(caught.value) == "The video service refused the request: duration must be between 1 and 10"
    assert (caught.value.retryable, caught.value.status_code) == (False, 400)
    assert len(provider.requests) == 1


async def test_a_refusal_without_a_readable_reason_names_the_status(
    provider: FakeProvider, make_backend: MakeBackend
) -> None:
    provider.queue("poll", Reply(404, body=b"Not Found", content_type="text/plain"))

    with pytest.raises(BackendError) as caught:
        await make_backend().poll("task-gone")

    assert str(caught.value) == "The video service refused the request (HTTP 404)."
    assert not caught.value.retryable


@pytest.mark.parametrize("status", [401, 403])
async def test_a_rejected_key_tells_the_admin_what_to_check(
    provider: FakeProvider, make_backend: MakeBackend, status: int
) -> None:
    provider.queue("t2v", Reply(status, json={"error": {"message": "Invalid API key"}}))

    with pytest.raises(BackendError) as caught:
        await make_backend().submit(a_spec())

    assert str(caught.value) == BAD_KEY
    assert (caught.value.retryable, caught.value.status_code) == (False, status)
    assert len(provider.requests) == 1


# --- cancel ------------------------------------------------------------------------------------


async def test_cancel_asks_the_provider_to_stop_the_task(
    provider: FakeProvider, make_backend: MakeBackend
) -> None:
    await make_backend().cancel("task-3")

    [sent] = provider.requests
    assert (sent.method, sent.path) == ("POST", "/v1/video/generations/task-3/cancel")
    assert sent.headers["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("status", [404, 405, 500])
async def test_cancel_is_best_effort_and_swallows_refusals_without_retrying(
    provider: FakeProvider, make_backend: MakeBackend, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    provider.queue("cancel", Reply(status, json={"error": "nope"}))

    await make_backend().cancel("task-3")

    assert len(provider.requests) == 1
    assert f"cancel POST /v1/video/generations/task-3/cancel -> HTTP {status}" in caplog.messages


async def test_cancel_of_an_unreachable_service_does_not_raise(make_backend: MakeBackend) -> None:
    await make_backend(f"http://127.0.0.1:{closed_port()}/v1").cancel("task-3")


# --- secret hygiene ----------------------------------------------------------------------------


async def test_api_key_appears_in_no_error_repr_or_log_record(
    provider: FakeProvider, make_backend: MakeBackend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A provider that echoes the rejected credential back must not get it shown in chat.
    echo = f"invalid key {KEY}"
    provider.queue(
        "t2v",
        Reply(400, json={"error": {"message": echo}}),
        Reply(401, json={"error": echo}),
        *[Reply(429, json={"error": echo}, headers={"Retry-After": "0"})] * 2,
        *[Reply(500, body=echo.encode(), content_type="text/plain")] * 2,
        Reply(hang=True),
        Reply(hang=True),
        Reply(body=echo.encode(), content_type="text/plain"),
    )
    provider.queue("poll", Reply(json={"status": "failed", "error": {"message": echo}}))
    provider.queue("video", Reply(body=video_bytes(5000)))
    backend = make_backend(timeout_s=0.3, max_retries=1)
    unreachable = make_backend(f"http://127.0.0.1:{closed_port()}/v1", max_retries=1)
    state = TaskState(TaskStatus.SUCCEEDED, 1.0, video_url=f"{provider.origin}/files/clip.mp4")
    attempts = [
        backend.submit(a_spec()),  # 400 echoing the key
        backend.submit(a_spec()),  # 401
        backend.submit(a_spec()),  # 429 twice
        backend.submit(a_spec()),  # 500 twice
        backend.submit(a_spec()),  # hangs twice
        backend.submit(a_spec()),  # garbage
        unreachable.submit(a_spec()),
        backend.fetch(state, tmp_path / "job.mp4", 1000),
    ]

    errors: list[BackendError] = []
    for attempt in attempts:
        with pytest.raises(BackendError) as caught:
            await attempt
        errors.append(caught.value)
    failed = await backend.poll("task-1")

    assert str(errors[0]) == "The video service refused the request: invalid key ***"
    assert failed.error == "invalid key ***"
    for error in errors:
        assert KEY not in "".join(traceback.format_exception(error)) + repr(error)
    assert KEY not in repr(backend) + str(backend)
    assert "HttpBackend(name='http', model='wan-2.6'" in repr(backend)
    # The autouse fixture checks every record; make sure the libraries' DEBUG logs were there.
    assert {"httpx", "httpcore.http11", "bot.backends._client"} <= {r.name for r in caplog.records}
    assert len(provider.requests_to("t2v")) == 9
