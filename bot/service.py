"""JobService: the one entrance every platform uses to make, inspect and change jobs.

``submit`` validates the request against the limits in force where it was made, checks quotas
and inserts the job in one transaction (so 50 simultaneous submits under a limit of 5 admit
exactly 5), acknowledges through the platform's notifier and wakes the dispatcher. What runs
the jobs (``Dispatcher``) stays behind this interface, so it can move to another engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from sqlmodel import Session

from bot.backends.base import Backend
from bot.catalog import TIER_SIZES, ModelSpec, models_with, tier_of
from bot.database import Database
from bot.errors import InvalidRequest, JobNotFound, LimitExceeded, NotAllowed, StoreUnavailable
from bot.limits import EffectiveLimits, LimitsConfig, LimitsStore, describe_reset, next_reset, window_start
from bot.media import last_frame_png
from bot.media_pool import MediaPool
from bot.models import ImageInput, Mode, Origin, Quality, Resolution, VideoRequest
from bot.notifier import Notifier, ProgressUpdate, Stage
from storage.repository import JobRepository, StaleTransition, UsageCounts
from storage.tables import ACTIVE_STATES, Job, JobState, utcnow

log = logging.getLogger(__name__)

MAX_SEED = 2**31 - 1
MAX_JOB_ID = 2**63 - 1
EXTENSION_MAX_S = 10


class Dispatcher(Protocol):
    """What runs jobs: told when one is queued (``wake(job)``, after its row is committed;
    ``wake()`` alone: look for work) or canceled."""

    def wake(self, job: Job | None = None) -> None: ...

    async def cancel(self, job: Job) -> None: ...


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Generator:
    """A backend as the service offers it: its name, the tier it makes unless asked, and the
    price per second the admin set for it (None: the model table's list price)."""

    backend: Backend
    tier: str = "720p"
    price_per_s: float | None = None


@dataclass(frozen=True)
class _Plan:
    """How a request will be made: on which generator and model, at what size and rate, in
    which segments, at what cost."""

    name: str
    model: ModelSpec
    request: VideoRequest
    segments: list[int]
    cost_usd: float


class JobService:
    def __init__(
        self,
        db: Database,
        limits: LimitsStore,
        *,
        generators: Mapping[str, Generator],
        default_generator: str,
        media_dir: Path,
        media: MediaPool | None = None,
    ) -> None:
        """``generators`` are the backends by name (one, or the limits file's ``[backends]``);
        ``default_generator`` serves a scope that names none. ``media`` runs the clip work
        (probe, join, shrink) out of this process; the runner and the adapters use it too."""
        self.db = db
        self.limits = limits
        self.generators = dict(generators)
        self.default_generator = default_generator
        self.media_dir = media_dir
        self.media = media or MediaPool()
        self.foreground = db.foreground
        """Where adapters say a request is being acked and the runner waits its turn (``bot.foreground``)."""
        self.notifiers: dict[str, Notifier] = {}
        self.dispatcher: Dispatcher | None = None

    # -- wiring -----------------------------------------------------------------------------

    def register_notifier(self, notifier: Notifier) -> None:
        self.notifiers[notifier.platform] = notifier

    def attach_dispatcher(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def limits_for(self, origin: Origin) -> EffectiveLimits:
        return self.limits.current().resolve(origin)

    def is_admin(self, origin: Origin) -> bool:
        return self.limits.current().is_admin(origin)

    # -- making jobs ------------------------------------------------------------------------

    async def submit(
        self,
        request: VideoRequest,
        origin: Origin,
        *,
        dedup_key: str | None = None,
        kind: str = "generate",
        parent_id: int | None = None,
    ) -> Job:
        """Validate, admit under the limits, store, acknowledge and queue one job.

        Raises ``InvalidRequest``, ``LimitExceeded`` or ``NotAllowed`` with a message for the
        person, ``StoreUnavailable`` when the job could not be stored (nothing charged); a repeated ``dedup_key`` (a platform retrying the same event) returns the job
        that key already made instead of making a second one.
        """
        config = self.limits.current()
        admin = config.is_admin(origin)
        limits = config.resolve(origin)
        plan = self._plan(request, limits, config)
        request = plan.request
        self._validate(request, origin, limits, admin=admin, model=plan.model)
        job = self._new_job(plan, origin, dedup_key=dedup_key, kind=kind, parent_id=parent_id)
        if request.image is not None:
            try:
                job.image_path, job.image_mime = await asyncio.to_thread(self._store_image, request.image)
            except OSError as error:  # a full or read-only disk: nothing stored, nothing charged
                raise StoreUnavailable(f"cannot store the image: {error.strerror or error}") from error
        if request.end_image is not None:
            try:
                job.end_image_path, job.end_image_mime = await asyncio.to_thread(self._store_image, request.end_image)
            except OSError as error:
                raise StoreUnavailable(f"cannot store the end image: {error.strerror or error}") from error

        def admit(session: Session) -> None:
            if not admin:
                self._admit(session, origin, limits, config, job.cost_usd)

        job, created, position = await self.db.interactive(self.db.repo.create, job, admit)
        if not created:
            return job
        job = await self._acknowledge(job, position)
        if self.dispatcher is not None:
            self.dispatcher.wake(job)
        return job

    async def retry(self, job_id: int, by: Origin) -> Job:
        """Run a failed or canceled job again, as it was asked."""
        parent = await self._owned(job_id, by)
        if parent.job_state not in (JobState.FAILED, JobState.CANCELED):
            raise InvalidRequest(f"Job #{job_id} is {parent.state}; only failed or canceled jobs can be retried.")
        return await self.submit(await self._request_of(parent), by, kind="retry", parent_id=parent.id)

    async def reroll(self, job_id: int, by: Origin) -> Job:
        """The same request with a new seed: another take."""
        parent = await self._owned(job_id, by, owner_only=False)
        request = await self._request_of(parent)
        return await self.submit(
            dataclasses.replace(request, seed=random.randint(0, MAX_SEED)),
            by,
            kind="reroll",
            parent_id=parent.id,
        )

    async def extend(self, job_id: int, by: Origin, seconds: int = 5) -> Job:
        """Continue a finished clip from its last frame; the result is the whole, longer clip."""
        parent = await self._owned(job_id, by, owner_only=False)
        if parent.loop:
            raise InvalidRequest(
                f"Job #{job_id} is a loop: it ends on its own first frame so it plays seamlessly on repeat, "
                "and an extension would break that. Make a longer loop instead (--loop --duration N)."
            )
        if parent.job_state is not JobState.SUCCEEDED or not parent.output_path or not Path(parent.output_path).exists():
            raise InvalidRequest(f"Job #{job_id} has no finished clip to extend.")
        if not 1 <= seconds <= EXTENSION_MAX_S:
            raise InvalidRequest(f"An extension is 1 to {EXTENSION_MAX_S} seconds (got {seconds}).")
        frame = await self.media.run(last_frame_png, Path(parent.output_path))
        image = ImageInput(data=frame, mime="image/png", width=parent.width, height=parent.height)
        request = dataclasses.replace(
            await self._request_of(parent, image=image), duration_s=seconds, end_image=None, loop=False
        )
        return await self.submit(request, by, kind="extend", parent_id=parent.id)

    # -- changing and reading jobs ----------------------------------------------------------

    async def cancel(self, job_id: int, by: Origin) -> Job:
        """Stop a job. Only its owner or an admin may; a job canceled before it started is not counted."""
        job = await self._owned(job_id, by)
        if job.job_state.terminal:
            raise InvalidRequest(f"Job #{job_id} already {job.state}.")
        try:
            canceled = await self.db.interactive(
                self.db.repo.transition,
                job_id,
                JobState.CANCELED,
                expect=ACTIVE_STATES,
                detail=f"canceled by {by.user_id}",
                counts_toward_quota=job.job_state is not JobState.QUEUED,
                error=f"Canceled by {by.user_name or by.user_id}",
            )
        except StaleTransition:
            job = await self.status(job_id)
            raise InvalidRequest(f"Job #{job_id} already {job.state}.") from None
        if self.dispatcher is not None:
            await self.dispatcher.cancel(canceled)
        notifier = self.notifiers.get(canceled.platform)
        if notifier is not None:
            try:
                await notifier.progress(canceled, ProgressUpdate(Stage.CANCELED))
            except Exception:  # the cancel stands even if the platform is unreachable
                log.warning("job %s: could not show the cancel", job_id, exc_info=True)
        return canceled

    async def status(self, job_id: int) -> Job:
        if not 1 <= job_id <= MAX_JOB_ID:  # a typed option or button may carry any integer
            raise JobNotFound(f"There is no job #{job_id if job_id.bit_length() < 64 else '(a very large number)'}.")
        job = await self.db.interactive(self.db.repo.get, job_id)
        if job is None:
            raise JobNotFound(f"There is no job #{job_id}.")
        return job

    async def active_jobs(self, origin: Origin) -> list[Job]:
        """The person's unfinished jobs; an admin sees the whole workspace's."""
        if self.is_admin(origin):
            return await self.db.run(self.db.repo.active, origin.platform, workspace_id=origin.workspace_id)
        return await self.db.run(self.db.repo.active, origin.platform, user_id=origin.user_id)

    async def usage_text(self, origin: Origin) -> str:
        """A usage report: the person's own, or everyone's in the workspace for an admin."""
        config = self.limits.current()
        limits = config.resolve(origin)
        now = utcnow()
        day, month = self._windows(now, config)
        admin = config.is_admin(origin)
        rows = await self.db.run(
            self.db.repo.usage_by_user,
            platform=origin.platform,
            workspace_id=origin.workspace_id,
            day_start=day,
            month_start=month,
        )
        if not admin:
            rows = [r for r in rows if r.user_id == origin.user_id]
        mine = next((r for r in rows if r.user_id == origin.user_id), None)
        lines = [
            f"Your usage: {mine.jobs_today if mine else 0} videos today"
            + (f" of {limits.user_daily_jobs}" if limits.user_daily_jobs else "")
            + f", {mine.jobs_month if mine else 0} this month, ${mine.spend_month if mine else 0:.2f} spent"
            + (f" of ${limits.user_monthly_budget_usd:.2f}" if limits.user_monthly_budget_usd else "")
            + ".",
            f"Daily quota resets {describe_reset(next_reset(now, 'day', config.timezone), now, config.timezone)}.",
        ]
        if admin:
            total = sum(r.spend_month for r in rows)
            lines.append(f"Workspace this month: {sum(r.jobs_month for r in rows)} videos, ${total:.2f}.")
            for r in rows[:25]:
                lines.append(
                    f"  {r.user_name or r.user_id}: {r.jobs_today} today, {r.jobs_month} this month, ${r.spend_month:.2f}"
                )
        return "\n".join(lines)

    # -- internals --------------------------------------------------------------------------

    def offered(self, limits: EffectiveLimits) -> list[str]:
        """The generators a person may name with ``--model`` where ``limits`` apply."""
        return [name for name in self.generators if not limits.backends or name in limits.backends]

    def generator_for(self, origin: Origin) -> str:
        """The generator a request from ``origin`` runs on when it names none."""
        return self._default_name(self.limits_for(origin))

    def _default_name(self, limits: EffectiveLimits) -> str:
        return limits.backend if limits.backend in self.generators else self.default_generator

    def help_text(self, origin: Origin) -> str:
        """The grammar's help plus what the generator used here accepts, and the others offered."""
        from bot.grammar import HELP_TEXT

        limits = self.limits_for(origin)
        name = self.generator_for(origin)
        backend = self.generators[name].backend
        lines = [HELP_TEXT, "", f"Generator here: {name} ({backend.label})."]
        # One line per model, though text and image modes often share one.
        for model in {id(m): m for m in backend.models.values()}.values():
            if not model.exact:
                lines.append(model.describe())
        others = [n for n in self.offered(limits) if n != name]
        if others:
            lines.append(f"Also offered here with --model: {', '.join(others)}.")
        return "\n".join(lines)

    def _plan(self, request: VideoRequest, limits: EffectiveLimits, config: LimitsConfig) -> _Plan:
        """Choose the generator and fit the request to its model; refuse what it cannot make."""
        offered = self.offered(limits)
        if request.backend is not None:
            if request.backend not in offered:
                raise InvalidRequest(
                    f"--model {request.backend} is not offered here; choose {', '.join(offered) or 'none'}."
                )
            name = request.backend
        else:
            name = self._default_name(limits)
        generator = self.generators[name]
        model = generator.backend.models[request.mode]
        size = request.resolution
        if not request.exact_size:
            size = TIER_SIZES[request.tier or generator.tier].get(request.aspect, size)
        fps = request.fps
        if fps is None:
            fps = limits.fps[0] if model.exact else next((f for f in model.fps if f in limits.fps), model.fps[0])
        model.check(mode=request.mode, size=size, duration_s=request.duration_s, fps=fps)
        segments = model.durations.segments(request.duration_s) or [request.duration_s]
        if request.shots == "multi":
            self._check_multi_shot(name, model, offered)
        if request.keyframed:
            self._check_end_frame(name, generator, offered)
            if request.loop and request.image is None and len(segments) == 1:
                segments = self._loop_in_two(model, request.duration_s)
        request = dataclasses.replace(request, resolution=size, fps=fps, backend=name)
        price = config.price_per_second(name)
        if price is None:
            price = generator.price_per_s if generator.price_per_s is not None else model.price(size)
        return _Plan(name, model, request, segments, round(request.duration_s * price, 4))

    def _check_multi_shot(self, name: str, model: ModelSpec, offered: list[str]) -> None:
        """Refuse ``--shots multi`` before admission where the model makes one shot a clip."""
        if model.multi_shot:
            return
        here = [n for n in offered if n != name and any(m.multi_shot for m in self.generators[n].backend.models.values())]
        hint = f" Here, try --model {' or --model '.join(here)}." if here else ""
        raise InvalidRequest(
            f"--shots multi needs a model that cuts a clip into several shots: {', '.join(models_with('multi_shot'))}. "
            f"The generator {name} runs {model.name}, which makes one shot a clip.{hint}"
        )

    def _check_end_frame(self, name: str, generator: Generator, offered: list[str]) -> None:
        """Refuse an end image or ``--loop`` before admission where the image model (which makes
        the segment that ends on the frame) takes no end frame, naming what to configure."""
        model = generator.backend.models.get(Mode.IMAGE_TO_VIDEO)
        if model is not None and model.end_frame:
            return
        here = [
            n for n in offered
            if n != name and (m := self.generators[n].backend.models.get(Mode.IMAGE_TO_VIDEO)) is not None and m.end_frame
        ]
        hint = f" Here, try --model {' or --model '.join(here)}." if here else ""
        runs = f"runs {model.name}, which takes" if model is not None else "makes no image-to-video, so it takes"
        raise InvalidRequest(
            f"An end frame (an end image, or --loop) needs a model that takes one. The generator {name} {runs} "
            f"no end frame.{hint} An admin can configure a backend whose image model takes end frames: "
            f"{', '.join(models_with('end_frame'))}, or our own generators (simulator, worker, diffusers)."
        )

    @staticmethod
    def _loop_in_two(model: ModelSpec, duration_s: int) -> list[int]:
        """A loop without an image is made in two segments: the first sets the opening frame, the
        second returns to it. Refused when the duration does not split into the model's lengths."""
        parts = [duration_s - duration_s // 2, duration_s // 2]
        if all(model.durations.accepts(p) for p in parts):
            return parts
        raise InvalidRequest(
            f"A loop without an image is made in two parts, the second returning to the first's opening frame, "
            f"and {duration_s} s does not split into {model.name}'s lengths ({model.durations.describe()}). "
            "Attach an image to loop on, or choose a longer --duration."
        )

    def _validate(
        self, request: VideoRequest, origin: Origin, limits: EffectiveLimits, *, admin: bool, model: ModelSpec
    ) -> None:
        if limits.allowed_channels and origin.channel_id not in limits.allowed_channels and not admin:
            raise NotAllowed("Videos can't be made in this channel. Ask an admin which channels allow it.")
        if len(request.prompt) > limits.max_prompt_chars:
            raise InvalidRequest(
                f"Your prompt is {len(request.prompt):,} characters; the limit is {limits.max_prompt_chars:,}."
            )
        lowered = request.prompt.lower()
        for term in limits.blocked_terms:
            if term.lower() in lowered:
                raise InvalidRequest(f"Your prompt contains a blocked term (“{term}”).")
        if request.duration_s > limits.max_duration_s:
            raise InvalidRequest(
                f"--duration {request.duration_s} is longer than the {limits.max_duration_s} s allowed here."
            )
        if not limits.allows_size(request.resolution):
            raise InvalidRequest(
                f"--resolution {request.resolution} ({tier_of(request.resolution)}) is not allowed here; "
                f"choose one of {', '.join(limits.resolutions)}."
            )
        if model.exact and request.fps not in limits.fps:
            raise InvalidRequest(f"--fps {request.fps} is not allowed here; choose {' or '.join(map(str, limits.fps))}.")

    def _new_job(
        self,
        plan: _Plan,
        origin: Origin,
        *,
        dedup_key: str | None,
        kind: str,
        parent_id: int | None,
    ) -> Job:
        request = plan.request
        assert request.fps is not None, "the plan resolves the frame rate"
        return Job(
            kind=kind,
            parent_id=parent_id,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            mode=request.mode.value,
            duration_s=request.duration_s,
            width=request.resolution.width,
            height=request.resolution.height,
            fps=request.fps,
            seed=request.seed if request.seed is not None else random.randint(0, MAX_SEED),
            quality=request.quality.value,
            platform=origin.platform,
            workspace_id=origin.workspace_id,
            channel_id=origin.channel_id,
            thread_id=origin.thread_id,
            user_id=origin.user_id,
            user_name=origin.user_name,
            is_admin=origin.is_admin,
            origin_extra=dict(origin.extra),
            dedup_key=dedup_key,
            backend=plan.name,
            model="" if plan.model.exact else plan.model.name,
            audio=plan.model.audio and not request.silent,
            segment_count=len(plan.segments),
            cost_usd=plan.cost_usd,
            loop=request.loop,
            shots=request.shots,
        )

    def _store_image(self, image: ImageInput) -> tuple[str, str]:
        digest = hashlib.sha256(image.data).hexdigest()[:32]
        suffix = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}.get(image.mime, ".img")
        path = self.media_dir / "images" / f"{digest}{suffix}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # a name of this writer's own: the same image may be stored at once by two requests,
            # or by two replicas on a shared media volume (one event delivered to both)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
            tmp.write_bytes(image.data)
            tmp.replace(path)
        return str(path.resolve()), image.mime

    def _windows(self, now: datetime, config: LimitsConfig) -> tuple[datetime, datetime]:
        return (
            _aware(window_start(now, "day", config.timezone)),
            _aware(window_start(now, "month", config.timezone)),
        )

    def _admit(
        self, session: Session, origin: Origin, limits: EffectiveLimits, config: LimitsConfig, cost: float
    ) -> None:
        """The quota check, run inside the inserting transaction (the write lock is held)."""
        now = utcnow()
        day, month = self._windows(now, config)
        counts: UsageCounts = JobRepository.usage_counts(
            session,
            platform=origin.platform,
            workspace_id=origin.workspace_id,
            user_id=origin.user_id,
            day_start=day,
            month_start=month,
        )
        tz = config.timezone
        daily_reset = next_reset(now, "day", tz)
        monthly_reset = next_reset(now, "month", tz)
        if config.queue_cap and counts.queue_depth >= config.queue_cap:
            raise LimitExceeded(
                f"The bot is busy: {counts.queue_depth} videos are queued or running. Try again in a few minutes."
            )
        if limits.user_concurrent_jobs and counts.user_active >= limits.user_concurrent_jobs:
            raise LimitExceeded(
                f"You already have {counts.user_active} videos in progress (limit {limits.user_concurrent_jobs}). "
                "Wait for one to finish, or cancel one."
            )
        if limits.user_daily_jobs and counts.user_jobs_today >= limits.user_daily_jobs:
            raise LimitExceeded(
                f"You've used {counts.user_jobs_today} of your {limits.user_daily_jobs} videos for today. "
                f"Your quota resets {describe_reset(daily_reset, now, tz)}.",
                resets_at=daily_reset,
            )
        if limits.workspace_daily_jobs and counts.workspace_jobs_today >= limits.workspace_daily_jobs:
            raise LimitExceeded(
                f"This workspace has used its {limits.workspace_daily_jobs} videos for today "
                f"(you made {counts.user_jobs_today}). It resets {describe_reset(daily_reset, now, tz)}.",
                resets_at=daily_reset,
            )
        if limits.cooldown_s and counts.last_submit_at is not None:
            ready = _aware(counts.last_submit_at).timestamp() + limits.cooldown_s
            wait = ready - now.timestamp()
            if wait > 0:
                raise LimitExceeded(
                    f"Please wait {int(wait) + 1} s before your next video (cooldown {limits.cooldown_s} s).",
                    resets_at=datetime.fromtimestamp(ready, tz=timezone.utc),
                )
        budgets = (
            ("your", counts.user_spend_month, limits.user_monthly_budget_usd),
            ("this workspace's", counts.workspace_spend_month, limits.workspace_monthly_budget_usd),
        )
        for whose, spent, budget in budgets:
            if budget and spent + cost > budget + 1e-9:
                raise LimitExceeded(
                    f"This video (${cost:.2f}) would go over {whose} monthly budget: "
                    f"${spent:.2f} of ${budget:.2f} used. It resets {describe_reset(monthly_reset, now, tz)}.",
                    resets_at=monthly_reset,
                )

    async def _acknowledge(self, job: Job, position: int) -> Job:
        notifier = self.notifiers.get(job.platform)
        if notifier is None:
            return job
        try:
            status = await notifier.acknowledge(job, position)
        except NotAllowed as refusal:
            await self.db.run(
                self.db.repo.transition,
                job.id or 0,
                JobState.FAILED,
                expect=[JobState.QUEUED],
                detail="the platform refused the status message",
                counts_toward_quota=False,
                error=str(refusal),
            )
            raise
        except Exception:  # the job still runs; delivery posts where it can
            log.warning("job %s: acknowledgement failed", job.id, exc_info=True)
            return job
        if status is None:
            return job
        try:
            return await self.db.interactive(
                self.db.repo.update, job.id or 0, status_ref=status.ref, thread_id=status.thread_id or job.thread_id
            )
        except StoreUnavailable:  # the job is stored and runs; only its status message is not noted
            log.warning("job %s: could not note its status message", job.id)
            return job

    async def _owned(self, job_id: int, by: Origin, *, owner_only: bool = True) -> Job:
        job = await self.status(job_id)
        same_place = job.platform == by.platform and job.workspace_id == by.workspace_id
        mine = same_place and job.user_id == by.user_id
        if not same_place or (owner_only and not mine and not self.is_admin(by)):
            raise NotAllowed(f"Job #{job_id} belongs to someone else; only they or an admin can change it.")
        return job

    async def _request_of(self, job: Job, *, image: ImageInput | None = None) -> VideoRequest:
        """The request a stored job was made from; ``image`` replaces the job's own image."""
        if image is None and job.image_path:
            data = await asyncio.to_thread(Path(job.image_path).read_bytes)
            image = ImageInput(data=data, mime=job.image_mime or "image/png", width=job.width, height=job.height)
        end_image: ImageInput | None = None
        if job.end_image_path:
            data = await asyncio.to_thread(Path(job.end_image_path).read_bytes)
            end_image = ImageInput(data=data, mime=job.end_image_mime or "image/png", width=job.width, height=job.height)
        size = Resolution(job.width, job.height)
        return VideoRequest(
            prompt=job.prompt,
            duration_s=job.duration_s,
            resolution=size,
            fps=job.fps,
            seed=job.seed,
            negative_prompt=job.negative_prompt,
            quality=Quality(job.quality),
            image=image,
            aspect=_aspect_of(size),
            exact_size=True,
            backend=job.backend if job.backend in self.generators else None,
            silent=not job.audio,
            end_image=end_image,
            loop=job.loop,
            shots=job.shots,
        )


def _aspect_of(size: Resolution) -> str:
    """The named shape nearest to a size (a clip from an image follows the image)."""
    ratio = size.width / max(size.height, 1)
    shapes = {"16:9": 16 / 9, "9:16": 9 / 16, "1:1": 1.0, "4:3": 4 / 3, "3:4": 3 / 4}
    return min(shapes, key=lambda shape: abs(shapes[shape] - ratio))
