"""``DiffusersBackend``: the Backend port over a Wan model loaded in the bot's own process.

For a GPU on the same machine as the bot (``VIDEOBOT_BACKEND=diffusers``). A GPU elsewhere runs
``videobot worker`` instead and the bot uses its http backend against it.

Tasks live in memory, their clips in ``work_dir`` under the task id. After a restart the runner
polls the ids it stored: a finished clip is still found on disk; a task that was mid-run is
reported failed (the model state died with the process), which costs nothing to retry here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from bot.errors import BackendError, VideobotError
from bot.gpu.generator import DiffusersGenerator
from bot.gpu.pipeline import LoadOptions
from bot.catalog import own_generator
from bot.models import GenerationSpec, Mode, TaskState, TaskStatus
from bot.settings import Settings

log = logging.getLogger(__name__)

_TASK_ID = re.compile(r"gpu-[0-9a-f]{32}")
LOST_ON_RESTART = "The clip was being made on the local GPU when the bot restarted and was lost; try again."
CANCELED = "Canceled."


@dataclass
class _Task:
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    started: bool = False
    progress: float = 0.0
    outcome: TaskState | None = None
    runner: asyncio.Task[None] | None = None

    def state(self) -> TaskState:
        if self.outcome is not None:
            return self.outcome
        return TaskState(TaskStatus.RUNNING if self.started else TaskStatus.QUEUED, progress=self.progress)


class DiffusersBackend:
    """In-process Wan: ``submit`` queues the job on the GPU thread and returns at once."""

    name = "diffusers"
    max_concurrency = 1
    """The GPU makes one clip at a time; the runner's own queue keeps the fairness between users."""

    def __init__(self, generator: DiffusersGenerator, work_dir: Path) -> None:
        self.generator = generator
        self.work_dir = work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        family = generator.model.family
        self.label = f"{family.label} (local GPU, {generator.model.options.preset.value})"
        self.max_segment_s = family.segment_s
        # The family decides whether an end frame can be honoured (specs' table), not the port.
        own = replace(own_generator(self.label, family.segment_s), end_frame=family.end_frame)
        self.models = {Mode.TEXT_TO_VIDEO: own, Mode.IMAGE_TO_VIDEO: own}
        self._tasks: dict[str, _Task] = {}

    @classmethod
    def from_settings(cls, settings: Settings, options: LoadOptions | None = None) -> DiffusersBackend:
        """Load ``settings.videobot_model`` now (blocking: call it while the bot starts, before
        anything else shares the loop) with clips kept in the media folder's ``gpu`` subfolder."""
        return cls(DiffusersGenerator.load(settings.videobot_model, options), settings.media_dir / "gpu")

    @classmethod
    async def open(cls, model: str, work_dir: Path, options: LoadOptions | None = None) -> DiffusersBackend:
        """Load ``model`` off the event loop (it takes seconds to minutes) and return the backend."""
        generator = await asyncio.to_thread(DiffusersGenerator.load, model, options)
        return cls(generator, work_dir)

    async def submit(self, spec: GenerationSpec) -> str:
        try:
            self.generator.validate(spec)
        except VideobotError as exc:
            raise BackendError(str(exc), retryable=False, status_code=400) from exc
        task_id = f"gpu-{uuid.uuid4().hex}"
        task = _Task()
        self._tasks[task_id] = task
        task.runner = asyncio.create_task(self._run(task_id, task, spec), name=f"videobot-{task_id}")
        return task_id

    async def poll(self, task_id: str) -> TaskState:
        task = self._tasks.get(task_id)
        if task is not None:
            return task.state()
        path = self._clip_path(task_id)
        if path is not None and path.is_file():
            return TaskState(TaskStatus.SUCCEEDED, progress=1.0, video_path=path)
        return TaskState(TaskStatus.FAILED, error=LOST_ON_RESTART)

    async def fetch(self, state: TaskState, dest: Path, max_bytes: int) -> Path:
        source = state.video_path
        if source is None or not source.is_file():
            raise BackendError("The finished clip is missing from the GPU's work folder.", retryable=False)
        size = source.stat().st_size
        if size > max_bytes:
            raise BackendError(f"The clip is {size} bytes, over the {max_bytes}-byte limit.", retryable=False)
        dest.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.copyfile, source, dest)
        return dest

    async def cancel(self, task_id: str) -> None:
        task = self._tasks.get(task_id)
        if task is not None:
            task.cancel.set()

    async def aclose(self) -> None:
        """Stop every task at its next step, wait for them, then free the GPU."""
        for task in self._tasks.values():
            task.cancel.set()
        await asyncio.gather(*(t.runner for t in self._tasks.values() if t.runner), return_exceptions=True)
        await asyncio.to_thread(self.generator.close)

    async def _run(self, task_id: str, task: _Task, spec: GenerationSpec) -> None:
        def on_progress(fraction: float) -> None:
            task.started = True
            task.progress = fraction

        dest = self.work_dir / f"{task_id}.mp4"
        try:
            await self.generator.generate(spec, dest, on_progress, task.cancel)
        except asyncio.CancelledError:
            task.outcome = TaskState(TaskStatus.FAILED, progress=task.progress, error=CANCELED)
            if not task.cancel.is_set():
                raise  # the task itself was canceled (shutdown), not the job
        except VideobotError as exc:
            task.outcome = TaskState(TaskStatus.FAILED, progress=task.progress, error=str(exc))
        except Exception as exc:
            log.exception("diffusers task %s failed", task_id)
            error = f"The local model failed ({type(exc).__name__})."
            task.outcome = TaskState(TaskStatus.FAILED, progress=task.progress, error=error)
        else:
            task.outcome = TaskState(TaskStatus.SUCCEEDED, progress=1.0, video_path=dest)

    def _clip_path(self, task_id: str) -> Path | None:
        """Where a task's clip lives; ``None`` for an id this backend could never have issued."""
        return self.work_dir / f"{task_id}.mp4" if _TASK_ID.fullmatch(task_id) else None
