"""Read-only queries for the admin page: a filtered job list, spend by day, recent failures.

Kept apart from ``JobRepository`` (whose methods move jobs) because nothing here writes; each
query is bounded (a page, a month, a day) and served by the jobs table's indexes, so the page
stays fast with tens of thousands of jobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, or_
from sqlmodel import Session, col, select

from storage.tables import IN_FLIGHT_STATES, Job, JobEvent, JobState, utcnow


@dataclass(frozen=True)
class JobFilter:
    """What the job list shows; empty fields do not filter. Dates are UTC bounds, ``until`` exclusive."""

    state: str = ""
    platform: str = ""
    workspace: str = ""
    user: str = ""
    backend: str = ""
    text: str = ""
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    total: int


@dataclass(frozen=True)
class WorkspaceUsage:
    platform: str
    workspace_id: str
    jobs_today: int
    jobs_month: int
    spend_month: float


@dataclass(frozen=True)
class BackendTrouble:
    """A backend's failures since a moment: how many, how many were the provider's 429, the latest."""

    backend: str
    failures: int
    rate_limited: int
    last_error: str
    last_at: datetime | None


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class JobReports:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def search(self, where: JobFilter, *, offset: int = 0, limit: int = 50) -> JobPage:
        """Jobs matching ``where``, newest first, one page, with the count of all matches."""
        conditions = []
        if where.state:
            conditions.append(col(Job.state) == where.state)
        if where.platform:
            conditions.append(col(Job.platform) == where.platform)
        if where.workspace:
            conditions.append(col(Job.workspace_id) == where.workspace)
        if where.user:
            conditions.append(or_(col(Job.user_id) == where.user, col(Job.user_name) == where.user))
        if where.backend:
            conditions.append(col(Job.backend) == where.backend)
        if where.text:
            conditions.append(col(Job.prompt).ilike(_like(where.text), escape="\\"))
        if where.since is not None:
            conditions.append(col(Job.created_at) >= where.since)
        if where.until is not None:
            conditions.append(col(Job.created_at) < where.until)
        with self._session() as session:
            total = session.execute(select(func.count()).select_from(Job).where(*conditions)).scalar_one()
            rows = session.exec(select(Job).where(*conditions).order_by(col(Job.id).desc()).offset(offset).limit(limit))
            return JobPage(list(rows), int(total))

    def choices(self) -> dict[str, list[str]]:
        """The distinct platforms, workspaces and backends, for the list's filter menus."""
        with self._session() as session:
            return {
                "platform": sorted(session.exec(select(Job.platform).distinct()).all()),
                "workspace": sorted(session.exec(select(Job.workspace_id).distinct()).all()),
                "backend": sorted(b for b in session.exec(select(Job.backend).distinct()).all() if b),
            }

    def active(self, *, running: int = 100, queued: int = 50) -> list[Job]:
        """The queue as it stands, oldest first: jobs past ``queued`` and the next ones waiting."""
        with self._session() as session:
            in_flight = select(Job).where(col(Job.state).in_([s.value for s in IN_FLIGHT_STATES]))
            waiting = select(Job).where(col(Job.state) == JobState.QUEUED.value)
            return [
                *session.exec(in_flight.order_by(col(Job.id)).limit(running)),
                *session.exec(waiting.order_by(col(Job.id)).limit(queued)),
            ]

    def job_with_events(self, job_id: int) -> tuple[Job | None, list[JobEvent]]:
        with self._session() as session:
            job = session.get(Job, job_id)
            events = list(session.exec(select(JobEvent).where(JobEvent.job_id == job_id).order_by(col(JobEvent.id))))
            return job, events

    def usage_by_workspace(self, *, day_start: datetime, month_start: datetime) -> list[WorkspaceUsage]:
        """Jobs and spend this month per workspace, counted as the quotas count them."""
        counted = col(Job.counts_toward_quota).is_(True)
        with self._session() as session:
            rows = session.execute(
                select(
                    Job.platform,
                    Job.workspace_id,
                    func.count().filter(col(Job.created_at) >= day_start),
                    func.count(),
                    func.coalesce(func.sum(Job.cost_usd), 0.0),
                )
                .where(counted, col(Job.created_at) >= month_start)
                .group_by(col(Job.platform), col(Job.workspace_id))
            ).all()
        return sorted(
            (WorkspaceUsage(p, w, int(today), int(n), float(spend)) for p, w, today, n, spend in rows),
            key=lambda u: (-u.spend_month, u.platform, u.workspace_id),
        )

    def workspaces_of_users(self, *, month_start: datetime) -> dict[tuple[str, str], str]:
        """The workspace each user worked in this month (the latest, if several)."""
        with self._session() as session:
            rows = session.execute(
                select(Job.platform, Job.user_id, func.max(Job.workspace_id))
                .where(col(Job.created_at) >= month_start)
                .group_by(col(Job.platform), col(Job.user_id))
            ).all()
        return {(p, u): w for p, u, w in rows}

    def spend_since(self, month_start: datetime) -> list[tuple[datetime, str, str, float]]:
        """(created, platform, workspace, cost) of every counted job since ``month_start``: the chart's data."""
        with self._session() as session:
            rows = session.execute(
                select(Job.created_at, Job.platform, Job.workspace_id, Job.cost_usd).where(
                    col(Job.counts_toward_quota).is_(True), col(Job.created_at) >= month_start
                )
            ).all()
        return [(at, p, w, float(cost)) for at, p, w, cost in rows]

    def trouble(self, *, hours: float = 24.0) -> dict[str, BackendTrouble]:
        """Each backend's failed jobs in the last ``hours``; 429s are the provider saying it is busy."""
        since = utcnow() - timedelta(hours=hours)
        with self._session() as session:
            rows = session.execute(
                select(Job.backend, Job.error, Job.finished_at)
                .where(col(Job.state) == "failed", col(Job.finished_at) >= since)
                .order_by(col(Job.finished_at))
            ).all()
        found: dict[str, BackendTrouble] = {}
        for backend, error, at in rows:
            before = found.get(backend)
            text = error or ""
            found[backend] = BackendTrouble(
                backend,
                (before.failures if before else 0) + 1,
                (before.rate_limited if before else 0) + (1 if "429" in text else 0),
                text,
                at,
            )
        return found
