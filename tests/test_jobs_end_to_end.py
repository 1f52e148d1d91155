"""A job's whole life through the real service, runner, http backend and simulator over loopback.

Clips arrive at a webhook receiver as a platform would get them; every file is probed with PyAV.
"""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from bot.errors import NotAllowed
from bot.grammar import parse_request
from bot.images import load_image
from bot.media import probe
from tests.conftest import webhook_origin

pytestmark = pytest.mark.timeout(90)

SMALL = 'resolutions = ["832x480", "480x832", "1280x720", "720x1280"]\nuser_concurrent_jobs = 0\nuser_daily_jobs = 0\n'


def _delivered(receiver, job_id: int):
    matches = [d for d in receiver.deliveries.values() if d.job_id == job_id]
    assert len(matches) == 1, f"job {job_id} delivered {len(matches)} times"
    return matches[0]


async def _finish(core, receiver, job_id: int, event: str = "delivered", timeout: float = 60):
    await receiver.wait_for(job_id, event, timeout)
    for _ in range(100):
        job = await core.service.status(job_id)
        if job.job_state.terminal:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} stuck in {job.state}")


async def test_text_to_video_is_acknowledged_tracked_and_delivered_playable(make_core, receiver) -> None:
    core = await make_core(f"[defaults]\n{SMALL}")
    job = await core.service.submit(parse_request("a red fox in fresh snow --duration 3 --resolution 832x480 --fps 24 --seed 7"), webhook_origin(receiver))
    job = await _finish(core, receiver, job.id)
    assert job.state == "succeeded" and job.seed == 7 and job.delivered_ref
    events = [e["event"] for e in receiver.for_job(job.id)]
    assert events[0] == "accepted" and "progress" in events and events[-1] == "delivered"
    clip = _delivered(receiver, job.id)
    info = probe(clip.path)
    assert (info.width, info.height, info.fps, info.codec) == (832, 480, 24, "h264")
    assert info.duration_s == pytest.approx(3, abs=0.1)
    assert "simulator (no real model)" in clip.caption and "seed 7" in clip.caption
    history = [e.to_state for e in core.service.db.repo.events(job.id)]
    assert history == ["queued", "submitted", "running", "fetching", "delivering", "succeeded"] or history == [
        "queued", "submitted", "fetching", "delivering", "succeeded"]


async def test_twenty_seconds_come_back_as_one_stitched_clip(make_core, receiver) -> None:
    core = await make_core(f"[defaults]\nmax_duration_s = 20\n{SMALL}")
    job = await core.service.submit(parse_request("a train crossing a bridge --duration 20 --resolution 480x832"), webhook_origin(receiver))
    assert job.segment_count == 2
    job = await _finish(core, receiver, job.id, timeout=80)
    assert job.state == "succeeded", job.error
    info = probe(_delivered(receiver, job.id).path)
    assert (info.width, info.height) == (480, 832)
    assert info.duration_s == pytest.approx(20, abs=0.15)
    tasks = [e.detail for e in core.service.db.repo.events(job.id) if e.to_state == "submitted"]
    assert len(tasks) == 2 and tasks[0].startswith("segment 1") and tasks[1].startswith("segment 2")


async def test_image_to_video_animates_the_attached_photo(make_core, receiver) -> None:
    core = await make_core(f"[defaults]\n{SMALL}")
    buffer = io.BytesIO()
    Image.new("RGB", (640, 1100), (200, 40, 40)).save(buffer, "JPEG")
    image = load_image(buffer.getvalue())
    job = await core.service.submit(parse_request("slowly zoom in", image=image), webhook_origin(receiver))
    assert job.mode == "i2v" and (job.width, job.height) == (720, 1280)
    job = await _finish(core, receiver, job.id, timeout=80)
    assert job.state == "succeeded", job.error
    info = probe(_delivered(receiver, job.id).path)
    assert (info.width, info.height) == (720, 1280)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("[sim:fail]", "The video service could not make this video"),
        ("[sim:bad-video]", "The video file is damaged or not a video"),
    ],
)
async def test_provider_failures_end_in_a_clear_message_and_spare_other_jobs(make_core, receiver, token, message) -> None:
    core = await make_core(f"[defaults]\n{SMALL}")
    origin = webhook_origin(receiver)
    bad = await core.service.submit(parse_request(f"{token} a storm --duration 1 --resolution 832x480"), origin)
    good = await core.service.submit(parse_request("a calm sea --duration 1 --resolution 832x480"), webhook_origin(receiver, "bob"))
    failed = await _finish(core, receiver, bad.id, "failed")
    assert failed.state == "failed" and message in failed.error and not failed.counts_toward_quota
    assert message in (await receiver.wait_for(bad.id, "failed"))["message"]
    assert "Traceback" not in failed.error
    assert (await _finish(core, receiver, good.id)).state == "succeeded"


async def test_rate_limits_and_server_errors_are_retried_until_delivered(make_core, receiver) -> None:
    core = await make_core(f"[defaults]\n{SMALL}")
    origin = webhook_origin(receiver)
    limited = await core.service.submit(parse_request("[sim:429] hills --duration 1 --resolution 832x480"), origin)
    broken = await core.service.submit(parse_request("[sim:500x2] dunes --duration 1 --resolution 832x480"), origin)
    assert (await _finish(core, receiver, limited.id)).state == "succeeded"
    assert (await _finish(core, receiver, broken.id)).state == "succeeded"


async def test_a_hanging_task_times_out_and_is_refunded(make_core, receiver) -> None:
    core = await make_core(f"[defaults]\n{SMALL}", job_timeout_s=1.0)
    job = await core.service.submit(parse_request("[sim:hang] fog --duration 1 --resolution 832x480"), webhook_origin(receiver))
    failed = await _finish(core, receiver, job.id, "failed")
    assert "took longer than 1 s" in failed.error and not failed.counts_toward_quota


async def test_only_the_owner_or_an_admin_can_cancel(make_core, receiver) -> None:
    core = await make_core(f'admins = ["webhook:boss"]\n[defaults]\n{SMALL}')
    owner = webhook_origin(receiver)
    job = await core.service.submit(parse_request("[sim:slow=20] stars --duration 1 --resolution 832x480"), owner)
    with pytest.raises(NotAllowed, match="belongs to someone else"):
        await core.service.cancel(job.id, webhook_origin(receiver, "mallory"))
    for _ in range(100):
        if (await core.service.status(job.id)).state == "running":
            break
        await asyncio.sleep(0.05)
    canceled = await core.service.cancel(job.id, webhook_origin(receiver, "boss"))
    assert canceled.state == "canceled" and canceled.counts_toward_quota  # it had started
    assert any(e.get("stage") == "canceled" for e in receiver.for_job(job.id))
    await asyncio.sleep(0.3)
    assert (await core.service.status(job.id)).state == "canceled"
    assert not [d for d in receiver.deliveries.values() if d.job_id == job.id]


async def test_reroll_makes_a_new_take_and_extend_continues_the_clip(make_core, receiver) -> None:
    core = await make_core(f"[defaults]\nmax_duration_s = 10\n{SMALL}")
    origin = webhook_origin(receiver)
    first = await core.service.submit(parse_request("a kite --duration 2 --resolution 832x480 --seed 11"), origin)
    first = await _finish(core, receiver, first.id)
    reroll = await core.service.reroll(first.id, origin)
    assert reroll.kind == "reroll" and reroll.parent_id == first.id and reroll.prompt == first.prompt
    extended = await core.service.extend(first.id, origin, seconds=2)
    assert extended.mode == "i2v" and extended.duration_s == 2
    assert (await _finish(core, receiver, reroll.id)).state == "succeeded"
    extended = await _finish(core, receiver, extended.id, timeout=80)
    assert extended.state == "succeeded", extended.error
    info = probe(_delivered(receiver, extended.id).path)
    assert info.duration_s == pytest.approx(4, abs=0.15)


async def test_retry_runs_a_failed_job_again(make_core, receiver) -> None:
    core = await make_core(f"[defaults]\n{SMALL}")
    origin = webhook_origin(receiver)
    job = await core.service.submit(parse_request("[sim:fail] a bridge --duration 1 --resolution 832x480"), origin)
    await _finish(core, receiver, job.id, "failed")
    retried = await core.service.retry(job.id, origin)
    assert retried.kind == "retry" and retried.parent_id == job.id and retried.state == "queued"


async def test_one_users_backlog_does_not_starve_another(make_core, receiver) -> None:
    core = await make_core(f"[defaults]\n{SMALL}", max_concurrency=1)
    alice, bob = webhook_origin(receiver, "alice"), webhook_origin(receiver, "bob")
    await core.runner.stop()
    backlog = [await core.service.submit(parse_request(f"alice {i} --duration 1 --resolution 832x480"), alice) for i in range(4)]
    bobs = await core.service.submit(parse_request("bob's only --duration 1 --resolution 832x480"), bob)
    core.runner = type(core.runner)(core.service, core.runner.options, platforms=["webhook"])
    await core.runner.start()
    await _finish(core, receiver, bobs.id, timeout=80)
    jobs = [await core.service.status(j.id) for j in [*backlog, bobs]]
    started = sorted([j for j in jobs if j.submitted_at], key=lambda j: j.submitted_at)
    assert [j.user_id for j in started[:2]] == ["alice", "bob"]


async def test_a_failed_upload_is_retried_and_posted_once(make_core, receiver) -> None:
    core = await make_core(f"[defaults]\n{SMALL}")
    core.runner.options = type(core.runner.options)(**{**core.runner.options.__dict__, "delivery_backoff_s": 0.05})
    receiver.fail_deliveries = 2
    job = await core.service.submit(parse_request("a lighthouse --duration 1 --resolution 832x480"), webhook_origin(receiver))
    assert (await _finish(core, receiver, job.id)).state == "succeeded"
    assert receiver.delivery_posts == 3
    _delivered(receiver, job.id)


async def test_old_clips_are_removed_on_schedule_and_rows_stay(make_core, receiver) -> None:
    core = await make_core(f"[defaults]\n{SMALL}", media_retention_days=0)
    job = await core.service.submit(parse_request("a field --duration 1 --resolution 832x480"), webhook_origin(receiver))
    job = await _finish(core, receiver, job.id)
    clip = core.service.media_dir / "jobs" / str(job.id)
    assert clip.exists() and job.output_path
    await core.runner.clean_media()
    assert not clip.exists()
    kept = await core.service.status(job.id)
    assert kept.state == "succeeded" and kept.output_path is None and kept.prompt == "a field"


async def _sounding_simulator(make_core, tmp_path):
    """A core whose generator is a simulator that gives every clip a tone (as hosted Wan 2.5/2.6
    models always make sound), in 1-second segments so a 2-second job is stitched."""
    from bot.backends.http import HttpBackend
    from bot.provider.server import bound_port, serve_provider
    from bot.provider.simulator import SimulatorOptions, build_simulator_app

    files = tmp_path / "sim"
    files.mkdir()
    provider = await serve_provider(build_simulator_app(SimulatorOptions(audio=True), files_dir=files), "127.0.0.1", 0)
    backend = HttpBackend(
        f"http://127.0.0.1:{bound_port(provider)}/v1", name="simulator", max_segment_s=1, audio=True
    )
    return provider, await make_core(f"[defaults]\n{SMALL}", backend=backend)


def _tone_at(path, start_s: float, end_s: float, candidates: tuple[int, ...]) -> int:
    from tests.test_media import SR, decoded_sound, dominant_hz

    sound = decoded_sound(path)
    assert len(sound) >= int(end_s * SR)
    return int(dominant_hz(sound, start_s, end_s, tuple(float(c) for c in candidates)))


@pytest.mark.timeout(60)
async def test_a_model_that_makes_sound_delivers_it_stitched_in_step(make_core, receiver, tmp_path) -> None:
    from bot.provider.render import tone_hz

    provider, core = await _sounding_simulator(make_core, tmp_path)
    try:
        job = await core.service.submit(
            parse_request("a bell ringing --duration 2 --resolution 832x480 --fps 16 --seed 4"), webhook_origin(receiver)
        )
        assert job.audio and job.segment_count == 2
        job = await _finish(core, receiver, job.id)
    finally:
        await provider.cleanup()
    assert job.state == "succeeded", job.error
    path = _delivered(receiver, job.id).path
    info = probe(path)
    assert info.has_audio and info.frames == 2 * 16 - 1
    assert abs(info.audio_duration_s - info.duration_s) <= 1 / 16
    first, second = tone_hz(4), tone_hz(5)  # the segments' seeds are 4 and 5
    assert _tone_at(path, 0.9, 0.99, (first, second)) == first
    assert _tone_at(path, 1.01, 1.1, (first, second)) == second


@pytest.mark.timeout(60)
async def test_silent_strips_the_sound_a_model_always_makes(make_core, receiver, tmp_path) -> None:
    provider, core = await _sounding_simulator(make_core, tmp_path)
    try:
        job = await core.service.submit(
            parse_request("a quiet library --duration 1 --resolution 832x480 --fps 16 --silent"), webhook_origin(receiver)
        )
        assert not job.audio
        job = await _finish(core, receiver, job.id)
    finally:
        await provider.cleanup()
    assert job.state == "succeeded", job.error
    info = probe(_delivered(receiver, job.id).path)
    assert not info.has_audio
    assert (info.width, info.height, info.frames) == (832, 480, 16)


@pytest.mark.timeout(60)
async def test_the_built_in_simulator_makes_sound_when_the_settings_say_so(make_core, receiver) -> None:
    core = await make_core(f"[defaults]\n{SMALL}", wan_audio=True)
    job = await core.service.submit(
        parse_request("waves on a beach --duration 1 --resolution 832x480 --fps 16"), webhook_origin(receiver)
    )
    assert job.audio
    job = await _finish(core, receiver, job.id)
    assert job.state == "succeeded", job.error
    info = probe(_delivered(receiver, job.id).path)
    assert info.has_audio and info.audio_duration_s == pytest.approx(1, abs=1 / 16)
