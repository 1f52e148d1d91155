"""Keyframes (issue 12): a clip that starts on one image and ends on another, loops, multi-shot.

Through the fake Slack, the fake Discord, the CLI and the core, with the simulator behind our
own HTTP contract. The simulator renders a keyframed clip as a crossfade from the start image to
the end image, so what the person receives can be measured on decoded frames.

``MAX_DIFF`` is the threshold every "this frame is that image" check uses: the mean absolute
difference per channel, on the 0–255 scale, between a decoded frame of the posted mp4 and the
image cover-fitted to the clip's size. What it allows is h264 loss and the simulator's small
label in the corner; the start and end images used here differ from each other by more than
``DISTINCT`` by the same measure, so a clip ending on the wrong image fails.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from adapters.slack import build_adapter as build_slack_adapter
from bot.app import Core
from bot.backends.http import HttpBackend
from bot.catalog import MODELS, ModelSpec
from bot.errors import InvalidRequest
from bot.grammar import build_request, parse_request
from bot.images import load_image
from bot.media import first_frame_png, last_frame_png, probe
from bot.models import GenerationSpec, Mode
from bot.provider import render
from bot.provider.server import (
    TASKS,
    InvalidParameter,
    TaskRegistry,
    bound_port,
    parse_submission,
    serve_provider,
)
from bot.provider.simulator import build_simulator_app
from bot.settings import Settings
from storage.tables import JobState
from tests import test_discord_e2e
from tests.conftest import subprocess_env, this_database, webhook_origin
from tests.fakes.slack_api import (
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    mention_event,
    message_shortcut,
    view_submission,
)
from tests.test_discord_e2e import World, WorldFactory, answered
from tests.test_slack_e2e import SlackBot

pytestmark = pytest.mark.timeout(120)

make_world = test_discord_e2e.make_world  # the fake Discord world, as its own tests build it

MAX_DIFF = 8.0
DISTINCT = 40.0
FAST = "--duration 1 --resolution 832x480"
CLIP = (832, 480)
LIMITS = "[defaults]\nuser_concurrent_jobs = 0\nuser_daily_jobs = 0\nmax_duration_s = 20\n"


# -- pictures and frames --------------------------------------------------------------------------


def picture(kind: str, width: int = 320, height: int = 180) -> bytes:
    """A start image (warm, a bar on the left) or an end image (cool, a disc on the right)."""
    x = np.linspace(0, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    if kind == "start":
        rgb = np.stack([200 + 50 * x + 0 * y, 60 + 120 * y + 0 * x, 30 + 0 * x * y], axis=-1)
    else:
        rgb = np.stack([20 + 0 * x * y, 80 + 100 * x + 0 * y, 160 + 90 * y + 0 * x], axis=-1)
    image = Image.fromarray(rgb.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    if kind == "start":
        draw.rectangle((width // 10, height // 5, width // 4, height * 4 // 5), fill=(250, 250, 240))
    else:
        draw.ellipse((width * 6 // 10, height // 4, width * 9 // 10, height * 3 // 4), fill=(255, 230, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def frame(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def fitted(image: bytes, size: tuple[int, int] = CLIP) -> np.ndarray:
    """The image as the clip should show it: cover-fitted to the clip's size, centred."""
    opened = Image.open(io.BytesIO(image)).convert("RGB")
    return np.asarray(ImageOps.fit(opened, size, Image.Resampling.LANCZOS), dtype=np.int16)


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def ends(clip: Path) -> tuple[np.ndarray, np.ndarray]:
    """The clip's first and last decoded frames."""
    return frame(first_frame_png(clip)), frame(last_frame_png(clip))


def mean_colour(image: bytes) -> np.ndarray:
    return frame(image).reshape(-1, 3).mean(axis=0)


def test_the_two_pictures_are_told_apart_by_the_threshold() -> None:
    assert diff(fitted(picture("start")), fitted(picture("end"))) > DISTINCT > MAX_DIFF


# -- the simulator: its own HTTP contract on loopback, its tasks visible to the test --------------


@asynccontextmanager
async def simulator(tmp_path: Path) -> AsyncIterator[tuple[HttpBackend, TaskRegistry]]:
    files = tmp_path / "simulator"
    files.mkdir(parents=True, exist_ok=True)
    app = build_simulator_app(files_dir=files)
    runner = await serve_provider(app, "127.0.0.1", 0)
    backend = HttpBackend(
        f"http://127.0.0.1:{bound_port(runner)}/v1", name="simulator", label="simulator (no real model)"
    )
    try:
        yield backend, app[TASKS]
    finally:
        await runner.cleanup()


def received(tasks: TaskRegistry) -> list[GenerationSpec]:
    """What the generator was asked, in the order it was asked."""
    return [task.spec for task in sorted(tasks.tasks(), key=lambda t: t.created_at)]


# -- grammar --------------------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_loop_and_shots_are_options_and_bad_values_name_the_option() -> None:
    request = parse_request("waves --loop --shots MULTI")
    assert (request.loop, request.shots, request.prompt) == (True, "multi", "waves")
    assert parse_request("waves").shots == "single" and not parse_request("waves").loop
    for text, named in (("waves --shots three", "--shots must be single or multi"), ("waves --shots", "--shots needs a value")):
        with pytest.raises(InvalidRequest, match=named):
            parse_request(text)
    with pytest.raises(InvalidRequest, match="--shots"):
        build_request("waves", shots=7)  # type: ignore[arg-type]
    assert "--loop" in parse_request.__globals__["HELP_TEXT"] and "--shots" in parse_request.__globals__["HELP_TEXT"]


@pytest.mark.timeout(10)
def test_an_end_image_needs_a_start_image_of_the_same_orientation() -> None:
    start = load_image(picture("start"))
    end = load_image(picture("end"))
    portrait = load_image(picture("end", 180, 320))
    request = parse_request("morph", image=start, end_image=end)
    assert request.end_image == end and request.image == start and request.keyframed
    with pytest.raises(InvalidRequest, match="An end image needs a start image"):
        parse_request("morph", end_image=end)
    with pytest.raises(InvalidRequest, match="--loop ends the clip on its first frame"):
        parse_request("morph --loop", image=start, end_image=end)
    with pytest.raises(InvalidRequest) as refused:
        parse_request("morph", image=start, end_image=portrait)
    message = str(refused.value)
    assert "start image is landscape (320x180)" in message and "end image is portrait (180x320)" in message
    assert "Crop the end image to landscape" in message


# -- the simulator's rendering and contract -------------------------------------------------------


@pytest.mark.timeout(20)
def test_simulator_keyframe_render_starts_on_the_start_image_and_ends_on_the_end_image() -> None:
    start, end = picture("start"), picture("end")
    frames = list(render.keyframe_frames(start, end, width=832, height=480, count=12, seed=3, label="sim"))
    assert len(frames) == 12
    assert diff(frames[0], fitted(start)) < 2 and diff(frames[-1], fitted(end)) < 2  # before any encoding
    assert diff(frames[6], fitted(start)) > 5 and diff(frames[6], fitted(end)) > 5  # in between, a blend


@pytest.mark.timeout(10)
def test_the_contract_takes_an_end_image_data_uri_on_image_to_video_only() -> None:
    import base64

    uri = "data:image/png;base64," + base64.b64encode(picture("end")).decode()
    start = "data:image/png;base64," + base64.b64encode(picture("start")).decode()
    spec = parse_submission({"prompt": "p", "image": start, "end_image": uri}, with_image=True)
    assert spec.end_image == picture("end") and spec.end_image_mime == "image/png" and spec.image == picture("start")
    with pytest.raises(InvalidParameter, match="end_image is only accepted by /video/image-to-video"):
        parse_submission({"prompt": "p", "end_image": uri}, with_image=False)
    with pytest.raises(InvalidParameter, match="end_image must be a data URI"):
        parse_submission({"prompt": "p", "image": start, "end_image": "http://x"}, with_image=True)


# -- Slack ----------------------------------------------------------------------------------------


@asynccontextmanager
async def slack_bot(tmp_path: Path, backend: HttpBackend) -> AsyncIterator[SlackBot]:
    fake = await FakeSlack().start()
    (tmp_path / "videobot.toml").write_text(LIMITS)
    settings = Settings(
        backend="simulator",
        data_dir=tmp_path / "data",
        database_url=this_database(),
        limits_path=tmp_path / "videobot.toml",
        poll_interval_s=0.1,
        progress_interval_s=0.1,
        http_host="127.0.0.1",
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SIGNING_SECRET,
        slack_port=0,
        slack_api_url=fake.api_url,
    )
    core = await Core.create(settings, backend=backend)
    adapter = build_slack_adapter(settings, core.service)
    await core.start()
    await adapter.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield SlackBot(fake, core, adapter, http)
    finally:
        await adapter.stop()
        await core.stop()
        await fake.stop()


def posted_clip(slack: SlackBot, job_ref: str, where: Path) -> Path:
    where.write_bytes(slack.fake.files[job_ref].content)
    return where


async def test_slack_mention_with_two_images_makes_a_clip_from_the_first_to_the_second(tmp_path: Path) -> None:
    async with simulator(tmp_path) as (backend, tasks), slack_bot(tmp_path, backend) as slack:
        start = slack.fake.add_file("start.png", picture("start"), "image/png")
        end = slack.fake.add_file("end.png", picture("end"), "image/png")
        await slack.event(mention_event(f"the day turns to dusk {FAST}", files=[start, end], ts="1700000000.000001"))
        [job] = await slack.wait_jobs(1)
        job = await slack.finished(job.id or 0)

        assert job.job_state is JobState.SUCCEEDED, job.error
        assert job.mode == "i2v" and job.image_path and job.end_image_path and not job.loop
        [spec] = received(tasks)
        # the generator got both frames, in the order they were shared: warm start, cool end
        assert mean_colour(spec.image or b"")[0] > 150 > mean_colour(spec.end_image or b"")[0]
        assert mean_colour(spec.end_image or b"")[2] > 150
        first, last = ends(posted_clip(slack, job.delivered_ref or "", tmp_path / "posted.mp4"))
        assert diff(last, fitted(picture("end"))) < MAX_DIFF
        assert diff(first, fitted(picture("start"))) < MAX_DIFF
        assert diff(last, fitted(picture("start"))) > DISTINCT


async def test_slack_animate_shortcut_on_a_message_with_two_images_ends_on_the_second(tmp_path: Path) -> None:
    async with simulator(tmp_path) as (backend, tasks), slack_bot(tmp_path, backend) as slack:
        start = slack.fake.add_file("start.png", picture("start"), "image/png")
        end = slack.fake.add_file("end.png", picture("end"), "image/png")
        message = slack.fake.add_message("C0GENERAL", {"user": "U0BOB", "text": "before/after", "files": [start, end]})
        await slack.interact(message_shortcut(message, response_url=slack.fake.response_url("shortcut")))
        [opened] = await slack.fake.wait_for(lambda: slack.fake.calls_to("views.open"))
        values: dict[str, dict[str, Any]] = {
            "prompt": {"value": {"type": "plain_text_input", "value": "morning comes --resolution 832x480"}},
            "duration": {"value": {"type": "static_select", "selected_option": {"value": "5"}}},
            "aspect": {"value": {"type": "static_select", "selected_option": {"value": "image"}}},
        }
        await slack.interact(view_submission(opened.params["view"], values))
        [job] = await slack.wait_jobs(1)
        assert job.image_path and job.end_image_path
        assert [c.params["file"] for c in slack.fake.calls_to("files.info")] == [start["id"], end["id"]]
        job = await slack.finished(job.id or 0)
        assert job.job_state is JobState.SUCCEEDED, job.error
        [spec] = received(tasks)
        assert mean_colour(spec.image or b"")[0] > 150 > mean_colour(spec.end_image or b"")[0]
        _, last = ends(posted_clip(slack, job.delivered_ref or "", tmp_path / "posted.mp4"))
        assert diff(last, fitted(picture("end"))) < MAX_DIFF


async def test_slack_loop_from_an_image_ends_on_its_first_frame_and_is_marked(tmp_path: Path) -> None:
    async with simulator(tmp_path) as (backend, tasks), slack_bot(tmp_path, backend) as slack:
        photo = slack.fake.add_file("start.png", picture("start"), "image/png")
        await slack.event(mention_event(f"leaves sway --loop {FAST}", files=[photo], ts="1700000000.000002"))
        [job] = await slack.wait_jobs(1)
        job = await slack.finished(job.id or 0)
        assert job.job_state is JobState.SUCCEEDED and job.loop, job.error
        [spec] = received(tasks)
        assert spec.end_image == spec.image  # one segment: it ends on the image it starts from
        first, last = ends(posted_clip(slack, job.delivered_ref or "", tmp_path / "loop.mp4"))
        assert diff(first, last) < MAX_DIFF
        [complete] = slack.fake.calls_to("files.completeUploadExternal")
        assert "🔁 loop" in complete.params["initial_comment"]


async def test_slack_shots_multi_on_the_simulator_is_refused_naming_the_models_that_have_it(tmp_path: Path) -> None:
    async with simulator(tmp_path) as (backend, tasks), slack_bot(tmp_path, backend) as slack:
        answer = await slack.command(f"a chase through a market --shots multi {FAST}", response_url=slack.fake.response_url("cmd"))
        assert answer.status == 200
        [reply] = await slack.fake.wait_for(lambda: slack.responses("cmd"))
        assert "--shots multi needs a model that cuts a clip into several shots: wan2.6-t2v, wan2.6-i2v" in reply
        assert "simulator" in reply
        assert await slack.jobs() == [] and received(tasks) == []


# -- Discord --------------------------------------------------------------------------------------


def png(kind: str) -> bytes:
    return picture(kind)


async def discord_world(make_world: WorldFactory, backend: HttpBackend) -> World:
    return await make_world(limits=LIMITS, backend=backend)


async def test_discord_video_command_with_end_image_ends_on_it(make_world: WorldFactory, tmp_path: Path) -> None:
    async with simulator(tmp_path) as (backend, tasks):
        world = await discord_world(make_world, backend)
        fake = world.fake
        start = fake.upload_attachment(world.channel, "start.png", png("start"), "image/png")
        end = fake.upload_attachment(world.channel, "end.png", png("end"), "image/png")
        interaction = await fake.slash_command(
            world.channel, world.alice, "video",
            {"prompt": "the day turns to dusk", "duration": 1, "resolution": "832x480"},
            attachments={"image": start, "end_image": end},
        )
        await answered(interaction)
        (thread,) = await fake.wait_for(world.threads)
        message = await world.clip_in(thread.id)
        await world.status_of(1, JobState.SUCCEEDED)
        job = await world.core.service.status(1)
        assert job.end_image_path and not job.loop
        [spec] = received(tasks)
        assert mean_colour(spec.image or b"")[0] > 150 > mean_colour(spec.end_image or b"")[0]
        clip = tmp_path / "discord.mp4"
        clip.write_bytes(fake.download(message["attachments"][0]))
        first, last = ends(clip)
        assert diff(last, fitted(picture("end"))) < MAX_DIFF and diff(first, fitted(picture("start"))) < MAX_DIFF


async def test_discord_mention_with_two_images_uses_them_in_order(make_world: WorldFactory, tmp_path: Path) -> None:
    async with simulator(tmp_path) as (backend, tasks):
        world = await discord_world(make_world, backend)
        fake = world.fake
        start = fake.upload_attachment(world.channel, "a.png", png("start"), "image/png")
        end = fake.upload_attachment(world.channel, "b.png", png("end"), "image/png")
        await fake.post_user_message(
            world.channel, world.alice, f"{fake.mention()} dusk falls --loop {FAST}", attachments=[start, end]
        )
        # --loop and an end image together are refused, naming the conflict
        refusal = await fake.wait_for(
            lambda: next((m for m in fake.channel_messages(world.channel.id) if "--loop ends the clip" in m["content"]), None)
        )
        assert refusal and received(tasks) == []
        await fake.post_user_message(world.channel, world.alice, f"{fake.mention()} dusk falls {FAST}", attachments=[start, end])
        await fake.wait_for(world.threads)
        job_id = await _first_job(world)
        await world.status_of(job_id, JobState.SUCCEEDED)
        job = await world.core.service.status(job_id)
        assert job.image_path and job.end_image_path
        [spec] = received(tasks)
        assert mean_colour(spec.image or b"")[0] > 150 > mean_colour(spec.end_image or b"")[0]


async def _first_job(world: World) -> int:
    deadline = time.monotonic() + 10
    while True:
        db = world.core.service.db
        jobs = await db.run(db.repo.recent, 10)
        if jobs:
            return min(j.id or 0 for j in jobs)
        assert time.monotonic() < deadline, "no job was made"
        await asyncio.sleep(0.05)


# -- the core: stitched keyframes, reroll and extend ----------------------------------------------


async def _finish(core: Core, receiver: Any, job_id: int, timeout: float = 100) -> Any:
    await receiver.wait_for(job_id, "delivered", timeout)
    for _ in range(100):
        job = await core.service.status(job_id)
        if job.job_state.terminal:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} stuck in {job.state}")


@pytest.mark.timeout(240)
async def test_a_twenty_second_loop_is_stitched_and_ends_on_its_first_frame(make_core: Any, receiver: Any, tmp_path: Path) -> None:
    async with simulator(tmp_path) as (backend, tasks):
        core = await make_core(LIMITS, backend=backend)
        job = await core.service.submit(
            parse_request("a paper boat drifting --loop --duration 20 --resolution 832x480"), webhook_origin(receiver)
        )
        assert job.segment_count == 2 and job.loop
        job = await _finish(core, receiver, job.id or 0, timeout=200)
        assert job.state == "succeeded", job.error
        first_segment, last_segment = received(tasks)
        assert first_segment.image is None and first_segment.end_image is None  # text-to-video opens the loop
        assert last_segment.image is not None and last_segment.end_image is not None
        delivered = next(d for d in receiver.deliveries.values() if d.job_id == job.id)
        info = probe(delivered.path)
        assert info.duration_s == pytest.approx(20, abs=0.15)
        first, last = ends(delivered.path)
        assert diff(first, last) < MAX_DIFF
        assert diff(frame(last_segment.end_image), first) < MAX_DIFF  # the loop closes on the clip's own first frame


async def test_a_text_only_loop_of_one_segment_is_made_in_two(make_core: Any, receiver: Any, tmp_path: Path) -> None:
    async with simulator(tmp_path) as (backend, _):
        core = await make_core(LIMITS, backend=backend)
        job = await core.service.submit(parse_request(f"a spinning top --loop {FAST}".replace("--duration 1", "--duration 2")), webhook_origin(receiver))
        assert job.segment_count == 2
        job = await _finish(core, receiver, job.id or 0)
        assert job.state == "succeeded", job.error
        delivered = next(d for d in receiver.deliveries.values() if d.job_id == job.id)
        first, last = ends(delivered.path)
        assert diff(first, last) < MAX_DIFF
        with pytest.raises(InvalidRequest, match="A loop without an image is made in two parts"):
            await core.service.submit(parse_request(f"a spinning top --loop {FAST}"), webhook_origin(receiver))


async def test_a_long_clip_with_an_end_image_ends_on_it_after_continuing_each_segment(
    make_core: Any, receiver: Any, tmp_path: Path
) -> None:
    async with simulator(tmp_path) as (backend, tasks):
        core = await make_core(LIMITS, backend=backend)
        request = parse_request(
            "dusk --duration 12 --resolution 832x480",
            image=load_image(picture("start")), end_image=load_image(picture("end")),
        )
        job = await core.service.submit(request, webhook_origin(receiver))
        assert job.segment_count == 2
        job = await _finish(core, receiver, job.id or 0, timeout=150)
        assert job.state == "succeeded", job.error
        first_segment, last_segment = received(tasks)
        assert first_segment.end_image is None and last_segment.end_image is not None
        assert mean_colour(last_segment.end_image)[2] > 150
        delivered = next(d for d in receiver.deliveries.values() if d.job_id == job.id)
        _, last = ends(delivered.path)
        assert diff(last, fitted(picture("end"))) < MAX_DIFF


async def test_reroll_keeps_both_frames_and_extending_a_loop_is_refused(make_core: Any, receiver: Any, tmp_path: Path) -> None:
    async with simulator(tmp_path) as (backend, tasks):
        core = await make_core(LIMITS, backend=backend)
        origin = webhook_origin(receiver)
        request = parse_request(f"dusk {FAST}", image=load_image(picture("start")), end_image=load_image(picture("end")))
        job = await _finish(core, receiver, (await core.service.submit(request, origin)).id or 0)
        reroll = await core.service.reroll(job.id or 0, origin)
        assert (reroll.image_path, reroll.end_image_path, reroll.seed != job.seed) == (job.image_path, job.end_image_path, True)
        reroll = await _finish(core, receiver, reroll.id or 0)
        assert reroll.state == "succeeded", reroll.error
        _, again = received(tasks)
        assert mean_colour(again.image or b"")[0] > 150 > mean_colour(again.end_image or b"")[0]
        extension = await core.service.extend(job.id or 0, origin, seconds=1)
        assert extension.end_image_path is None and not extension.loop  # an extension continues freely

        looped = await core.service.submit(
            parse_request(f"leaves --loop {FAST}", image=load_image(picture("start"))), origin
        )
        looped = await _finish(core, receiver, looped.id or 0)
        with pytest.raises(InvalidRequest, match=r"is a loop: it ends on its own first frame.*--loop --duration"):
            await core.service.extend(looped.id or 0, origin)
        again_loop = await core.service.reroll(looped.id or 0, origin)
        assert again_loop.loop


class _HostedStub:
    """A backend whose image model (wan2.6-i2v) takes no end frame; nothing is ever submitted."""

    name = "hosted"
    label = "wan2.6"
    max_concurrency = 1
    max_segment_s = 15

    def __init__(self) -> None:
        self.models: dict[Mode, ModelSpec] = {
            Mode.TEXT_TO_VIDEO: MODELS["wan2.6-t2v"], Mode.IMAGE_TO_VIDEO: MODELS["wan2.6-i2v"]
        }

    async def submit(self, spec: GenerationSpec) -> str:
        raise AssertionError("a refused request must never reach the backend")

    async def poll(self, task_id: str) -> Any:
        raise AssertionError

    async def fetch(self, state: Any, dest: Path, max_bytes: int) -> Path:
        raise AssertionError

    async def cancel(self, task_id: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def test_an_end_frame_on_a_model_without_one_is_refused_before_admission(make_core: Any, receiver: Any) -> None:
    core = await make_core(LIMITS + 'resolutions = ["1280x720"]\n', backend=_HostedStub())
    origin = webhook_origin(receiver)
    start, end = load_image(picture("start")), load_image(picture("end"))
    for request in (
        parse_request("dusk --duration 5", image=start, end_image=end),
        parse_request("dusk --duration 5 --loop", image=start),
    ):
        with pytest.raises(InvalidRequest) as refused:
            await core.service.submit(request, origin)
        message = str(refused.value)
        assert "runs wan2.6-i2v, which takes no end frame" in message
        assert "wan2.2-kf2v-flash, wanx2.1-kf2v-plus" in message
    db = core.service.db
    assert await db.run(db.repo.recent, 10) == []
    # multi-shot is what this model does have: accepted (and, here, never run)
    accepted = await core.service.submit(parse_request("a chase --duration 5 --shots multi"), origin)
    assert accepted.shots == "multi"


# -- the CLI --------------------------------------------------------------------------------------


def test_cli_generate_with_end_image_writes_a_clip_ending_on_it_and_refuses_multi_shot(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "start.png").write_bytes(picture("start"))
    (tmp_path / "end.png").write_bytes(picture("end"))
    env = subprocess_env(tmp_path, VIDEOBOT_LOG_LEVEL="WARNING", COLUMNS="120", VIDEOBOT_BACKEND="simulator")

    def videobot(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bot", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=100, check=False)

    made = videobot("generate", "dusk falls", "--image", "start.png", "--end-image", "end.png",
                    "--duration", "1", "--resolution", "832x480", "--output", "dusk.mp4")
    assert made.returncode == 0, made.stderr
    first, last = ends(tmp_path / "dusk.mp4")
    assert diff(last, fitted(picture("end"))) < MAX_DIFF and diff(first, fitted(picture("start"))) < MAX_DIFF

    refused = videobot("generate", "a chase", "--shots", "multi", "--duration", "1", "--resolution", "832x480")
    assert refused.returncode == 2 and "wan2.6-t2v, wan2.6-i2v" in refused.stderr
    wrong = videobot("generate", "a chase", "--shots", "many")
    assert wrong.returncode == 2 and "--shots must be single or multi" in wrong.stderr
    lonely = videobot("generate", "dusk", "--end-image", "end.png")
    assert lonely.returncode == 2 and "An end image needs a start image" in lonely.stderr
