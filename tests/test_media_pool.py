"""The media pool: clip work runs in worker processes, and a worker that dies does not take a job with it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.errors import BackendError
from bot.grammar import parse_request
from bot.media import probe
from bot.media_pool import MediaPool, current_pid
from tests.clips import lavfi_clip
from tests.conftest import webhook_origin

pytestmark = pytest.mark.timeout(90)

SMALL = '[defaults]\nresolutions = ["832x480"]\nmax_duration_s = 20\nuser_concurrent_jobs = 0\nuser_daily_jobs = 0\n'


# Module-level, so the pool pickles them by name and a worker imports this module to run them.


def _exit_once(marker: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Kill this worker the first time (as a decoder crash or the OOM killer would), then call ``fn``."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
    return fn(*args)


def _exit_always(fn: Callable[..., Any], *args: Any) -> Any:
    os._exit(1)


class RecordingPool(MediaPool):
    """The real pool, noting which function each call ran and in which process."""

    def __init__(self) -> None:
        super().__init__(workers=1)
        self.calls: list[tuple[str, int]] = []

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = await super().run(fn, *args, **kwargs)
        self.calls.append((fn.__name__, await super().run(current_pid)))
        return result


class CrashingPool(MediaPool):
    """Every call of ``fn_name`` runs behind ``wrapper``, which kills its worker."""

    def __init__(self, fn_name: str, wrapper: Callable[..., Any], *leading: Any) -> None:
        super().__init__(workers=1)
        self.fn_name, self.wrapper, self.leading = fn_name, wrapper, leading
        self.crashed = 0

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if fn.__name__ != self.fn_name:
            return await super().run(fn, *args, **kwargs)
        self.crashed += 1
        return await super().run(self.wrapper, *self.leading, fn, *args)


async def test_a_probe_runs_in_a_worker_process_and_gives_what_it_gives_in_process(tmp_path: Path) -> None:
    clip = lavfi_clip(tmp_path / "clip.mp4", "testsrc2=s=320x240:r=16:d=1")
    pool = MediaPool(workers=1)
    try:
        assert await pool.run(current_pid) != os.getpid()
        assert await pool.run(probe, clip) == probe(clip)
        workers = pool.worker_pids()
        assert workers and os.getpid() not in workers
    finally:
        await pool.close()
    assert not any(_alive(pid) for pid in workers)


async def test_errors_in_a_worker_reach_the_caller_as_raised(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    pool = MediaPool(workers=1)
    try:
        with pytest.raises(BackendError, match="damaged or not a video"):
            await pool.run(probe, garbage)
        with pytest.raises(RuntimeError, match="StopIteration"):
            await pool.run(next, iter(()))
        assert await pool.run(current_pid) != os.getpid()  # the pool survived both
    finally:
        await pool.close()


async def test_a_crashed_worker_is_replaced_and_the_call_tried_once_more(tmp_path: Path) -> None:
    clip = lavfi_clip(tmp_path / "clip.mp4", "testsrc2=s=320x240:r=16:d=1")
    pool = MediaPool(workers=1)
    try:
        first = await pool.run(current_pid)
        info = await pool.run(_exit_once, str(tmp_path / "crashed"), probe, clip)
        assert info.frames == 16 and (tmp_path / "crashed").exists()
        assert await pool.run(current_pid) != first  # a fresh worker
    finally:
        await pool.close()


async def test_a_worker_that_dies_on_every_try_fails_the_call_clearly() -> None:
    pool = MediaPool(workers=1)
    try:
        with pytest.raises(BackendError, match="media worker stopped unexpectedly"):
            await pool.run(_exit_always, probe, Path("x.mp4"))
        assert await pool.run(current_pid) != os.getpid()  # later calls get a working pool
    finally:
        await pool.close()


async def test_every_media_step_of_a_stitched_job_runs_in_the_pool(make_core, receiver) -> None:
    core = await make_core(SMALL, start=False)
    pool = core.service.media = RecordingPool()
    await core.start()
    job = await core.service.submit(
        parse_request("a train crossing a bridge --duration 12 --resolution 832x480"), webhook_origin(receiver)
    )
    await receiver.wait_for(job.id, "delivered", 80)
    names = {name for name, _ in pool.calls}
    assert {"probe", "last_frame_png", "concat"} <= names
    assert all(pid != os.getpid() for _, pid in pool.calls)
    workers = pool.worker_pids()
    await core.stop()
    assert workers and not any(_alive(pid) for pid in workers)


async def test_a_job_whose_media_worker_crashes_once_still_completes(make_core, receiver, tmp_path: Path) -> None:
    core = await make_core(SMALL, start=False)
    pool = core.service.media = CrashingPool("probe", _exit_once, str(tmp_path / "crashed"))
    await core.start()
    job = await core.service.submit(parse_request("a fox --duration 2 --resolution 832x480"), webhook_origin(receiver))
    await receiver.wait_for(job.id, "delivered", 60)
    assert pool.crashed >= 1 and (tmp_path / "crashed").exists()
    job = await _terminal(core, job.id)
    assert job.state == "succeeded", job.error


async def test_a_job_whose_media_worker_always_crashes_fails_with_a_clear_message(make_core, receiver) -> None:
    core = await make_core(SMALL, start=False)
    core.service.media = CrashingPool("probe", _exit_always)
    await core.start()
    job = await core.service.submit(parse_request("a fox --duration 2 --resolution 832x480"), webhook_origin(receiver))
    job = await _terminal(core, job.id)
    assert job.state == "failed"
    assert job.error == "The video could not be processed: the media worker stopped unexpectedly"
    assert not job.counts_toward_quota


async def _terminal(core: Any, job_id: int, timeout_s: float = 60):
    for _ in range(int(timeout_s / 0.05)):
        job = await core.service.status(job_id)
        if job.job_state.terminal:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} stuck in {job.state}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
