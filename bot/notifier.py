"""The Notifier port: how the core talks back to the person, on whatever platform they used.

Each platform adapter implements it. The runner calls it; adapters never drive jobs themselves.
Delivery must be exactly once across crashes: ``deliver`` receives a ``DeliveryCheckpoint``
holding whatever reference an interrupted earlier attempt saved (a Slack file id, a Discord
nonce), so the adapter can ask its platform whether the clip already arrived instead of
posting it twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from bot.models import Clip
from storage.tables import Job


class Stage(StrEnum):
    QUEUED = "queued"
    GENERATING = "generating"
    FETCHING = "fetching"
    UPLOADING = "uploading"
    CANCELED = "canceled"


class PlatformRefused(Exception):
    """The platform received the whole clip but answered with an error (a webhook's 5xx).

    The runner retries it like any delivery fault; if every attempt fails, the job is not
    refunded, because the person may well have the clip: only what was never received is.
    """


@dataclass(frozen=True)
class ProgressUpdate:
    stage: Stage
    percent: int = 0
    queue_position: int = 0
    segment: int = 1
    segments: int = 1


@dataclass(frozen=True)
class StatusMessage:
    """Where the job's status lives on the platform; ``thread_id`` is set when it opened a thread."""

    ref: str
    thread_id: str | None = None


class DeliveryCheckpoint(Protocol):
    pending_ref: str | None
    """The reference an earlier, interrupted delivery attempt saved, or None on a first try."""

    async def save(self, ref: str) -> None:
        """Commit ``ref`` before the platform's point of no return, so a retry can check it."""
        ...


class Notifier(Protocol):
    platform: str

    async def acknowledge(self, job: Job, queue_position: int) -> StatusMessage | None:
        """Show the person their job was accepted. Raises ``NotAllowed`` where the bot cannot post."""
        ...

    async def progress(self, job: Job, update: ProgressUpdate) -> None:
        """Update the status; the runner already throttles calls to one per few seconds per job."""
        ...

    async def deliver(self, job: Job, clip: Clip, checkpoint: DeliveryCheckpoint) -> str:
        """Post the clip into the job's thread exactly once; return the platform message ref."""
        ...

    async def fail(self, job: Job, message: str) -> None:
        """Tell the person the job failed; ``message`` is written for them."""
        ...
