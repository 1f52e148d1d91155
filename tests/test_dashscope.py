"""The DashScope backend over real HTTP against a fake of Alibaba Model Studio's video API
(``tests.fakes.dashscope``): request shapes, retries, refusals, cancel, whole jobs through
``videobot generate``, Slack and a kill -9 of ``videobot serve``."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import av
import httpx
import pytest
from PIL import Image

from bot.backends.dashscope import DashScopeBackend
from bot.errors import BackendError, ConfigurationError
from bot.media import probe
from bot.models import GenerationSpec, TaskStatus
from bot.settings import Settings
from tests.conftest import subprocess_env, this_database
from tests.fakes.dashscope import KEY, FakeDashScope, Reply, throttled

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeDashScope]:
    async with FakeDashScope(tmp_path / "oss") as server:
        yield server


@pytest.fixture
async def backend(fake: FakeDashScope) -> AsyncIterator[DashScopeBackend]:
    made = DashScopeBackend(fake.base_url, KEY, backoff_base_s=0.01, backoff_max_s=2.0)
    yield made
    await made.aclose()


def t2v(prompt: str = "a red fox running through fresh snow", **overrides: object) -> GenerationSpec:
    values: dict[str, object] = {"prompt": prompt, "width": 1280, "height": 720, "duration_s": 5, "fps": 24, "seed": 7,
                                     "model": "wan2.6-t2v", "audio": True}
    values.update(overrides)
    return GenerationSpec(**values)  # type: ignore[arg-type]


def photo(width: int, height: int, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(out, format=fmt, quality=92)
    return out.getvalue()


async def finish(backend: DashScopeBackend, task_id: str) -> object:
    for _ in range(20):
        state = await backend.poll(task_id)
        if state.done:
            return state
    raise AssertionError("the task never finished")


def has_audio(path: Path) -> bool:
    with av.open(str(path)) as container:
        return bool(container.streams.audio)


# -- request shapes ---------------------------------------------------------------------------


async def test_text_to_video_sends_size_with_an_asterisk_and_the_documented_fields(
    fake: FakeDashScope, backend: DashScopeBackend, tmp_path: Path
) -> None:
    task_id = await backend.submit(t2v(negative_prompt="blurry", audio=False))

    [sent] = fake.requests_to("t2v")
    assert sent.path == "/api/v1/services/aigc/video-generation/video-synthesis"
    assert sent.headers["X-DashScope-Async"] == "enable" and sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.json == {
        "model": "wan2.6-t2v",
        "input": {"prompt": "a red fox running through fresh snow", "negative_prompt": "blurry"},
        "parameters": {"duration": 5, "size": "1280*720", "prompt_extend": True, "watermark": False, "seed": 7,
                       "audio": False},
    }
    states = [await backend.poll(task_id) for _ in range(3)]
    assert [s.status for s in states] == [TaskStatus.RUNNING, TaskStatus.SUCCEEDED, TaskStatus.SUCCEEDED]
    assert fake.requests_to("poll")[0].path == f"/api/v1/tasks/{task_id}"
    clip = await backend.fetch(states[-1], tmp_path / "fox.mp4", 10_000_000)
    assert "Authorization" not in fake.requests_to("video")[0].headers  # the signed OSS link needs no key
    info = probe(clip)
    assert info.duration_s == pytest.approx(5, abs=0.2) and not has_audio(clip)  # audio: false -> silent


async def test_image_to_video_fits_a_6000x4000_photo_into_a_data_uri_and_sends_a_resolution_tier(
    fake: FakeDashScope, backend: DashScopeBackend, tmp_path: Path
) -> None:
    big = photo(6000, 4000)
    spec = t2v("the sea slowly moving", width=1920, height=1080, image=big, image_mime="image/jpeg",
               model="wan2.6-i2v")
    task_id = await backend.submit(spec)

    [sent] = fake.requests_to("i2v")
    assert sent.path == "/api/v1/services/aigc/video-generation/video-synthesis"
    parameters, inputs = sent.json["parameters"], sent.json["input"]
    assert sent.json["model"] == "wan2.6-i2v" and "size" not in parameters
    assert parameters["resolution"] == "1080P" and parameters["audio"] is True
    header, encoded = inputs["img_url"].split(",", 1)
    assert header == "data:image/jpeg;base64"
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as received:
        assert received.size == (2000, 1333)
    assert fake.images == [(2000, 1333, len(base64.b64decode(encoded)), "image/jpeg")]
    state = await finish(backend, task_id)
    clip = probe(await backend.fetch(state, tmp_path / "sea.mp4", 10_000_000))  # type: ignore[arg-type]
    assert clip.width / clip.height == pytest.approx(1.5, abs=0.05)  # the clip follows the photo's shape


async def test_a_small_png_frame_is_scaled_up_to_the_360_px_minimum(fake: FakeDashScope, backend: DashScopeBackend) -> None:
    await backend.submit(t2v(image=photo(160, 90, "PNG"), image_mime="image/png", model="wan2.6-i2v"))
    [(width, height, _, mime)] = fake.images
    assert (width, height, mime) == (640, 360, "image/png")


async def test_an_image_too_long_and_thin_for_dashscope_is_refused_before_sending(
    fake: FakeDashScope, backend: DashScopeBackend
) -> None:
    with pytest.raises(BackendError, match="too long and thin"):
        await backend.submit(t2v(image=photo(1280, 200), image_mime="image/jpeg", model="wan2.6-i2v"))
    assert fake.requests == []


async def test_wan25_takes_only_5_or_10_seconds_and_the_refusal_is_the_providers(fake: FakeDashScope) -> None:
    backend = DashScopeBackend(fake.base_url, KEY, t2v_model="wan2.5-t2v-preview", i2v_model="wan2.5-i2v-preview")
    try:
        with pytest.raises(BackendError) as refused:
            await backend.submit(t2v(duration_s=7, model="wan2.5-t2v-preview"))
        assert not refused.value.retryable
        assert str(refused.value).startswith("The video service refused the request: The duration parameter is invalid")
        assert "5 or 10 s" in str(refused.value)
        assert await backend.submit(t2v(duration_s=10, model="wan2.5-t2v-preview"))
        assert backend.label == "wan2.5 (DashScope)" and backend.max_segment_s == 10
    finally:
        await backend.aclose()


async def test_first_and_last_frame_models_use_the_image2video_path(fake: FakeDashScope) -> None:
    backend = DashScopeBackend(fake.base_url, KEY, i2v_model="wan2.2-kf2v-flash")
    try:
        await backend.submit(t2v(image=photo(800, 600), image_mime="image/jpeg", model="wan2.2-kf2v-flash",
                                 width=1280, height=720))
    finally:
        await backend.aclose()
    [sent] = fake.requests_to("kf2v")
    assert sent.path == "/api/v1/services/aigc/image2video/video-synthesis"
    assert sent.json["input"]["first_frame_url"].startswith("data:image/jpeg;base64,")
    assert sent.json["parameters"]["resolution"] == "720P" and "audio" not in sent.json["parameters"]


def test_from_settings_uses_the_defaults_and_refuses_a_missing_key_or_a_wrong_mode() -> None:
    made = DashScopeBackend.from_settings(Settings(dashscope_api_key="sk-abc"), name="wan", max_concurrency=None)
    assert made.name == "wan" and made.label == "wan2.6 (DashScope)" and made.max_concurrency == 2
    assert [m.name for m in made.models.values()] == ["wan2.6-t2v", "wan2.6-i2v"] and made.max_segment_s == 15
    assert "dashscope-intl.aliyuncs.com" in repr(made) and "sk-abc" not in repr(made)
    with pytest.raises(ConfigurationError, match="DASHSCOPE_API_KEY"):
        DashScopeBackend.from_settings(Settings())
    with pytest.raises(ConfigurationError, match="VIDEOBOT_T2V_MODEL"):
        DashScopeBackend.from_settings(Settings(dashscope_api_key="sk-abc"), t2v_model="wan2.6-i2v")


# -- reliability and refusals -------------------------------------------------------------------


async def test_429_on_submit_and_on_poll_are_retried_after_retry_after(
    fake: FakeDashScope, backend: DashScopeBackend
) -> None:
    fake.queue("t2v", throttled("0.4"))
    task_id = await backend.submit(t2v())
    fake.queue("poll", throttled("0.3"), throttled("0.3"))
    state = await finish(backend, task_id)

    assert state.status is TaskStatus.SUCCEEDED  # type: ignore[attr-defined]
    first, second = fake.requests_to("t2v")
    assert second.at - first.at >= 0.4
    polls = fake.requests_to("poll")
    assert polls[1].at - polls[0].at >= 0.3 and polls[2].at - polls[1].at >= 0.3
    assert sum(fake.submits.values()) == 1


async def test_a_content_check_refusal_says_so(fake: FakeDashScope, backend: DashScopeBackend) -> None:
    with pytest.raises(BackendError, match="the provider's content check refused this prompt"):
        await backend.submit(t2v("a forbidden scene"))
    fake.fail_next("DataInspectionFailed", "Output data may contain inappropriate content.")
    state = await finish(backend, await backend.submit(t2v()))
    assert state.status is TaskStatus.FAILED  # type: ignore[attr-defined]
    assert "the provider's content check refused this prompt" in (state.error or "")  # type: ignore[attr-defined]


async def test_a_rejected_key_is_logged_for_the_admin_and_the_person_hears_misconfigured(
    fake: FakeDashScope, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-wrong-region-key-9876543210"
    backend = DashScopeBackend(fake.base_url, wrong)
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(BackendError) as refused:
            await backend.submit(t2v())
    finally:
        await backend.aclose()
    assert "misconfigured" in str(refused.value) and wrong not in str(refused.value)
    [admin] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    text = admin.getMessage()
    assert "DASHSCOPE_API_KEY" in text and "InvalidApiKey" in text
    assert "dashscope-intl.aliyuncs.com" in text and "dashscope-us.aliyuncs.com" in text and "Beijing" in text
    assert wrong not in caplog.text


async def test_cancel_reaches_the_provider_and_a_running_task_is_left_alone(
    fake: FakeDashScope, backend: DashScopeBackend
) -> None:
    pending = await backend.submit(t2v())
    await backend.cancel(pending)
    assert fake.tasks[pending].status == "CANCELED"
    assert (await backend.poll(pending)).error == "the task was canceled"

    running = await backend.submit(t2v())
    await backend.poll(running)
    await backend.cancel(running)  # DashScope refuses (not PENDING); no error reaches the caller
    assert [r.path for r in fake.requests_to("cancel")] == [f"/api/v1/tasks/{pending}/cancel", f"/api/v1/tasks/{running}/cancel"]
    assert fake.tasks[running].status == "RUNNING"


async def test_canceling_a_job_reaches_the_providers_cancel(make_core, fake: FakeDashScope) -> None:  # type: ignore[no-untyped-def]
    from bot.models import Origin, VideoRequest

    fake.busy = True
    core = await make_core(backend=DashScopeBackend(fake.base_url, KEY), poll_interval_s=0.1)
    alice = Origin(platform="webhook", workspace_id="w", channel_id="c", user_id="alice",
                   extra={"callback_url": "http://127.0.0.1:9/hook"})
    job = await core.service.submit(VideoRequest("a paper boat on a pond", duration_s=3), alice)
    deadline = time.monotonic() + 10
    while not (job := await core.service.status(job.id or 0)).task_id:
        assert time.monotonic() < deadline, job.state
        await asyncio.sleep(0.05)

    canceled = await core.service.cancel(job.id or 0, alice)
    for _ in range(100):
        if fake.requests_to("cancel"):
            break
        await asyncio.sleep(0.05)
    assert canceled.state == "canceled"
    [sent] = fake.requests_to("cancel")
    assert sent.path == f"/api/v1/tasks/{job.task_id}/cancel" and sent.headers["Authorization"] == f"Bearer {KEY}"
    assert fake.tasks[job.task_id or ""].status == "CANCELED"


async def test_an_expired_download_link_is_explained(tmp_path: Path) -> None:
    async with FakeDashScope(tmp_path / "oss", url_ttl_s=-1) as fake:
        backend = DashScopeBackend(fake.base_url, KEY)
        try:
            state = await finish(backend, await backend.submit(t2v()))
            with pytest.raises(BackendError, match="download link had expired"):
                await backend.fetch(state, tmp_path / "late.mp4", 10_000_000)  # type: ignore[arg-type]
        finally:
            await backend.aclose()


# -- whole jobs through `videobot generate` -----------------------------------------------------

ENV_KEY = "sk-4f1e0c9d2b7a48e6a1c3d5e7f9b0a2c4"


def _env(tmp_path: Path, fake: FakeDashScope, **extra: str) -> dict[str, str]:
    return subprocess_env(tmp_path, VIDEOBOT_LOG_LEVEL="INFO", COLUMNS="160", VIDEOBOT_BACKEND="dashscope",
                          DASHSCOPE_HTTP_BASE_URL=fake.base_url, DASHSCOPE_API_KEY=fake.key,
                          VIDEOBOT_ALLOWED_HOSTS=fake.cdn_host, **extra)


async def videobot(tmp_path: Path, env: dict[str, str], *args: str, timeout: float = 50) -> tuple[int, str]:
    """Run `python -m bot ARGS` without blocking the loop the fake serves on; returns (rc, output)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode or 0, output.decode()


@pytest.fixture
async def keyed_fake(tmp_path: Path) -> AsyncIterator[FakeDashScope]:
    async with FakeDashScope(tmp_path / "oss", key=ENV_KEY) as server:
        yield server


async def test_generate_text_to_video_through_dashscope_despite_429s(tmp_path: Path, keyed_fake: FakeDashScope) -> None:
    keyed_fake.queue("t2v", throttled("0.5"))
    keyed_fake.queue("poll", throttled("0.5"))
    rc, output = await videobot(tmp_path, _env(tmp_path, keyed_fake), "generate", "a red fox running through fresh snow",
                                "--duration", "5", "--resolution", "1280x720", "--seed", "7", "--output", "fox.mp4")
    assert rc == 0, output
    sent = keyed_fake.requests_to("t2v")[-1]
    assert sent.json["parameters"] | {"prompt_extend": None} == {
        "duration": 5, "size": "1280*720", "seed": 7, "audio": True, "watermark": False, "prompt_extend": None}
    clip = tmp_path / "fox.mp4"
    assert probe(clip).duration_s == pytest.approx(5, abs=0.2) and has_audio(clip)
    assert "wan2.6 (DashScope)" in output and "Wrote fox.mp4" in output
    assert keyed_fake.submits == {"a red fox running through fresh snow": 1}
    throttled_submit, submit = keyed_fake.requests_to("t2v")
    throttled_poll, poll = keyed_fake.requests_to("poll")[:2]
    assert submit.at - throttled_submit.at >= 0.5 and poll.at - throttled_poll.at >= 0.5  # Retry-After honoured
    assert ENV_KEY not in output and ENV_KEY not in _stored(tmp_path)


async def test_generate_image_to_video_from_a_phone_photo(tmp_path: Path, keyed_fake: FakeDashScope) -> None:
    (tmp_path / "phone.jpg").write_bytes(photo(6000, 4000))
    rc, output = await videobot(tmp_path, _env(tmp_path, keyed_fake), "generate", "the sea slowly moving",
                                "--image", "phone.jpg", "--duration", "4", "--output", "sea.mp4")
    assert rc == 0, output
    [sent] = keyed_fake.requests_to("i2v")
    assert sent.json["model"] == "wan2.6-i2v" and sent.json["parameters"]["resolution"] == "720P"
    [(width, height, size, mime)] = keyed_fake.images
    assert 360 <= min(width, height) and max(width, height) <= 2000 and size <= 10 * 2**20 and mime == "image/jpeg"
    assert width / height == pytest.approx(1.5, abs=0.01)
    info = probe(tmp_path / "sea.mp4")
    assert info.duration_s == pytest.approx(4, abs=0.2) and info.width / info.height == pytest.approx(1.5, abs=0.05)


@pytest.mark.timeout(90)
async def test_a_twenty_second_clip_is_stitched_from_two_segments_and_keeps_its_sound(
    tmp_path: Path, keyed_fake: FakeDashScope
) -> None:
    (tmp_path / "videobot.toml").write_text("[defaults]\nmax_duration_s = 20\n")
    rc, output = await videobot(tmp_path, _env(tmp_path, keyed_fake), "generate", "a long train journey",
                                "--duration", "20", "--output", "train.mp4", timeout=80)
    assert rc == 0, output
    first, second = keyed_fake.requests_to("t2v") + keyed_fake.requests_to("i2v")
    assert first.json["model"] == "wan2.6-t2v" and first.json["parameters"]["duration"] == 10
    assert second.json["model"] == "wan2.6-i2v" and second.json["parameters"]["duration"] == 10
    assert second.json["input"]["img_url"].startswith("data:image/png;base64,")  # the first segment's last frame
    clip = tmp_path / "train.mp4"
    assert probe(clip).duration_s == pytest.approx(20, abs=0.3)
    assert has_audio(clip), "the stitched clip lost the sound the model made"


async def test_a_refused_parameter_fails_the_job_with_the_providers_words_and_is_not_counted(
    tmp_path: Path, keyed_fake: FakeDashScope
) -> None:
    env = _env(tmp_path, keyed_fake, VIDEOBOT_T2V_MODEL="wan2.5-t2v-preview", VIDEOBOT_I2V_MODEL="wan2.5-i2v-preview")
    keyed_fake.queue("t2v", Reply(400, {"code": "InvalidParameter", "message": "The size parameter is invalid: '1280*720'",
                                        "request_id": "7f1c"}))
    rc, output = await videobot(tmp_path, env, "generate", "a quiet harbour", "--duration", "5", "--output", "h.mp4")
    assert rc == 1 and "The video service refused the request: The size parameter is invalid" in output, output
    assert "Traceback" not in output and not (tmp_path / "h.mp4").exists()
    rc, usage = await videobot(tmp_path, env, "usage")
    assert rc == 0 and "spend (USD)" in usage and "cli" not in usage, usage  # nothing counted for anyone
    rc, jobs = await videobot(tmp_path, env | {"COLUMNS": "200"}, "jobs")
    assert rc == 0 and "failed" in jobs and "a quiet harbour" in jobs, jobs


async def test_a_failed_task_tells_the_person_why(tmp_path: Path, keyed_fake: FakeDashScope) -> None:
    keyed_fake.fail_next("InternalError.Algo", "The algorithm ran out of memory; please retry later.")
    rc, output = await videobot(tmp_path, _env(tmp_path, keyed_fake), "generate", "a storm at sea", "--output", "s.mp4")
    text = " ".join(output.split())
    assert rc == 1 and "could not make this video: The algorithm ran out of memory" in text, output
    assert "failed" in text and keyed_fake.submits == {"a storm at sea": 1}
    rc, usage = await videobot(tmp_path, _env(tmp_path, keyed_fake), "usage")
    assert rc == 0 and "cli" not in usage, usage  # a failed job is not counted


async def test_a_wrong_key_says_misconfigured_and_logs_for_the_admin_without_the_key(
    tmp_path: Path, keyed_fake: FakeDashScope
) -> None:
    wrong = "sk-0000aaaa1111bbbb2222cccc3333dddd"
    env = _env(tmp_path, keyed_fake) | {"DASHSCOPE_API_KEY": wrong}
    rc, output = await videobot(tmp_path, env, "generate", "a lighthouse at dusk", "--output", "l.mp4")
    text = " ".join(output.split())
    assert rc == 1 and "misconfigured" in text, output
    assert "DASHSCOPE_API_KEY" in text and "dashscope-us.aliyuncs.com" in text
    assert wrong not in output and wrong not in _stored(tmp_path)


def _stored(tmp_path: Path) -> str:
    """Everything the bot wrote to its data folder (database included), as text."""
    return "".join(p.read_bytes().decode("latin-1") for p in (tmp_path / "data").rglob("*") if p.is_file())


# -- Slack --------------------------------------------------------------------------------------


async def test_a_slack_command_gets_a_dashscope_clip_in_its_thread(tmp_path: Path, fake: FakeDashScope) -> None:
    from contextlib import AsyncExitStack

    import aiohttp

    from adapters.slack import build_adapter
    from bot.app import Core
    from storage.tables import JobState
    from tests.fakes.slack_api import BOT_TOKEN, SIGNING_SECRET, FakeSlack
    from tests.test_slack_e2e import LIMITS, SlackBot

    slack_api = await FakeSlack().start()
    (tmp_path / "videobot.toml").write_text(LIMITS)
    settings = Settings(
        backend="dashscope", dashscope_api_key=KEY, dashscope_base_url=fake.base_url,
        data_dir=tmp_path / "data", database_url=this_database(), limits_path=tmp_path / "videobot.toml",
        poll_interval_s=0.1, progress_interval_s=0.1, http_host="127.0.0.1", http_port=0, slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SIGNING_SECRET, slack_port=0, slack_api_url=slack_api.api_url,
    )
    async with AsyncExitStack() as stack:
        stack.push_async_callback(slack_api.stop)
        core = await Core.create(settings)
        stack.push_async_callback(core.stop)
        adapter = build_adapter(settings, core.service)
        await core.start()
        await adapter.start()
        stack.push_async_callback(adapter.stop)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        slack = SlackBot(slack_api, core, adapter, http)

        answer = await slack.command("a heron taking off from a misty lake --duration 3")
        assert answer.status == 200 and answer.seconds < 3
        [job] = await slack.wait_jobs(1)
        job = await slack.finished(job.id or 0)

        assert job.job_state is JobState.SUCCEEDED, job.error
        [complete] = slack_api.calls_to("files.completeUploadExternal")
        assert complete.params["thread_ts"] == job.status_ref
        assert "wan2.6 (DashScope)" in complete.params["initial_comment"]
        clip = tmp_path / "posted.mp4"
        clip.write_bytes(slack_api.files[job.delivered_ref or ""].content)
        assert probe(clip).duration_s == pytest.approx(3, abs=0.2) and has_audio(clip)
        assert fake.submits == {"a heron taking off from a misty lake": 1}
        assert fake.requests_to("t2v")[0].json["parameters"]["size"] == "1280*720"

        await slack.command("a quiet snowfall --duration 2 --silent")
        [_, silent] = await slack.wait_jobs(2)
        silent = await slack.finished(silent.id or 0)
        assert silent.job_state is JobState.SUCCEEDED, silent.error
        assert fake.requests_to("t2v")[1].json["parameters"]["audio"] is False
        clip.write_bytes(slack_api.files[silent.delivered_ref or ""].content)
        assert not has_audio(clip)


# -- kill -9 of a real `videobot serve` ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(90)
async def test_kill_9_mid_task_then_restart_polls_the_stored_task_and_never_resubmits(
    tmp_path: Path, keyed_fake: FakeDashScope
) -> None:
    from tests.fakes.webhook_receiver import WebhookReceiver

    api_key, port = "vb-test-key-0123456789", _free_port()
    url = f"http://127.0.0.1:{port}"
    env = _env(tmp_path, keyed_fake, VIDEOBOT_API_KEY=api_key, VIDEOBOT_HTTP_PORT=str(port),
               VIDEOBOT_PROGRESS_INTERVAL="0.5")
    env["VIDEOBOT_ALLOWED_HOSTS"] = "127.0.0.1"  # the OSS stand-in and the webhook receiver, on loopback
    log = tmp_path / "serve.log"
    auth = {"Authorization": f"Bearer {api_key}"}

    async def serve() -> asyncio.subprocess.Process:
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "serve", stdout=out, stderr=out, env=env)
        async with httpx.AsyncClient() as client:
            for _ in range(400):
                try:
                    if (await client.get(f"{url}/healthz")).status_code == 200:
                        return process
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"serve did not start:\n{log.read_text()}")

    async def state(job_id: int) -> str:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{url}/v1/jobs/{job_id}", headers=auth)).json()["state"]

    receiver = await WebhookReceiver(tmp_path).start()
    keyed_fake.hold = True
    process = await serve()
    try:
        async with httpx.AsyncClient() as client:
            answer = await client.post(f"{url}/v1/jobs", headers=auth, json={
                "prompt": "a lake at dawn --duration 2", "callback_url": receiver.url, "user_id": "u1"})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job_id"]
        deadline = time.monotonic() + 30
        while await state(job_id) != "running":
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.05)
        [task_id] = keyed_fake.tasks
        process.send_signal(signal.SIGKILL)
        await process.wait()
        polls_before = len(keyed_fake.requests_to("poll"))

        keyed_fake.hold = False
        process = await serve()
        await receiver.wait_for(job_id, "delivered", timeout=40)

        assert keyed_fake.submits == {"a lake at dawn": 1}, "the task was submitted again"
        after = keyed_fake.requests_to("poll")[polls_before:]
        assert after and {r.path for r in after} == {f"/api/v1/tasks/{task_id}"}
        [delivered] = receiver.deliveries.values()
        assert probe(delivered.path).duration_s == pytest.approx(2, abs=0.2)
        assert "resuming from" in log.read_text() and ENV_KEY not in log.read_text()
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()
        await receiver.stop()
