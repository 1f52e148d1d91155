"""The Replicate backend against a loopback fake of Replicate's HTTP API (``tests.fakes.replicate``):
what it sends, how it reads predictions, images through data: URIs and the Files API, rate
limits, refusals, cancel, expired outputs, and whole jobs through `videobot generate`, Slack and
a `videobot serve` killed mid-task. The key never reaches a log, an error or the delivery host."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from PIL import Image

from bot.app import hosted_backend
from bot.backends.base import Backend
from bot.backends.replicate import ReplicateBackend
from bot.errors import BackendError, ConfigurationError
from bot.media import probe
from bot.models import GenerationSpec, Mode, TaskStatus
from bot.settings import Settings
from storage.engine import make_engine
from storage.repository import JobRepository
from storage.tables import JobState
from tests.conftest import assert_not_stored, stored_at, subprocess_env, this_database
from tests.fakes.provider import Reply
from tests.fakes.replicate import I2V_INPUTS, T2V_INPUTS, TOKEN, FakeReplicate

pytestmark = pytest.mark.timeout(60)

MISCONFIGURED = "The bot's video service is misconfigured (Replicate refused its API token); an admin has been told."
EXPIRED = "no longer on Replicate"

MakeBackend = Callable[..., ReplicateBackend]


def a_spec(**changes: Any) -> GenerationSpec:
    spec = GenerationSpec(prompt="a fox in the snow", width=1280, height=720, duration_s=5, fps=24, seed=7,
                          model="wan-video/wan-2.5-t2v", audio=True)
    return replace(spec, **changes)


def jpeg(width: int, height: int, *, noisy: bool, quality: int = 95, grain: int = 4) -> bytes:
    """A photo: ``noisy`` has detail everywhere (a large JPEG; ``grain`` pixels across), otherwise
    a smooth gradient (a small one)."""
    if noisy:
        image = Image.effect_noise((max(1, width // grain), max(1, height // grain)), 90).convert("RGB")
        image = image.resize((width, height), Image.Resampling.NEAREST)
        image = Image.merge("RGB", (image.getchannel(0), image.getchannel(0).rotate(180), image.getchannel(0)))
    else:
        image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def has_audio(path: Path) -> bool:
    with av.open(str(path)) as container:
        return len(container.streams.audio) > 0


@pytest.fixture(autouse=True)
def token_never_logged(caplog: pytest.LogCaptureFixture) -> Any:
    """Every test runs with all loggers at DEBUG; no record may show the token."""
    caplog.set_level(logging.DEBUG)
    yield
    formatter = logging.Formatter()
    for record in caplog.get_records("setup") + caplog.get_records("call") + caplog.records:
        assert TOKEN not in formatter.format(record), record.name


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeReplicate]:
    clips = tmp_path / "clips"
    clips.mkdir()
    async with FakeReplicate(clips) as server:
        yield server


@pytest.fixture
async def make_backend(fake: FakeReplicate) -> AsyncIterator[MakeBackend]:
    made: list[ReplicateBackend] = []

    def make(token: str = TOKEN, **options: Any) -> ReplicateBackend:
        knobs = {"timeout_s": 5.0, "max_retries": 3, "backoff_base_s": 0.01, "backoff_max_s": 1.0}
        backend = ReplicateBackend(token, base_url=fake.base_url, **(knobs | options))
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()


async def finish(backend: ReplicateBackend, task_id: str) -> Any:
    for _ in range(20):
        state = await backend.poll(task_id)
        if state.done:
            return state
    raise AssertionError("the prediction never finished")


# -- the backend on its own ---------------------------------------------------------------------


def test_the_backend_is_built_from_settings_with_the_wan_2_5_models() -> None:
    settings = Settings(replicate_api_token=TOKEN, replicate_base_url="http://127.0.0.1:9/v1")
    backend = hosted_backend("replicate", settings, name="replicate")
    assert isinstance(backend, ReplicateBackend) and isinstance(backend, Backend)
    assert {m: s.name for m, s in backend.models.items()} == {
        Mode.TEXT_TO_VIDEO: "wan-video/wan-2.5-t2v", Mode.IMAGE_TO_VIDEO: "wan-video/wan-2.5-i2v"}
    assert backend.max_concurrency == 4 and backend.max_segment_s == 10 and backend.label == "wan-2.5 on Replicate"
    assert TOKEN not in repr(backend) and "http://127.0.0.1:9/" in repr(backend)
    with pytest.raises(ConfigurationError, match="REPLICATE_API_TOKEN"):
        hosted_backend("replicate", Settings(), name="replicate")
    with pytest.raises(ConfigurationError, match="VIDEOBOT_T2V_MODEL"):
        hosted_backend("replicate", replace(settings, t2v_model="wan-video/wan-2.5-i2v"), name="replicate")


async def test_text_to_video_creates_a_prediction_on_the_official_model(
    fake: FakeReplicate, make_backend: MakeBackend
) -> None:
    backend = make_backend()
    task_id = await backend.submit(a_spec(negative_prompt="blurry"))

    [create] = fake.requests_to("create")
    assert create.path == "/v1/models/wan-video/wan-2.5-t2v/predictions"
    assert create.headers["Authorization"] == f"Bearer {TOKEN}"
    assert create.json == {"input": {"prompt": "a fox in the snow", "size": "1280*720", "duration": 5, "seed": 7,
                                     "negative_prompt": "blurry"}}
    assert set(create.json["input"]) <= T2V_INPUTS  # no fps, no sound switch: wan-2.5 declares neither
    assert task_id == fake.only().id and fake.creates["a fox in the snow"] == 1


async def test_a_prediction_moves_to_succeeded_and_its_output_is_fetched_without_the_token(
    fake: FakeReplicate, make_backend: MakeBackend, tmp_path: Path
) -> None:
    backend = make_backend()
    task_id = await backend.submit(a_spec(duration_s=10))
    first = await backend.poll(task_id)
    assert first.status is TaskStatus.RUNNING and first.progress == 0.0
    second = await backend.poll(task_id)
    assert second.status is TaskStatus.SUCCEEDED and second.progress == 1.0
    assert second.video_url == f"{fake.delivery_origin}/pbxt/{task_id}/output.mp4"

    clip = await backend.fetch(second, tmp_path / "out" / "clip.mp4", 50 * 2**20)
    info = probe(clip)
    assert info.duration_s == pytest.approx(10, abs=0.2) and has_audio(clip)
    assert fake.delivery_auth == [None]  # replicate.delivery never sees the key


async def test_progress_is_read_from_the_logs(fake: FakeReplicate, make_backend: MakeBackend) -> None:
    backend = make_backend()
    task_id = await backend.submit(a_spec(prompt="a slow one [replicate:hold]"))
    assert (await backend.poll(task_id)).progress == 0.0
    state = await backend.poll(task_id)
    assert state.status is TaskStatus.RUNNING and state.progress == pytest.approx(0.5)


async def test_a_small_image_goes_inline_and_a_large_one_through_the_files_api(
    fake: FakeReplicate, make_backend: MakeBackend
) -> None:
    backend = make_backend()
    small = jpeg(1280, 720, noisy=False)
    assert len(small) < 1_000_000
    await backend.submit(a_spec(image=small, image_mime="image/jpeg", model="wan-video/wan-2.5-i2v"))
    [create] = fake.requests_to("create")
    assert create.path == "/v1/models/wan-video/wan-2.5-i2v/predictions"
    inputs = create.json["input"]
    assert inputs["image"].startswith("data:image/jpeg;base64,") and inputs["resolution"] == "720p"
    assert "size" not in inputs and set(inputs) <= I2V_INPUTS
    assert fake.requests_to("upload") == [] and fake.only().image_size == (1280, 720)

    large = jpeg(1280, 852, noisy=True, grain=1)
    assert len(large) > 1_000_000
    await backend.submit(a_spec(image=large, image_mime="image/jpeg", model="wan-video/wan-2.5-i2v"))
    [upload] = fake.requests_to("upload")
    assert upload.headers["Authorization"] == f"Bearer {TOKEN}"
    assert upload.headers["Content-Type"].startswith("multipart/form-data")
    [stored] = fake.files.values()
    assert stored.data == large and stored.content_type == "image/jpeg"
    image_input = fake.requests_to("create")[-1].json["input"]["image"]
    assert image_input == f"{fake.base_url}/v1/files/{stored.id}/download"
    assert list(fake.predictions.values())[-1].image_size == (1280, 852)
    async with httpx.AsyncClient() as client:  # the stored file is the account's, not public
        assert (await client.get(image_input)).status_code == 401
        served = await client.get(image_input, headers={"Authorization": f"Bearer {TOKEN}"})
    assert served.status_code == 200 and served.content == large


async def test_images_are_fitted_to_what_the_model_takes(fake: FakeReplicate, make_backend: MakeBackend) -> None:
    """The last frame of a 160x96 clip (a continuation) is scaled up to the 360 px the model needs,
    and a 3000x1000 PNG down to 2000 px on its long side."""
    backend = make_backend()
    for width, height in ((160, 96), (3000, 1000)):
        out = io.BytesIO()
        Image.new("RGB", (width, height), (20, 90, 200)).save(out, format="PNG")
        await backend.submit(a_spec(image=out.getvalue(), image_mime="image/png", model="wan-video/wan-2.5-i2v"))
    sizes = [p.image_size for p in fake.predictions.values()]
    assert sizes == [(600, 360), (2000, 667)]


async def test_rate_limits_on_create_and_on_get_wait_as_long_as_retry_after_asks(
    fake: FakeReplicate, make_backend: MakeBackend
) -> None:
    busy = {"title": "Request was throttled", "detail": "Expected available in 1 second.", "status": 429}
    fake.queue("create", Reply(429, json=busy, headers={"Retry-After": "0.3"}))
    fake.queue("get", Reply(429, json=busy, headers={"Retry-After": "0.3"}))
    backend = make_backend()
    task_id = await backend.submit(a_spec())
    assert (await backend.poll(task_id)).status is TaskStatus.RUNNING
    for route in ("create", "get"):
        first, second = fake.requests_to(route)
        assert second.at - first.at >= 0.29
    assert len(fake.predictions) == 1 and fake.creates["a fox in the snow"] == 1


async def test_a_refused_input_names_the_field_and_is_not_retried(
    fake: FakeReplicate, make_backend: MakeBackend
) -> None:
    backend = make_backend()
    with pytest.raises(BackendError) as refused:
        await backend.submit(a_spec(duration_s=7))
    assert str(refused.value) == "Replicate refused the request: input.duration: duration must be one of the following: 5, 10"
    assert refused.value.status_code == 422 and not refused.value.retryable
    assert len(fake.requests_to("create")) == 1 and fake.predictions == {}


async def test_a_failed_prediction_carries_replicates_error(fake: FakeReplicate, make_backend: MakeBackend) -> None:
    backend = make_backend()
    state = await finish(backend, await backend.submit(a_spec(prompt="[replicate:fail] a fox")))
    assert state.status is TaskStatus.FAILED
    assert state.error == "The input or output was flagged as sensitive. Please try again with different inputs."


async def test_a_rejected_token_tells_the_admin_which_setting_and_the_person_that_the_bot_is_misconfigured(
    fake: FakeReplicate, make_backend: MakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "r8_WrongToken000000000000000000000000000"
    backend = make_backend(wrong)
    with pytest.raises(BackendError) as refused:
        await backend.submit(a_spec())
    assert str(refused.value) == MISCONFIGURED and refused.value.status_code == 401
    admin = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "bot.backends.replicate"]
    assert admin and "REPLICATE_API_TOKEN" in admin[0].getMessage()
    assert all(wrong not in logging.Formatter().format(r) for r in caplog.records)
    assert len(fake.requests_to("create")) == 1


async def test_cancel_reaches_replicate(fake: FakeReplicate, make_backend: MakeBackend) -> None:
    backend = make_backend()
    task_id = await backend.submit(a_spec(prompt="a long take [replicate:hold]"))
    await backend.poll(task_id)
    await backend.cancel(task_id)
    [cancel] = fake.requests_to("cancel")
    assert cancel.path == f"/v1/predictions/{task_id}/cancel" and cancel.headers["Authorization"] == f"Bearer {TOKEN}"
    assert fake.only().status == "canceled"
    state = await backend.poll(task_id)
    assert state.status is TaskStatus.FAILED and state.error == "the prediction was canceled at Replicate"
    await backend.cancel("no-such-prediction")  # best effort: never raises


async def test_an_output_deleted_after_an_hour_is_a_clear_error(
    fake: FakeReplicate, make_backend: MakeBackend, tmp_path: Path
) -> None:
    backend = make_backend()
    task_id = await backend.submit(a_spec())
    state = await finish(backend, task_id)
    fake.expire(task_id)
    with pytest.raises(BackendError, match=EXPIRED) as late_fetch:
        await backend.fetch(state, tmp_path / "clip.mp4", 2**20)
    assert late_fetch.value.status_code == 404 and not (tmp_path / "clip.mp4").exists()
    with pytest.raises(BackendError, match=EXPIRED):
        await backend.poll(task_id)  # polled after the hour: data_removed, no output


# -- whole jobs ---------------------------------------------------------------------------------


def _env(tmp_path: Path, fake: FakeReplicate, **extra: str) -> dict[str, str]:
    return subprocess_env(tmp_path, VIDEOBOT_LOG_LEVEL="INFO", COLUMNS="160", VIDEOBOT_BACKEND="replicate",
                          REPLICATE_BASE_URL=fake.base_url, REPLICATE_API_TOKEN=TOKEN,
                          VIDEOBOT_ALLOWED_HOSTS=fake.cdn_host, **extra)


async def videobot(tmp_path: Path, fake: FakeReplicate, *args: str, **extra: str) -> tuple[int, str]:
    """Run `videobot ARGS` while this test's event loop keeps serving the fake."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, cwd=tmp_path, env=_env(tmp_path, fake, **extra),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=50)
    text = output.decode()
    assert TOKEN not in text
    return process.returncode or 0, " ".join(text.split())


def stored_jobs(tmp_path: Path) -> list[Any]:
    engine = make_engine(stored_at(tmp_path))
    try:
        return JobRepository(engine).recent(10)
    finally:
        engine.dispose()


async def test_generate_text_to_video_through_replicate_despite_429s(tmp_path: Path, fake: FakeReplicate) -> None:
    busy = Reply(429, json={"title": "Too Many Requests", "detail": "slow down", "status": 429},
                 headers={"Retry-After": "0.3"})
    fake.queue("create", busy)
    fake.queue("get", busy)
    code, output = await videobot(tmp_path, fake, "generate", "a red fox in fresh snow", "--duration", "5",
                                  "--resolution", "480p", "--seed", "11", "--output", "fox.mp4")
    assert code == 0, output
    assert "Wrote fox.mp4" in output
    throttled, create = fake.requests_to("create")
    assert create.at - throttled.at >= 0.3 and len(fake.predictions) == 1
    gets = fake.requests_to("get")
    assert len(gets) >= 2 and gets[1].at - gets[0].at >= 0.3
    assert create.json["input"] == {"prompt": "a red fox in fresh snow", "size": "832*480", "duration": 5, "seed": 11}
    info = probe(tmp_path / "fox.mp4")
    assert info.duration_s == pytest.approx(5, abs=0.2) and has_audio(tmp_path / "fox.mp4")
    assert fake.delivery_auth == [None]
    assert_not_stored(TOKEN, stored_at(tmp_path))


@pytest.mark.parametrize("noisy", [True, False], ids=["detailed-photo-via-files-api", "smooth-photo-inline"])
async def test_generate_animates_a_24_megapixel_photo(tmp_path: Path, fake: FakeReplicate, noisy: bool) -> None:
    photo = tmp_path / "camera.jpg"
    photo.write_bytes(jpeg(6000, 4000, noisy=noisy, quality=80))
    code, output = await videobot(tmp_path, fake, "generate", "the sea slowly moving", "--image", str(photo),
                                  "--duration", "5", "--resolution", "720p", "--output", "sea.mp4")
    assert code == 0, output
    prediction = fake.only()
    assert prediction.model == "wan-video/wan-2.5-i2v" and prediction.input["resolution"] == "720p"
    assert prediction.image_size == (1280, 853)  # load_image fitted it; wan takes up to 2000 px a side
    if noisy:
        [stored] = fake.files.values()
        assert len(stored.data) > 1_000_000 and prediction.input["image"].endswith(f"/v1/files/{stored.id}/download")
    else:
        assert fake.files == {} and prediction.input["image"].startswith("data:image/jpeg;base64,")
    assert probe(tmp_path / "sea.mp4").duration_s == pytest.approx(5, abs=0.2)


async def test_a_twenty_second_clip_is_two_ten_second_predictions_stitched_with_sound(
    tmp_path: Path, fake: FakeReplicate
) -> None:
    (tmp_path / "videobot.toml").write_text("[defaults]\nmax_duration_s = 20\n")
    code, output = await videobot(tmp_path, fake, "generate", "a long train journey", "--duration", "20",
                                  "--resolution", "480p", "--output", "train.mp4")
    assert code == 0, output
    first, second = fake.predictions.values()
    assert (first.model, first.input["duration"]) == ("wan-video/wan-2.5-t2v", 10)
    assert (second.model, second.input["duration"]) == ("wan-video/wan-2.5-i2v", 10)
    assert second.image_size == (600, 360)  # the first clip's last frame, scaled up to wan's minimum
    info = probe(tmp_path / "train.mp4")
    assert info.duration_s == pytest.approx(20, abs=0.3)
    assert has_audio(tmp_path / "train.mp4"), "the stitched clip lost the sound wan-2.5 made"


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a fox [refused]", "Replicate refused the request: input.size: size is not available for this account"),
        ("a fox [replicate:fail]", "The input or output was flagged as sensitive"),
    ],
    ids=["refused-parameter", "failed-prediction"],
)
async def test_a_refusal_or_a_failed_prediction_is_explained_and_not_counted(
    tmp_path: Path, fake: FakeReplicate, prompt: str, message: str
) -> None:
    if "[refused]" in prompt:
        problem = {"title": "Input validation failed", "status": 422,
                   "detail": "- input.size: size is not available for this account"}
        fake.queue("create", Reply(422, json=problem, content_type="application/problem+json"))
    code, output = await videobot(tmp_path, fake, "generate", prompt, "--duration", "5", "--output", "out.mp4")
    assert code == 1 and message in output and "Traceback" not in output, output
    [job] = stored_jobs(tmp_path)
    assert job.job_state is JobState.FAILED and job.counts_toward_quota is False
    assert not (tmp_path / "out.mp4").exists()


async def test_a_slack_video_command_is_made_on_replicate(tmp_path: Path, fake: FakeReplicate) -> None:
    from adapters.slack import build_adapter
    from bot.app import Core
    from tests.fakes.slack_api import BOT_TOKEN, SIGNING_SECRET, FakeSlack
    from tests.test_slack_e2e import GENERAL, LIMITS, SlackBot

    slack_fake = await FakeSlack().start()
    (tmp_path / "videobot.toml").write_text(LIMITS)
    settings = Settings(
        backend="replicate", replicate_api_token=TOKEN, replicate_base_url=fake.base_url,
        data_dir=tmp_path / "data", database_url=this_database(), limits_path=tmp_path / "videobot.toml",
        poll_interval_s=0.1, progress_interval_s=0.1, http_host="127.0.0.1", slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SIGNING_SECRET, slack_port=0, slack_api_url=slack_fake.api_url,
    )
    core = await Core.create(settings)
    adapter = build_adapter(settings, core.service)
    await core.start()
    await adapter.start()
    try:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            slack = SlackBot(slack_fake, core, adapter, http)
            answer = await slack.command("an otter floating on its back --duration 5 --resolution 480p")
            assert answer.status == 200 and answer.seconds < 3
            [job] = await slack.wait_jobs(1)
            job = await slack.finished(job.id or 0)
        assert job.job_state is JobState.SUCCEEDED, job.error
        [complete] = slack_fake.calls_to("files.completeUploadExternal")
        assert complete.params["channel_id"] == GENERAL and complete.params["thread_ts"] == job.status_ref
        assert "wan-2.5 on Replicate" in complete.params["initial_comment"]
        clip = tmp_path / "posted.mp4"
        clip.write_bytes(slack_fake.files[job.delivered_ref or ""].content)
        assert probe(clip).duration_s == pytest.approx(5, abs=0.2) and has_audio(clip)
        assert fake.creates["an otter floating on its back"] == 1 and fake.delivery_auth == [None]
    finally:
        await adapter.stop()
        await core.stop()
        await slack_fake.stop()


async def test_a_silent_request_sends_no_extra_input_and_its_clip_comes_back_without_sound(
    fake: FakeReplicate, make_core: Any, receiver: Any
) -> None:
    from bot.grammar import build_request
    from tests.conftest import webhook_origin

    core = await make_core(backend=ReplicateBackend(TOKEN, base_url=fake.base_url), poll_interval_s=0.05)
    job = await core.service.submit(build_request("a quiet lake", duration=5, silent=True), webhook_origin(receiver))
    await receiver.wait_for(job.id or 0, "delivered", timeout=30)
    assert set(fake.only().input) == {"prompt", "size", "duration", "seed"}  # wan-2.5 has no sound switch
    [delivered] = [d for d in receiver.deliveries.values() if d.job_id == job.id]
    assert not has_audio(delivered.path) and probe(delivered.path).duration_s == pytest.approx(5, abs=0.2)


async def test_canceling_a_job_cancels_the_prediction(tmp_path: Path, fake: FakeReplicate, make_core: Any) -> None:
    from bot.grammar import build_request
    from bot.models import Origin

    backend = ReplicateBackend(TOKEN, base_url=fake.base_url)
    core = await make_core(backend=backend, poll_interval_s=0.05)
    origin = Origin(platform="webhook", workspace_id="acme", channel_id="general", user_id="alice",
                    user_name="Alice", extra={"callback_url": "http://127.0.0.1:9/unused"})
    job = await core.service.submit(build_request("a long take [replicate:hold]", duration=5), origin)
    for _ in range(200):
        if fake.predictions and (await core.service.status(job.id or 0)).job_state is JobState.RUNNING:
            break
        await asyncio.sleep(0.02)
    canceled = await core.service.cancel(job.id or 0, origin)
    assert canceled.job_state is JobState.CANCELED
    for _ in range(100):
        if fake.requests_to("cancel"):
            break
        await asyncio.sleep(0.02)
    [cancel] = fake.requests_to("cancel")
    assert cancel.path == f"/v1/predictions/{canceled.task_id}/cancel" and fake.only().status == "canceled"


async def test_kill_9_mid_prediction_then_restart_polls_the_stored_prediction(
    tmp_path: Path, fake: FakeReplicate
) -> None:
    from tests.fakes.webhook_receiver import WebhookReceiver
    from tests.test_crash_recovery import Bot

    receiver = await WebhookReceiver(tmp_path).start()
    bot = Bot(tmp_path, "unused", 1)
    bot.env.pop("WAN_API_BASE_URL")
    bot.env.update(VIDEOBOT_BACKEND="replicate", REPLICATE_BASE_URL=fake.base_url, REPLICATE_API_TOKEN=TOKEN)
    try:
        await bot.start()
        job_id = await bot.submit("a lake at dawn [replicate:hold] --duration 5 --resolution 480p a", receiver.url)
        await bot.wait_state(job_id, "running")
        bot.kill()
        await bot.process.wait()
        prediction = fake.only()
        polls_before = len(fake.requests_to("get"))
        fake.release()
        await bot.start()
        await receiver.wait_for(job_id, "delivered", timeout=40)
        await bot.wait_state(job_id, "succeeded")
        assert len(fake.requests_to("create")) == 1 and len(fake.predictions) == 1
        later = fake.requests_to("get")[polls_before:]
        assert later and {r.path for r in later} == {f"/v1/predictions/{prediction.id}"}
        [delivered] = [d for d in receiver.deliveries.values() if d.job_id == job_id]
        assert probe(delivered.path).duration_s == pytest.approx(5, abs=0.2)
        assert "resuming from" in bot.log.read_text() and TOKEN not in bot.log.read_text()
    finally:
        await bot.stop()
        await receiver.stop()
