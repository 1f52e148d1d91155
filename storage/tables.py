"""The tables: one row per job, and an append-only event log of its transitions.

Images and clips live in the media folder; rows keep only their paths. Secrets never go here.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class JobState(StrEnum):
    QUEUED = "queued"
    SUBMITTED = "submitted"
    RUNNING = "running"
    FETCHING = "fetching"
    DELIVERING = "delivering"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED)


ACTIVE_STATES = (
    JobState.QUEUED,
    JobState.SUBMITTED,
    JobState.RUNNING,
    JobState.FETCHING,
    JobState.DELIVERING,
)
IN_FLIGHT_STATES = ACTIVE_STATES[1:]


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state_created", "state", "created_at"),
        Index("ix_jobs_queue", "state", "platform", "user_id", "id"),
        Index("ix_jobs_user_created", "platform", "user_id", "created_at"),
        Index("ix_jobs_workspace_created", "platform", "workspace_id", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = "generate"  # generate | retry | reroll | extend
    parent_id: int | None = Field(default=None, index=True)

    # request
    prompt: str
    negative_prompt: str = ""
    mode: str = "t2v"
    duration_s: int = 5
    width: int = 1280
    height: int = 720
    fps: int = 16
    seed: int = 0
    quality: str = "standard"
    image_path: str | None = None
    image_mime: str | None = None
    end_image_path: str | None = None
    end_image_mime: str | None = None
    loop: bool = False
    shots: str = "single"  # single | multi
    audio: bool = False  # make sound (the model makes it and --silent was not given)

    # origin
    platform: str
    workspace_id: str
    channel_id: str
    thread_id: str | None = None
    user_id: str
    user_name: str = ""
    is_admin: bool = False
    origin_extra: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    dedup_key: str | None = Field(default=None, unique=True)

    # progress through the backend
    state: str = Field(default=JobState.QUEUED.value, index=True)
    backend: str = ""
    model: str = ""  # the provider's model id that ran it; empty for our own generators
    task_id: str | None = None
    segment_index: int = 0
    segment_count: int = 1
    progress: float = 0.0
    video_url: str | None = None
    output_path: str | None = None

    # platform messages
    status_ref: str | None = None
    delivery_pending_ref: str | None = None
    delivered_ref: str | None = None

    # accounting
    cost_usd: float = 0.0
    counts_toward_quota: bool = True
    error: str | None = None

    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    submitted_at: datetime | None = None
    running_at: datetime | None = None
    fetching_at: datetime | None = None
    delivering_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def job_state(self) -> JobState:
        return JobState(self.state)


class JobEvent(SQLModel, table=True):
    __tablename__ = "job_events"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(index=True, foreign_key="jobs.id")
    at: datetime = Field(default_factory=utcnow)
    from_state: str | None = None
    to_state: str
    detail: str = ""


class Lease(SQLModel, table=True):
    """A named lease in the database: which process holds it (host, pid), and until when.

    ``engine`` says which `videobot serve` drives the jobs; the holder renews it while alive and
    another may take it only once ``expires_at`` has passed. ``write-probe`` is a row the health
    check rewrites to learn whether the store takes writes.
    """

    __tablename__ = "leases"

    name: str = Field(primary_key=True)
    holder: str
    host: str = ""
    pid: int = 0
    detail: str = ""
    acquired_at: datetime = Field(default_factory=utcnow)
    renewed_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(default_factory=utcnow)
