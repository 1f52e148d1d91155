"""The fal backend against a fake of fal's queue over HTTPS (``tests.fakes.fal``).

The backend is driven directly for the protocol's shapes and faults, then whole jobs run
through `videobot generate` and `videobot serve` subprocesses, the Slack adapter and the core,
with ``FAL_QUEUE_RUN_HOST`` pointing at the fake and ``SSL_CERT_FILE`` at its CA.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import av
import httpx
import pytest
from PIL import Image

from adapters.slack import build_adapter
from bot.app import Core
from bot.backends.fal import FalBackend
from bot.errors import BackendError, ConfigurationError
from bot.grammar import parse_request
from bot.media import probe
from bot.models import GenerationSpec, TaskState, TaskStatus
from bot.settings import Settings
from storage.engine import make_engine
from tests.conftest import stored_at, subprocess_env, this_database, webhook_origin
from tests.fakes.fal import A14B_I2V, A14B_T2V, I2V, KEY, T2V, FakeFal
from tests.fakes.provider import Reply
from tests.fakes.slack_api import BOT_TOKEN, SIGNING_SECRET, FakeSlack
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.test_slack_e2e import LIMITS, SlackBot

pytestmark = pytest.mark.timeout(90)

QUEUE_APP = "/fal-ai/wan-25-preview"


@pytest.fixture
async def fal(tmp_path: Path) -> AsyncIterator[FakeFal]:
    async with FakeFal(tmp_path / "fal", queue_polls=1, progress_polls=1) as fake:
        yield fake


def backend(fake: FakeFal, key: str = KEY, **options: object) -> FalBackend:
    options.setdefault("backoff_base_s", 0.01)
    return FalBackend(key, host=fake.host, ca_file=str(fake.ca_path), **options)  # type: ignore[arg-type]


def spec(prompt: str = "a red fox in fresh snow", **fields: object) -> GenerationSpec:
    values: dict[str, object] = {"prompt": prompt, "width": 1280, "height": 720, "duration_s": 5, "fps": 24, "seed": 7}
    values.update(fields)
    return GenerationSpec(**values)  # type: ignore[arg-type]


async def finish(fal_backend: FalBackend, task_id: str, limit: int = 20) -> list[TaskState]:
    states = []
    for _ in range(limit):
        states.append(await fal_backend.poll(task_id))
        if states[-1].done:
            return states
    raise AssertionError(f"never finished: {states}")


def has_audio(path: Path) -> bool:
    with av.open(str(path)) as container:
        return len(container.streams.audio) > 0


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(out, format="JPEG", quality=60)
    return out.getvalue()


# -- the protocol -------------------------------------------------------------------------------


async def test_text_to_video_submits_polls_the_returned_urls_and_downloads_without_the_key(
    fal: FakeFal, tmp_path: Path
) -> None:
    client = backend(fal)
    try:
        task_id = await client.submit(spec(negative_prompt="blurry"))
        states = await finish(client, task_id)
        clip = await client.fetch(states[-1], tmp_path / "clip.mp4", 10_000_000)
    finally:
        await client.aclose()

    [submit] = fal.requests_to("submit")
    assert submit.path == f"/{T2V}" and submit.headers["Authorization"] == f"Key {KEY}"
    assert submit.json == {"prompt": "a red fox in fresh snow", "seed": 7, "resolution": "720p", "duration": "5",
                           "aspect_ratio": "16:9", "negative_prompt": "blurry"}
    packed = json.loads(task_id)
    assert ", " not in task_id and set(packed) == {"id", "status", "result", "cancel"}
    assert packed["status"] == f"https://{fal.host}{QUEUE_APP}/requests/{packed['id']}/status"
    assert [s.status for s in states] == [TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.SUCCEEDED]
    polls = fal.requests_to("status")
    assert {p.path for p in polls} == {f"{QUEUE_APP}/requests/{packed['id']}/status"}
    assert all(p.query == {"logs": "1"} and p.headers["Authorization"] == f"Key {KEY}" for p in polls)
    [result] = fal.requests_to("result")
    assert result.path == f"{QUEUE_APP}/requests/{packed['id']}"
    [video] = fal.requests_to("video")
    assert states[-1].video_url.startswith(fal.cdn_origin) and "Authorization" not in video.headers
    assert probe(clip).duration_s == pytest.approx(5, abs=0.1) and has_audio(clip)


async def test_the_sub_path_form_of_the_status_url_is_not_fals(fal: FakeFal) -> None:
    async with httpx.AsyncClient(verify=fal.ssl_context()) as http:
        built = await http.get(f"https://{fal.host}/{T2V}/requests/nope/status",
                               headers={"Authorization": f"Key {KEY}"})
    assert built.status_code == 404


async def test_tls_is_verified_against_ssl_cert_file_only(fal: FakeFal, tmp_path: Path) -> None:
    certifi_only = FalBackend(KEY, host=fal.host, max_retries=0)
    try:
        with pytest.raises(BackendError, match="not responding"):
            await certifi_only.submit(spec())
    finally:
        await certifi_only.aclose()
    assert fal.requests_to("submit") == []  # the handshake failed before any request

    settings = Settings(backend="fal", fal_key=KEY, fal_host=fal.host, ssl_cert_file=str(fal.ca_path))
    configured = FalBackend.from_settings(settings, name="fal", max_concurrency=None)
    try:
        assert json.loads(await configured.submit(spec()))["id"]
    finally:
        await configured.aclose()
    assert configured.models[next(iter(configured.models))].name == T2V and configured.max_concurrency == 4

    with pytest.raises(ConfigurationError, match="SSL_CERT_FILE"):
        FalBackend(KEY, host=fal.host, ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigurationError, match="FAL_QUEUE_RUN_HOST"):
        FalBackend(KEY, host="https://queue.fal.run/")
    with pytest.raises(ConfigurationError, match="FAL_KEY"):
        FalBackend.from_settings(Settings(backend="fal"))


async def test_429_on_submit_and_on_status_waits_for_retry_after(fal: FakeFal) -> None:
    fal.queue("submit", Reply(429, json={"detail": "Too many requests"}, headers={"Retry-After": "0.3"}))
    fal.queue("status", Reply(429, json={"detail": "Too many requests"}, headers={"Retry-After": "0.3"}))
    client = backend(fal)
    try:
        task_id = await client.submit(spec())
        states = await finish(client, task_id)
    finally:
        await client.aclose()
    submits, polls = fal.requests_to("submit"), fal.requests_to("status")
    assert len(submits) == 2 and submits[1].at - submits[0].at >= 0.29
    assert polls[1].at - polls[0].at >= 0.29
    assert states[-1].status is TaskStatus.SUCCEEDED and sum(fal.submits.values()) == 1  # the 429 queued nothing


async def test_a_wrong_key_tells_the_person_the_bot_is_misconfigured_and_the_admin_log_names_fal_key(
    fal: FakeFal, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "fal-wrong-key:do-not-log-me"
    client = backend(fal, key=wrong)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(BackendError) as refused:
            await client.submit(spec())
    finally:
        await client.aclose()
    assert "misconfigured" in str(refused.value) and refused.value.status_code == 401
    assert not refused.value.retryable and len(fal.requests_to("submit")) == 1
    assert "FAL_KEY" in caplog.text and wrong not in caplog.text and wrong not in str(refused.value)
    assert wrong not in repr(client)


async def test_a_refused_input_is_named_from_the_422_detail(fal: FakeFal) -> None:
    client = backend(fal)
    try:
        task_id = await client.submit(spec(duration_s=7))
        with pytest.raises(BackendError) as refused:
            await finish(client, task_id)
    finally:
        await client.aclose()
    assert str(refused.value) == "fal.ai refused the request: duration: Input should be '5' or '10'"
    assert refused.value.status_code == 422 and not refused.value.retryable


async def test_a_failed_request_reports_fals_error_and_a_failing_result_is_retried_then_reported(
    fal: FakeFal,
) -> None:
    fal.fail_prompts["[boom]"] = "CUDA out of memory on the runner"
    client = backend(fal, max_retries=1)
    try:
        states = await finish(client, await client.submit(spec("a storm [boom]")))
        assert states[-1].status is TaskStatus.FAILED and states[-1].error == "CUDA out of memory on the runner"
        assert fal.requests_to("result") == []  # the status said it failed; no result was asked for

        task_id = await client.submit(spec("a calm sea"))
        fal.queue("result", Reply(500, json={"detail": "Internal error"}), Reply(500, json={"detail": "Internal error"}))
        with pytest.raises(BackendError, match="HTTP 500") as failing:
            await finish(client, task_id)
    finally:
        await client.aclose()
    assert failing.value.retryable and len(fal.requests_to("result")) == 2


async def test_cancel_reaches_put_cancel_url(fal: FakeFal) -> None:
    fal.queue_polls = 5
    client = backend(fal)
    try:
        task_id = await client.submit(spec())
        assert (await client.poll(task_id)).status is TaskStatus.QUEUED
        await client.cancel(task_id)
        after = await client.poll(task_id)
        await client.cancel("not json at all")  # an unreadable id is swallowed, like any cancel failure
    finally:
        await client.aclose()
    [cancel] = fal.requests_to("cancel")
    assert cancel.method == "PUT" and cancel.path == f"{QUEUE_APP}/requests/{json.loads(task_id)['id']}/cancel"
    assert cancel.headers["Authorization"] == f"Key {KEY}"
    assert after.status is TaskStatus.FAILED and "cancelled" in (after.error or "")


async def test_canceling_a_job_puts_to_the_stored_cancel_url(
    fal: FakeFal, make_core, receiver
) -> None:
    fal.queue_polls = 1000
    core = await make_core("", backend=backend(fal))
    origin = webhook_origin(receiver)
    job = await core.service.submit(parse_request("a paper boat on a pond --duration 5 --resolution 480p"), origin)
    deadline = time.monotonic() + 10
    while not (job := await core.service.status(job.id or 0)).task_id:
        assert time.monotonic() < deadline, job.state
        await asyncio.sleep(0.05)
    canceled = await core.service.cancel(job.id or 0, origin)
    while not fal.requests_to("cancel"):
        assert time.monotonic() < deadline + 10
        await asyncio.sleep(0.05)
    [sent] = fal.requests_to("cancel")
    assert canceled.state == "canceled"
    assert sent.method == "PUT" and f"https://{fal.host}{sent.path}" == json.loads(job.task_id or "")["cancel"]
    assert fal.tasks[json.loads(job.task_id or "")["id"]].canceled


async def test_urls_off_the_queue_host_are_never_followed(fal: FakeFal) -> None:
    elsewhere = "https://collector.example/fal-ai/wan-25-preview/requests/r1"
    fal.queue("submit", Reply(json={"request_id": "r1", "status_url": f"{elsewhere}/status",
                                    "response_url": elsewhere, "cancel_url": f"{elsewhere}/cancel"}))
    client = backend(fal)
    try:
        with pytest.raises(BackendError, match="outside FAL_QUEUE_RUN_HOST"):
            await client.submit(spec())
        stored = json.dumps({"id": "r1", "status": f"http://{fal.host}/x/status", "result": "x", "cancel": "y"})
        with pytest.raises(BackendError, match="outside FAL_QUEUE_RUN_HOST"):
            await client.poll(stored)
    finally:
        await client.aclose()
    assert fal.requests_to("status") == []


async def test_images_are_fitted_to_wans_first_frame_limits(fal: FakeFal) -> None:
    client = backend(fal)
    try:
        big = await client.submit(spec(image=jpeg(6000, 4000), image_mime="image/jpeg"))
        small = await client.submit(spec(image=jpeg(160, 96), image_mime="image/jpeg", duration_s=10))
    finally:
        await client.aclose()
    first, second = (fal.tasks[json.loads(t)["id"]] for t in (big, small))
    assert first.endpoint == second.endpoint == I2V
    assert first.image_size == (2000, 1333) and second.image_size == (600, 360)
    assert first.refusal == second.refusal == []
    body = fal.requests_to("submit")[1].json
    assert "aspect_ratio" not in body and body["duration"] == "10" and body["image_url"].startswith("data:image/jpeg;base64,")


async def test_wan_22_a14b_endpoints_count_frames_instead_of_seconds(fal: FakeFal, tmp_path: Path) -> None:
    client = backend(fal, t2v_model=A14B_T2V, i2v_model=A14B_I2V)
    try:
        states = await finish(client, await client.submit(spec(width=832, height=480, fps=16)))
        clip = await client.fetch(states[-1], tmp_path / "clip.mp4", 10_000_000)
        await client.submit(spec(width=832, height=480, fps=16, image=jpeg(800, 600), image_mime="image/jpeg"))
    finally:
        await client.aclose()
    text, image = fal.requests_to("submit")
    assert text.path == f"/{A14B_T2V}" and text.json == {
        "prompt": "a red fox in fresh snow", "seed": 7, "resolution": "480p", "num_frames": 81,
        "frames_per_second": 16, "aspect_ratio": "16:9"}
    assert image.path == f"/{A14B_I2V}" and image.json["aspect_ratio"] == "auto" and "duration" not in image.json
    assert [t.refusal for t in fal.tasks.values()] == [[], []]
    assert probe(clip).duration_s == pytest.approx(81 / 16, abs=0.1) and not has_audio(clip)
    assert client.label == "wan/v2.2-a14b (fal)" and client.max_segment_s == 5


async def test_an_expired_video_link_is_explained(fal: FakeFal, tmp_path: Path) -> None:
    fal.url_ttl_s = -1
    client = backend(fal)
    try:
        states = await finish(client, await client.submit(spec()))
        with pytest.raises(BackendError, match="link may have expired"):
            await client.fetch(states[-1], tmp_path / "clip.mp4", 10_000_000)
    finally:
        await client.aclose()


# -- whole jobs -------------------------------------------------------------------------------


def fal_env(tmp_path: Path, fake: FakeFal, **extra: str) -> dict[str, str]:
    values = {"VIDEOBOT_BACKEND": "fal", "FAL_KEY": KEY, "FAL_QUEUE_RUN_HOST": fake.host,
              "SSL_CERT_FILE": str(fake.ca_path), "VIDEOBOT_ALLOWED_HOSTS": fake.cdn_host,
              "VIDEOBOT_LOG_LEVEL": "WARNING", "COLUMNS": "120", **extra}
    return subprocess_env(tmp_path, **values)


async def videobot(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 80)
    return process.returncode or 0, out.decode()


async def test_generate_text_to_video_through_fal_despite_429s(fal: FakeFal, tmp_path: Path) -> None:
    busy = Reply(429, json={"detail": "Too many requests"}, headers={"Retry-After": "0.3"})
    fal.queue("submit", busy)
    fal.queue("status", busy)
    code, out = await videobot(tmp_path, fal_env(tmp_path, fal), "generate", "a lighthouse in a storm",
                               "--duration", "5", "--resolution", "480p", "--output", "storm.mp4")
    assert code == 0, out
    throttled, submit = fal.requests_to("submit")
    assert submit.at - throttled.at >= 0.3 and sum(fal.submits.values()) == 1
    statuses = fal.requests_to("status")
    assert len(statuses) >= 2 and statuses[1].at - statuses[0].at >= 0.3
    assert submit.json["resolution"] == "480p" and submit.json["duration"] == "5"
    info = probe(tmp_path / "storm.mp4")
    assert info.duration_s == pytest.approx(5, abs=0.15) and has_audio(tmp_path / "storm.mp4")
    assert KEY not in out


async def test_generate_animates_a_6000x4000_photo_sent_within_limits(fal: FakeFal, tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").write_bytes(jpeg(6000, 4000))
    code, out = await videobot(tmp_path, fal_env(tmp_path, fal), "generate", "the sea slowly moving",
                               "--image", "photo.jpg", "--duration", "5", "--output", "sea.mp4")
    assert code == 0, out
    [task] = fal.tasks.values()
    assert task.endpoint == I2V and task.refusal == []
    assert task.image_size is not None and all(360 <= side <= 2000 for side in task.image_size)
    assert task.image_bytes < 10 * 1024 * 1024
    assert probe(tmp_path / "sea.mp4").duration_s == pytest.approx(5, abs=0.15)


async def test_the_readmes_draft_generator_runs_wan_22_on_fal(fal: FakeFal, tmp_path: Path) -> None:
    (tmp_path / "videobot.toml").write_text(
        '[backends.draft]\ntype = "fal"\nt2v_model = "fal-ai/wan/v2.2-a14b/text-to-video"\n'
        'i2v_model = "fal-ai/wan/v2.2-a14b/image-to-video"\nresolution = "480p"\nprice_per_second = 0.04\n'
    )
    code, out = await videobot(tmp_path, fal_env(tmp_path, fal, VIDEOBOT_BACKEND=""), "generate",
                               "a paper boat on a pond", "--duration", "5", "--output", "boat.mp4")
    assert code == 0, out
    [submit] = fal.requests_to("submit")
    assert submit.path == f"/{A14B_T2V}" and submit.json["num_frames"] == 81 and submit.json["resolution"] == "480p"
    assert probe(tmp_path / "boat.mp4").duration_s == pytest.approx(81 / 16, abs=0.15)


async def test_twenty_seconds_are_ten_plus_ten_stitched_with_sound(fal: FakeFal, tmp_path: Path) -> None:
    (tmp_path / "videobot.toml").write_text("[defaults]\nmax_duration_s = 20\n")
    code, out = await videobot(tmp_path, fal_env(tmp_path, fal), "generate", "a long train journey",
                               "--duration", "20", "--resolution", "480p", "--output", "train.mp4")
    assert code == 0, out
    submits = fal.requests_to("submit")
    assert [s.path for s in submits] == [f"/{T2V}", f"/{I2V}"]  # the second segment starts from a frame
    assert [s.json["duration"] for s in submits] == ["10", "10"]
    info = probe(tmp_path / "train.mp4")
    assert info.duration_s == pytest.approx(20, abs=0.3)
    assert has_audio(tmp_path / "train.mp4"), "the stitched clip lost its sound track"


async def test_silent_sends_no_extra_field_and_the_clip_comes_without_sound(fal: FakeFal, make_core, receiver) -> None:
    core = await make_core("", backend=backend(fal))
    job = await core.service.submit(parse_request("a quiet forest --silent --duration 5 --resolution 480p"),
                                    webhook_origin(receiver))
    await receiver.wait_for(job.id, "delivered", 30)
    [submit] = fal.requests_to("submit")
    assert set(submit.json) == {"prompt", "seed", "resolution", "duration", "aspect_ratio"}  # wan-25 has no switch
    [delivered] = [d for d in receiver.deliveries.values() if d.job_id == job.id]
    assert not has_audio(delivered.path), "--silent: the runner strips fal's sound after download"


async def test_a_refused_prompt_fails_the_job_naming_the_field_and_is_not_counted(
    fal: FakeFal, make_core, receiver
) -> None:
    core = await make_core("", backend=backend(fal))
    job = await core.service.submit(parse_request("a fox " * 150 + "--duration 5 --resolution 480p"),
                                    webhook_origin(receiver))
    await receiver.wait_for(job.id, "failed", 30)
    job = await core.service.status(job.id)
    assert job.state == "failed" and not job.counts_toward_quota
    assert "prompt: String should have at most 800 characters" in (job.error or "")
    assert len(fal.requests_to("submit")) == 1


async def test_a_slack_command_gets_a_fal_clip_in_its_thread(fal: FakeFal, tmp_path: Path) -> None:
    slack_fake = await FakeSlack().start()
    (tmp_path / "videobot.toml").write_text(LIMITS)
    settings = Settings(backend="fal", fal_key=KEY, fal_host=fal.host, ssl_cert_file=str(fal.ca_path),
                        data_dir=tmp_path / "data", database_url=this_database(),
                        limits_path=tmp_path / "videobot.toml", poll_interval_s=0.1, progress_interval_s=0.1, http_host="127.0.0.1", slack_bot_token=BOT_TOKEN,
                        slack_signing_secret=SIGNING_SECRET, slack_port=0, slack_api_url=slack_fake.api_url)
    core = await Core.create(settings)
    adapter = build_adapter(settings, core.service)
    await core.start()
    await adapter.start()
    try:
        async with aiohttp.ClientSession() as http:
            bot = SlackBot(slack_fake, core, adapter, http)
            answer = await bot.command("a heron taking off --duration 5 --resolution 480p")
            assert answer.status == 200 and answer.seconds < 3
            [job] = await bot.wait_jobs(1)
            job = await bot.finished(job.id or 0)
    finally:
        await adapter.stop()
        await core.stop()
        await slack_fake.stop()
    assert job.state == "succeeded", job.error
    [complete] = slack_fake.calls_to("files.completeUploadExternal")
    assert complete.params["thread_ts"] == job.status_ref and "wan-25-preview (fal)" in complete.params["initial_comment"]
    clip = tmp_path / "posted.mp4"
    clip.write_bytes(slack_fake.files[job.delivered_ref or ""].content)
    assert probe(clip).duration_s == pytest.approx(5, abs=0.15) and has_audio(clip)
    assert fal.submits["a heron taking off"] == 1


# -- kill -9 -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
async def test_kill_9_mid_request_resumes_from_the_stored_status_url_with_one_submit(
    fal: FakeFal, tmp_path: Path
) -> None:
    api_key, port = "vb-test-key-0123456789", _free_port()
    env = fal_env(tmp_path, fal, VIDEOBOT_API_KEY=api_key, VIDEOBOT_HTTP_PORT=str(port), VIDEOBOT_LOG_LEVEL="INFO",
                  VIDEOBOT_PROGRESS_INTERVAL="0.5")
    env["VIDEOBOT_ALLOWED_HOSTS"] = "127.0.0.1"  # the CDN stand-in and the webhook receiver, on loopback
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {api_key}"}
    log = tmp_path / "serve.log"
    receiver = await WebhookReceiver(tmp_path).start()
    fal.hold()

    async def serve() -> asyncio.subprocess.Process:
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "serve", stdout=out,
                                                           stderr=out, env=env, cwd=tmp_path)
        async with httpx.AsyncClient() as http:
            for _ in range(400):
                try:
                    if (await http.get(f"{url}/healthz")).status_code == 200:
                        return process
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"serve did not start:\n{log.read_text()}")

    first = await serve()
    second = None
    try:
        async with httpx.AsyncClient() as http:
            answer = await http.post(f"{url}/v1/jobs", headers=auth, json={
                "prompt": "a kite over the dunes --duration 5 --resolution 480p", "callback_url": receiver.url,
                "user_id": "k"})
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["job_id"]
            deadline = time.monotonic() + 30
            while (await http.get(f"{url}/v1/jobs/{job_id}", headers=auth)).json()["state"] != "running":
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                await asyncio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        polls_before = len(fal.requests_to("status"))

        second = await serve()
        fal.release()
        await receiver.wait_for(job_id, "delivered", timeout=60)
    finally:
        for process in (first, second):
            if process is not None and process.returncode is None:
                process.terminate()
                await process.wait()
        await receiver.stop()

    assert fal.submits["a kite over the dunes"] == 1, "the request was submitted again after the restart"
    [task] = fal.tasks.values()
    later = fal.requests_to("status")[polls_before:]
    assert later and {p.path for p in later} == {f"{QUEUE_APP}/requests/{task.id}/status"}
    delivered = [d for d in receiver.deliveries.values() if d.job_id == job_id]
    assert len(delivered) == 1 and has_audio(delivered[0].path)
    assert "resuming from" in log.read_text() and KEY not in log.read_text()
    engine = make_engine(stored_at(tmp_path))
    with engine.connect() as db:
        [(stored,)] = db.exec_driver_sql("SELECT task_id FROM jobs").fetchall()
        assert KEY not in str(db.exec_driver_sql("SELECT * FROM jobs").fetchall())
    engine.dispose()
    assert json.loads(stored)["status"] == f"https://{fal.host}{QUEUE_APP}/requests/{task.id}/status"
    database = tmp_path / "data" / "videobot.db"
    assert not database.exists() or KEY.encode() not in database.read_bytes()
