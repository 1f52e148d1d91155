"""The runner: moves queued jobs through the backend to the person, and resumes after a crash.

Each job is driven by one asyncio task through ``queued → submitted → running → fetching →
delivering → succeeded``; every step is idempotent given the stored state, so a restart
simply drives each unfinished job again from where its row says it is, on the backend its row
names. A stored task id is polled, never resubmitted. Every write the runner makes goes through
``Database.persist``: while the store refuses writes a job waits at its next transition and
goes on once writes land, instead of dying half-moved. Dispatch is fair within each backend's
concurrency: among queued jobs it starts the oldest job of the user with the fewest jobs in
flight, so one person's ten jobs don't starve another's one. Each step, poll and dispatch
first waits its turn behind any request an adapter is acking (``bot.foreground``).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta, timezone
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.backends.base import Backend
from bot.database import Database
from bot.errors import BackendError, StoreUnavailable
from bot.media import check_clip, concat, first_frame_png, last_frame_png, probe, strip_audio
from bot.metrics import Metrics
from bot.catalog import ModelSpec
from bot.models import Clip, ClipInfo, GenerationSpec, Mode, Quality, TaskState, TaskStatus
from bot.notifier import PlatformRefused, ProgressUpdate, Stage
from bot.service import JobService
from storage.repository import StaleTransition
from storage.tables import Job, JobState, utcnow

log = logging.getLogger(__name__)

DELIVERY_ATTEMPTS = 4


class _DeliveryFailed(BackendError):
    """Every delivery attempt failed; ``received`` when the platform got the clip at least once
    (it answered with an error after taking it), in which case the job is not refunded."""

    def __init__(self, message: str, *, received: bool) -> None:
        super().__init__(message)
        self.received = received


class LeaseLapsed(Exception):
    """This process may no longer drive jobs (its engine lease lapsed); each row stays as it is
    for whichever process holds the lease now."""


@dataclass(frozen=True)
class RunnerOptions:
    poll_interval_s: float = 5.0
    first_poll_s: float = 0.05
    progress_interval_s: float = 3.0
    job_timeout_s: float = 1800.0
    max_download_bytes: int = 200 * 1024 * 1024
    delivery_backoff_s: float = 2.0
    tick_s: float = 2.0
    media_retention_days: int = 7
    progress_to_db: bool = False
    """Also write each (throttled) progress update to the job's row: where the process that
    shows progress is not the one that makes it (the Temporal engine)."""


class _Checkpoint:
    """The DeliveryCheckpoint handed to notifiers: a pending reference, committed on save."""

    def __init__(self, db: Database, job: Job) -> None:
        self._db = db
        self._job_id = job.id or 0
        self.pending_ref = job.delivery_pending_ref

    async def save(self, ref: str) -> None:
        await self._db.persist(self._db.repo.update, self._job_id, delivery_pending_ref=ref)
        self.pending_ref = ref


class Runner:
    def __init__(
        self,
        service: JobService,
        options: RunnerOptions,
        *,
        metrics: Metrics | None = None,
        platforms: Sequence[str] | None = None,
        only_job_ids: set[int] | None = None,
    ) -> None:
        """``platforms`` limits the runner to jobs whose notifiers this process has (None: the
        registered ones); ``only_job_ids`` lets the CLI drive just the job it made. The backends
        are the service's generators."""
        self.service = service
        self.db = service.db
        self.backends: dict[str, Backend] = {name: g.backend for name, g in service.generators.items()}
        self.options = options
        self.metrics = metrics or Metrics()
        self._platforms = platforms
        self._only = only_job_ids
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._owners: dict[int, str] = {}
        self._running_on: dict[int, str] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._scheduler = AsyncIOScheduler()
        self._last_progress: dict[int, float] = {}
        self.live_progress: dict[int, float] = {}
        """Each unfinished job's latest progress (0..1), before chat throttling; the admin page reads it."""
        self._served: dict[str, int] = {}
        self._probed: dict[Path, ClipInfo] = {}
        self._turn = 0
        self.may_drive: Callable[[], bool] = lambda: True
        """Asked before each step, provider submit and delivery (the engine lease's ``fresh``)."""
        service.attach_dispatcher(self)

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def platforms(self) -> list[str]:
        return list(self._platforms) if self._platforms is not None else list(self.service.notifiers)

    async def start(self) -> None:
        """Resume every job a previous process left in flight, then start dispatching."""
        for job in await self.db.run(self.db.repo.in_flight, self.platforms):
            if self._wanted(job):
                log.info("job %s: resuming from %s", job.id, job.state)
                self._spawn(job)
        self._scheduler.add_job(self.wake, "interval", seconds=self.options.tick_s, id="dispatch", replace_existing=True)
        self._scheduler.add_job(self.clean_media, "interval", hours=1, id="clean-media", replace_existing=True)
        self._scheduler.start()
        self._loop_task = asyncio.create_task(self._dispatch_loop(), name="videobot-dispatch")
        self.wake()

    async def stop(self) -> None:
        """Stop dispatching and abandon running tasks; their rows say where to resume."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        tasks = [t for t in (self._loop_task, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def wake(self, job: Job | None = None) -> None:
        self._wake.set()

    async def cancel(self, job: Job) -> None:
        """Stop driving a job that was just canceled, and tell the backend."""
        task = self._tasks.get(job.id or 0)
        if task is not None:
            task.cancel()
        backend = self.backends.get(job.backend)
        if job.task_id and backend is not None:
            await backend.cancel(job.task_id)

    async def wait_idle(self) -> None:
        """Return once nothing is queued or running for this runner (tests and the CLI use it)."""
        while True:
            heads = await self.db.run(self.db.repo.queued_heads, self.platforms)
            if not self._tasks and not any(self._wanted(j) for j in heads):
                return
            await asyncio.sleep(0.05)

    @property
    def active_count(self) -> int:
        return len(self._tasks)

    # -- dispatch ---------------------------------------------------------------------------

    def _wanted(self, job: Job) -> bool:
        return self._only is None or job.id in self._only

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._fill()
            except Exception:
                log.exception("dispatch failed; retrying on the next tick")

    async def _fill(self) -> None:
        await self.service.foreground.turn()
        if not self.may_drive():
            return
        busy = Counter(self._running_on.values())
        free = {name: b.max_concurrency - busy[name] for name, b in self.backends.items()}
        if all(n <= 0 for n in free.values()):
            return
        heads = [j for j in await self.db.run(self.db.repo.queued_heads, self.platforms, self._tasks) if self._wanted(j)]
        in_flight = Counter(self._owners.values())
        while heads:
            # round-robin: fewest jobs in flight first, then whoever was served longest ago
            heads.sort(key=lambda j: (in_flight[_user(j)], self._served.get(_user(j), -1), j.id))
            job = heads.pop(0)
            if job.backend in free and free[job.backend] <= 0:
                continue
            in_flight[_user(job)] += 1
            self._turn += 1
            self._served[_user(job)] = self._turn
            self._spawn(job)
            if job.backend in free:
                free[job.backend] -= 1

    def _spawn(self, job: Job) -> None:
        job_id = job.id or 0
        self._owners[job_id] = _user(job)
        self._running_on[job_id] = job.backend
        self._tasks[job_id] = asyncio.create_task(self._drive(job), name=f"videobot-job-{job_id}")

    def _finished(self, job_id: int) -> None:
        self._tasks.pop(job_id, None)
        self._owners.pop(job_id, None)
        self._running_on.pop(job_id, None)
        self._last_progress.pop(job_id, None)
        self.live_progress.pop(job_id, None)
        for path in [p for p in self._probed if p.parent.name == str(job_id)]:
            del self._probed[path]
        self.wake()

    # -- one job ----------------------------------------------------------------------------

    async def _drive(self, job: Job) -> None:
        job_id = job.id or 0
        try:
            while not job.job_state.terminal:
                started = time.perf_counter()
                stage = job.state
                job = await self._step(job)
                self.metrics.stage_seconds.labels(stage=stage).observe(time.perf_counter() - started)
            self.metrics.jobs_finished.labels(state=job.state).inc()
        except StaleTransition:
            log.info("job %s: changed elsewhere (canceled?); stopping", job_id)
        except LeaseLapsed:
            log.warning("job %s: left %s; this process no longer holds the engine lease", job_id, job.state)
        except asyncio.CancelledError:
            log.info("job %s: stopped", job_id)
        except _DeliveryFailed as error:
            await self._fail(job_id, str(error), refund=not error.received)
        except BackendError as error:
            self.metrics.backend_errors.labels(backend=job.backend, retryable=str(error.retryable)).inc()
            await self._fail(job_id, str(error))
        except Exception:
            log.exception("job %s: unexpected error", job_id)
            await self._fail(job_id, f"Something went wrong on our side with job #{job_id}. It was not counted.")
        finally:
            self._finished(job_id)

    async def step(self, job: Job) -> Job:
        """One idempotent step of ``job`` from its stored state; what another engine's workers
        call (the Temporal activities), exactly as this runner's own tasks do."""
        return await self._step(job)

    async def fail(self, job_id: int, message: str, *, refund: bool = True) -> None:
        """Mark the job failed and tell the person (see ``_fail``)."""
        await self._fail(job_id, message, refund=refund)

    async def resubmit(self, job: Job) -> Job:
        """Start the job's current segment again from its stored state. Only for a generator
        whose task died with its process and costs nothing to redo (a GPU worker killed mid-run);
        a provider's stored task is always polled instead."""
        return await self._submit(job, job.job_state)

    def forget(self, job_id: int) -> None:
        """Drop what this process kept about a job that another engine's step just finished."""
        self._last_progress.pop(job_id, None)
        self.live_progress.pop(job_id, None)
        for path in [p for p in self._probed if p.parent.name == str(job_id)]:
            del self._probed[path]

    def _fence(self) -> None:
        if not self.may_drive():
            raise LeaseLapsed

    async def _step(self, job: Job) -> Job:
        await self.service.foreground.turn()
        self._fence()
        state = job.job_state
        if state is JobState.QUEUED:
            return await self._submit(job, JobState.QUEUED)
        if state in (JobState.SUBMITTED, JobState.RUNNING):
            return await self._await_task(job)
        if state is JobState.FETCHING:
            return await self._fetch(job)
        if state is JobState.DELIVERING:
            return await self._deliver(job)
        raise AssertionError(f"no step for {state}")

    def _backend(self, job: Job) -> Backend:
        backend = self.backends.get(job.backend)
        if backend is None:
            raise BackendError(
                f"Job #{job.id} was made for the generator “{job.backend}”, which this bot no longer runs. "
                "It was not counted."
            )
        return backend

    def _model(self, job: Job) -> ModelSpec:
        return self._backend(job).models[Mode(job.mode)]

    async def _submit(self, job: Job, current: JobState) -> Job:
        """Start the task for ``job.segment_index``; the task id and segment are stored in one write."""
        spec = await self._spec(job)
        self._fence()
        task_id = await self._backend(job).submit(spec)
        log.info("job %s: segment %s/%s submitted as task %s", job.id, job.segment_index + 1, job.segment_count, task_id)
        job = await self.db.persist(
            self.db.repo.transition,
            job.id or 0,
            JobState.SUBMITTED,
            expect=[current],
            detail=f"segment {job.segment_index + 1}: task {task_id}",
            task_id=task_id,
            segment_index=job.segment_index,
            video_url=None,
        )
        await self._progress(job, Stage.GENERATING, self._overall(job, 0.0), force=True)
        return job

    async def _await_task(self, job: Job) -> Job:
        delay = self.options.first_poll_s
        backend = self._backend(job)
        while True:
            await self.service.foreground.turn()
            self._fence()
            await self._still_wanted(job, backend)
            state = await backend.poll(job.task_id or "")
            if state.status is TaskStatus.SUCCEEDED:
                where = state.video_url or (f"file://{state.video_path}" if state.video_path else None)
                return await self.db.persist(
                    self.db.repo.transition,
                    job.id or 0,
                    JobState.FETCHING,
                    expect=[JobState.SUBMITTED, JobState.RUNNING],
                    video_url=where,
                    progress=self._overall(job, 1.0),
                )
            if state.status is TaskStatus.FAILED:
                raise BackendError(f"The video service could not make this video: {state.error or 'no reason given'}.")
            if state.status is TaskStatus.RUNNING and job.job_state is JobState.SUBMITTED:
                job = await self.db.persist(
                    self.db.repo.transition, job.id or 0, JobState.RUNNING, expect=[JobState.SUBMITTED]
                )
            await self._progress(job, Stage.GENERATING, self._overall(job, state.progress))
            if self._time_left(job) <= 0:
                await backend.cancel(job.task_id or "")
                raise self._timed_out()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.options.poll_interval_s)

    async def _still_wanted(self, job: Job, backend: Backend) -> None:
        """Stop (``StaleTransition``) a job finished elsewhere while it generates: canceled from
        another process sharing the database (a replica, the CLI). Its provider task is
        canceled too, so it is not billed to the end."""
        try:
            stored = await self.db.run(self.db.repo.get, job.id or 0)
        except StoreUnavailable:  # it cannot be read now; the next poll asks again
            return
        if stored is not None and not stored.job_state.terminal:
            return
        log.info("job %s: %s elsewhere; canceling its task", job.id, stored.state if stored else "deleted")
        try:
            await backend.cancel(job.task_id or "")
        except Exception:
            log.warning("job %s: could not cancel task %s", job.id, job.task_id, exc_info=True)
        raise StaleTransition(f"job {job.id} is {stored.state if stored else 'missing'}")

    async def _fetch(self, job: Job) -> Job:
        segment = self._segment_path(job, job.segment_index)
        if not (segment.exists() and await self._valid_segment(segment, job)):
            await self._progress(job, Stage.FETCHING, self._overall(job, 1.0), force=True)
            try:
                async with asyncio.timeout(max(self._time_left(job), 0.0)):
                    await self._backend(job).fetch(self._finished_state(job), segment, self.options.max_download_bytes)
            except TimeoutError:
                raise self._timed_out() from None
            self._probed[segment] = await self._checked(segment, job)
        if job.segment_index + 1 < job.segment_count:
            following = job.model_copy(update={"segment_index": job.segment_index + 1})
            return await self._submit(following, JobState.FETCHING)
        output = self._segment_path(job, 0)
        if job.segment_count > 1 or job.kind == "extend":
            output = await self._assemble(job)
        if not job.audio:  # --silent (or a model not meant to make sound), yet the clip may have some
            known = self._probed.get(output)
            if known is None or known.has_audio:
                output = await self.service.media.run(strip_audio, output, self._job_dir(job) / "clip-silent.mp4")
        shape: dict[str, int] = {}
        if not self._model(job).exact:  # a hosted model chose the size and rate: record them
            info = self._probed.get(output) or await self.service.media.run(probe, output)
            self._probed[output] = info
            shape = {"width": info.width, "height": info.height, "fps": round(info.fps)}
        return await self.db.persist(
            self.db.repo.transition,
            job.id or 0,
            JobState.DELIVERING,
            expect=[JobState.FETCHING],
            output_path=str(output),
            progress=1.0,
            **shape,
        )

    async def _deliver(self, job: Job) -> Job:
        notifier = self.service.notifiers.get(job.platform)
        if notifier is None:
            raise RuntimeError(f"no notifier for platform {job.platform}")
        output = Path(job.output_path or "")
        info = self._probed.pop(output, None)
        if info is None:  # resumed after a restart: nothing probed in this process yet
            info = await self.service.media.run(probe, output)
        clip = Clip(path=output, info=info, caption=self.caption(job))
        await self._progress(job, Stage.UPLOADING, 100, force=True)
        checkpoint = _Checkpoint(self.db, job)
        received = False
        for attempt in range(1, DELIVERY_ATTEMPTS + 1):
            try:
                self._fence()
                ref = await notifier.deliver(job, clip, checkpoint)
                break
            except (BackendError, LeaseLapsed, asyncio.CancelledError):
                raise
            except Exception as error:
                received = received or isinstance(error, PlatformRefused)
                if attempt == DELIVERY_ATTEMPTS:
                    if received:
                        raise _DeliveryFailed(
                            f"The video was sent but the receiving end refused it ({error}); it counts as made.",
                            received=True,
                        ) from error
                    raise BackendError(f"The video was made but could not be posted: {error}") from error
                log.warning("job %s: delivery attempt %s failed: %s", job.id, attempt, error)
                await asyncio.sleep(self.options.delivery_backoff_s * 2 ** (attempt - 1))
        return await self.db.persist(
            self.db.repo.transition, job.id or 0, JobState.SUCCEEDED, expect=[JobState.DELIVERING], delivered_ref=ref
        )

    async def _fail(self, job_id: int, message: str, *, refund: bool = True) -> None:
        """Mark the job failed and tell the person why. It is not counted against quotas
        (``refund``) unless the person may have the clip: a platform took it, then refused."""
        if not self.may_drive():  # the lease holder decides what became of it
            return
        try:
            job = await self.db.persist(
                self.db.repo.transition,
                job_id,
                JobState.FAILED,
                expect=[JobState.QUEUED, JobState.SUBMITTED, JobState.RUNNING, JobState.FETCHING, JobState.DELIVERING],
                detail=message,
                error=message,
                counts_toward_quota=not refund,
            )
        except StaleTransition:
            return
        log.info("job %s: failed: %s", job_id, message)
        self.metrics.jobs_finished.labels(state=JobState.FAILED.value).inc()
        notifier = self.service.notifiers.get(job.platform)
        if notifier is not None:
            try:
                await notifier.fail(job, message)
            except Exception:
                log.warning("job %s: could not report the failure", job_id, exc_info=True)

    # -- helpers ----------------------------------------------------------------------------

    def caption(self, job: Job) -> str:
        words = f"“{job.prompt}”" if len(job.prompt) <= 300 else f"“{job.prompt[:297]}…”"
        backend = self.backends.get(job.backend)
        return (
            f"{words} · {job.duration_s} s · {job.width}x{job.height} · {job.fps} fps · "
            f"seed {job.seed} · {backend.label if backend else job.backend}"
            + (" · 🔁 loop" if job.loop else "")
            + (" · multi-shot" if job.shots == "multi" else "")
        )

    async def _progress(self, job: Job, stage: Stage, percent: float, *, force: bool = False) -> None:
        job_id = job.id or 0
        self.live_progress[job_id] = percent if percent <= 1 else percent / 100
        now = time.monotonic()
        if not force and now - self._last_progress.get(job_id, 0.0) < self.options.progress_interval_s:
            return
        self._last_progress[job_id] = now
        if self.options.progress_to_db:
            await self.db.persist(self.db.repo.update, job_id, progress=self.live_progress[job_id])
        notifier = self.service.notifiers.get(job.platform)
        if notifier is None:
            return
        update = ProgressUpdate(
            stage, percent=int(percent * 100) if percent <= 1 else int(percent),
            segment=job.segment_index + 1, segments=job.segment_count,
        )
        try:
            await notifier.progress(job, update)
        except Exception:
            log.warning("job %s: progress update failed", job_id, exc_info=True)

    def _time_left(self, job: Job) -> float:
        """Seconds left of the job timeout, which covers a segment's generation and its download."""
        started = job.submitted_at or utcnow()
        if started.tzinfo is None:  # SQLite hands datetimes back naive; they are UTC
            started = started.replace(tzinfo=timezone.utc)
        return self.options.job_timeout_s - (utcnow() - started).total_seconds()

    def _timed_out(self) -> BackendError:
        return BackendError(
            f"The video service took longer than {int(self.options.job_timeout_s)} s; the job was stopped."
        )

    def _overall(self, job: Job, fraction: float) -> float:
        return (job.segment_index + max(0.0, min(fraction, 1.0))) / job.segment_count

    def _segment_durations(self, job: Job) -> list[int]:
        """The model's own lengths (10 + 10 for 20 s on a 5-or-10 s model), as the service planned."""
        planned = self._model(job).durations.segments(job.duration_s)
        if planned is not None and len(planned) == job.segment_count:
            return planned
        count = job.segment_count
        base, extra = divmod(job.duration_s, count)
        return [base + (1 if i < extra else 0) for i in range(count)]

    def _job_dir(self, job: Job) -> Path:
        return self.service.media_dir / "jobs" / str(job.id)

    def _segment_path(self, job: Job, index: int) -> Path:
        return self._job_dir(job) / f"segment-{index}.mp4"

    def _finished_state(self, job: Job) -> TaskState:
        where = job.video_url or ""
        if where.startswith("file://"):
            return TaskState(TaskStatus.SUCCEEDED, 1.0, video_path=Path(where.removeprefix("file://")))
        return TaskState(TaskStatus.SUCCEEDED, 1.0, video_url=where)

    async def _checked(self, path: Path, job: Job) -> ClipInfo:
        """Probe a fetched segment (in the media pool) and refuse it unless it is what was asked."""
        info = await self.service.media.run(probe, path)
        duration = self._segment_durations(job)[job.segment_index]
        if self._model(job).exact:
            check_clip(info, duration_s=duration, width=job.width, height=job.height, fps=job.fps)
        else:
            check_clip(info, duration_s=duration)
        return info

    async def _valid_segment(self, path: Path, job: Job) -> bool:
        """A segment fetched before a crash need not be fetched again."""
        try:
            self._probed[path] = await self._checked(path, job)
        except BackendError:
            return False
        return True

    async def _spec(self, job: Job) -> GenerationSpec:
        image: bytes | None = None
        mime: str | None = None
        if job.segment_index > 0:
            previous = self._segment_path(job, job.segment_index - 1)
            image, mime = await self.service.media.run(last_frame_png, previous), "image/png"
        elif job.image_path:
            image, mime = await asyncio.to_thread(Path(job.image_path).read_bytes), job.image_mime
        # a continuation of a text-to-video job starts from a frame: the image model makes it
        model = self._backend(job).models[Mode.IMAGE_TO_VIDEO if image is not None else Mode.TEXT_TO_VIDEO]
        end_image, end_mime = await self._end_frame(job) if image is not None else (None, None)
        if end_image is not None and not model.end_frame:
            raise BackendError(
                f"{model.name} takes no end frame (the generator was reconfigured since this job was made), "
                "so this clip cannot end on the frame asked for."
            )
        return GenerationSpec(
            prompt=job.prompt,
            width=job.width,
            height=job.height,
            duration_s=self._segment_durations(job)[job.segment_index],
            fps=job.fps,
            seed=(job.seed + job.segment_index) % 2**31,
            negative_prompt=job.negative_prompt,
            quality=Quality(job.quality),
            image=image,
            image_mime=mime,
            model="" if model.exact else model.name,
            audio=job.audio and model.audio,
            end_image=end_image,
            end_image_mime=end_mime,
            shots=job.shots if model.multi_shot else "single",
        )

    async def _end_frame(self, job: Job) -> tuple[bytes | None, str | None]:
        """The frame the job's last segment ends on; earlier segments end where they like.

        An end image is that frame. A loop ends on the clip's own first frame: the start image
        when one segment makes the whole clip, else the first frame of the first segment as it
        was made (a model need not start exactly on the image it was given)."""
        if job.segment_index != job.segment_count - 1:
            return None, None
        if job.end_image_path:
            return await asyncio.to_thread(Path(job.end_image_path).read_bytes), job.end_image_mime
        if not job.loop:
            return None, None
        if job.segment_index == 0:
            if not job.image_path:
                return None, None
            return await asyncio.to_thread(Path(job.image_path).read_bytes), job.image_mime
        return await self.service.media.run(first_frame_png, self._segment_path(job, 0)), "image/png"

    async def _assemble(self, job: Job) -> Path:
        """The clip to deliver: one segment as it is, several (or an extension) joined."""
        parts = [self._segment_path(job, i) for i in range(job.segment_count)]
        if job.kind == "extend" and job.parent_id is not None:
            parent = await self.db.run(self.db.repo.get, job.parent_id)
            if parent is not None and parent.output_path and Path(parent.output_path).exists():
                parts.insert(0, Path(parent.output_path))
        if len(parts) == 1:
            return parts[0]
        return await self.service.media.run(concat, parts, self._job_dir(job) / "clip.mp4")

    async def clean_media(self) -> None:
        """Remove media of jobs finished longer ago than the retention; rows stay for reports."""
        cutoff = utcnow() - timedelta(days=self.options.media_retention_days)
        jobs = await self.db.run(self.db.repo.finished_with_media, cutoff)
        for job in jobs:
            await asyncio.to_thread(shutil.rmtree, self._job_dir(job), True)
            await self.db.persist(self.db.repo.update, job.id or 0, output_path=None)
        images = 0
        for kept in ("images", "gpu"):  # uploaded images; clips a local GPU made, copied to their jobs
            images += await asyncio.to_thread(_remove_older_than, self.service.media_dir / kept, cutoff.timestamp())
        if jobs or images:
            log.info("removed media of %s finished jobs and %s images and GPU clips", len(jobs), images)


def _user(job: Job) -> str:
    return f"{job.platform}:{job.user_id}"


def _remove_older_than(folder: Path, cutoff: float) -> int:
    removed = 0
    for path in folder.glob("*") if folder.exists() else ():
        if path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
