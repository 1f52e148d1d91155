"""The Backend port: how the runner talks to any generator (remote provider, local GPU, worker).

A backend is resumable from a stored task id: after a restart the runner polls the id it saved,
it never submits again, because a resubmit costs money.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from bot.catalog import ModelSpec
from bot.models import GenerationSpec, Mode, TaskState


@runtime_checkable
class Backend(Protocol):
    name: str
    """Short name used in settings, pricing and captions (``http``, ``simulator``, ``diffusers``)."""

    label: str
    """What captions call it, e.g. ``wan-2.6`` or ``simulator (no real model)``."""

    max_concurrency: int
    """How many tasks the runner may keep in flight on this backend at once."""

    max_segment_s: int
    """The longest clip one task can make; longer requests are stitched from segments."""

    models: Mapping[Mode, ModelSpec]
    """What runs each mode here and what it accepts (``bot.catalog``): requests are checked
    against it before admission, and clips against it after generation."""

    async def submit(self, spec: GenerationSpec) -> str:
        """Start a task and return its id. Raises ``BackendError``.

        The id is stored in the same write as the job's move to ``submitted`` and is all a
        later process has to resume the task: a backend that needs more than the provider's
        id (fal's status and result URLs) packs it into this string."""
        ...

    async def poll(self, task_id: str) -> TaskState:
        """Report a task's state. Raises ``BackendError``."""
        ...

    async def fetch(self, state: TaskState, dest: Path, max_bytes: int) -> Path:
        """Store a finished task's video at ``dest`` (at most ``max_bytes``) and return it."""
        ...

    async def cancel(self, task_id: str) -> None:
        """Ask the backend to stop a task; best effort, never raises for an unknown task."""
        ...

    async def aclose(self) -> None:
        """Release connections, models or threads."""
        ...
