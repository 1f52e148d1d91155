"""The job repository: every state transition is one committed write with its event.

Methods are synchronous; the core calls them from one dedicated thread (``bot.database``), so
the event loop never waits on SQLite. A transition names the states it may leave
(``expect``): when another actor got there first (a cancel racing a completion) it raises
``StaleTransition`` instead of overwriting, which is what keeps a job from being delivered
after it was canceled, or twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from sqlalchemy import Engine, and_, func, insert, text, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from storage.tables import ACTIVE_STATES, IN_FLIGHT_STATES, Job, JobEvent, JobState, Lease, utcnow

T = TypeVar("T")

_STATE_TIMESTAMP = {
    JobState.SUBMITTED: "submitted_at",
    JobState.RUNNING: "running_at",
    JobState.FETCHING: "fetching_at",
    JobState.DELIVERING: "delivering_at",
    JobState.SUCCEEDED: "finished_at",
    JobState.FAILED: "finished_at",
    JobState.CANCELED: "finished_at",
}


class StaleTransition(Exception):
    """The job was no longer in an expected state; someone else moved it first."""


@dataclass(frozen=True)
class UsageCounts:
    """What the limits need to know about one user and workspace, read inside the admitting transaction."""

    user_jobs_today: int
    user_active: int
    workspace_jobs_today: int
    queue_depth: int
    last_submit_at: datetime | None
    user_spend_month: float
    workspace_spend_month: float


@dataclass(frozen=True)
class UserUsage:
    platform: str
    user_id: str
    user_name: str
    jobs_today: int
    jobs_month: int
    spend_month: float


class JobRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # -- creating ---------------------------------------------------------------------------

    def create(self, job: Job, admit: Callable[[Session], None] | None = None) -> tuple[Job, bool, int]:
        """Insert ``job`` after ``admit`` (the quota check) passes, in one transaction.

        Returns ``(job, created, queue_position)``; a job whose ``dedup_key`` is already stored
        returns the stored one with ``created=False`` (a platform's retry of the same event, or
        the same event reaching another replica), before the quota is asked.
        """
        if job.dedup_key:
            existing = self.by_dedup_key(job.dedup_key)
            if existing is not None:
                return existing, False, 0
        try:
            with self._session() as session, session.begin():
                _serialise_admissions(session)
                if job.dedup_key:  # stored while this one waited for its turn
                    existing = session.exec(select(Job).where(Job.dedup_key == job.dedup_key)).first()
                    if existing is not None:
                        return existing, False, 0
                if admit is not None:
                    admit(session)
                session.add(job)
                session.flush()
                session.execute(
                    insert(JobEvent).values(
                        job_id=job.id, at=job.created_at, to_state=job.state, detail=f"{job.kind} by {job.user_id}"
                    )
                )
                ahead = session.execute(
                    select(func.count()).where(Job.state == JobState.QUEUED.value, col(Job.id) < job.id)
                ).scalar_one()
        except IntegrityError:
            existing = self.by_dedup_key(job.dedup_key or "")
            if existing is None:
                raise
            return existing, False, 0
        return job, True, int(ahead)

    # -- transitions ------------------------------------------------------------------------

    def transition(
        self,
        job_id: int,
        to: JobState,
        *,
        expect: Iterable[JobState],
        detail: str = "",
        **fields: Any,
    ) -> Job:
        """Move a job to ``to`` if it is in one of ``expect``, setting ``fields``; one commit."""
        now = utcnow()
        values: dict[str, Any] = {"state": to.value, "updated_at": now, **fields}
        stamp = _STATE_TIMESTAMP.get(to)
        if stamp and stamp not in fields:
            values[stamp] = now
        allowed = [s.value for s in expect]
        with self._session() as session, session.begin():
            # FOR UPDATE (PostgreSQL): a writer in another process waits for this one and then
            # reads the state it left; SQLite serialises writers at BEGIN IMMEDIATE already.
            from_state = session.execute(
                select(Job.state).where(col(Job.id) == job_id).with_for_update()
            ).scalar_one_or_none()
            if from_state not in allowed:
                raise StaleTransition(f"job {job_id} is {from_state or 'missing'}, not {'/'.join(allowed)}")
            job = session.scalars(update(Job).where(col(Job.id) == job_id).values(**values).returning(Job)).one()
            session.execute(
                insert(JobEvent).values(job_id=job_id, at=now, from_state=from_state, to_state=to.value, detail=detail[:500])
            )
            return job

    def update(self, job_id: int, **fields: Any) -> Job:
        """Set fields that are not a state change (progress, message references)."""
        with self._session() as session, session.begin():
            job = session.scalars(
                update(Job).where(col(Job.id) == job_id).values(updated_at=utcnow(), **fields).returning(Job)
            ).one_or_none()
            if job is None:
                raise StaleTransition(f"job {job_id} is missing")
            return job

    # -- reading ----------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        if job_id > MAX_POSTGRESQL_ID and self.engine.dialect.name == "postgresql":
            return None  # past its INTEGER ids: no such job, and not a query the server refuses
        with self._session() as session:
            return session.get(Job, job_id)

    def by_dedup_key(self, key: str) -> Job | None:
        with self._session() as session:
            return session.exec(select(Job).where(Job.dedup_key == key)).first()

    def events(self, job_id: int) -> list[JobEvent]:
        with self._session() as session:
            return list(session.exec(select(JobEvent).where(JobEvent.job_id == job_id).order_by(col(JobEvent.id))))

    def recent(self, limit: int = 20, *, states: Sequence[JobState] | None = None) -> list[Job]:
        with self._session() as session:
            query = select(Job).order_by(col(Job.id).desc()).limit(limit)
            if states:
                query = query.where(col(Job.state).in_([s.value for s in states]))
            return list(session.exec(query))

    def active(self, platform: str, *, user_id: str | None = None, workspace_id: str | None = None) -> list[Job]:
        """Unfinished jobs of one user, or of a whole workspace, oldest first."""
        with self._session() as session:
            query = select(Job).where(Job.platform == platform, col(Job.state).in_([s.value for s in ACTIVE_STATES]))
            if user_id is not None:
                query = query.where(Job.user_id == user_id)
            if workspace_id is not None:
                query = query.where(Job.workspace_id == workspace_id)
            return list(session.exec(query.order_by(col(Job.id))))

    def queued_heads(self, platforms: Sequence[str] | None, exclude: Iterable[int] = ()) -> list[Job]:
        """The oldest queued job of each user on each backend: the candidates a fair dispatcher
        chooses among (a person's job for a busy backend does not hold up their job for another)."""
        with self._session() as session:
            heads = (
                select(Job.platform, Job.user_id, Job.backend, func.min(Job.id).label("head"))
                .where(Job.state == JobState.QUEUED.value)
                .where(col(Job.id).not_in(list(exclude)))
                .group_by(col(Job.platform), col(Job.user_id), col(Job.backend))
            )
            if platforms is not None:
                heads = heads.where(col(Job.platform).in_(list(platforms)))
            ids = [row.head for row in session.execute(heads)]
            if not ids:
                return []
            return list(session.exec(select(Job).where(col(Job.id).in_(ids)).order_by(col(Job.id))))

    def in_flight(self, platforms: Sequence[str] | None) -> list[Job]:
        """Jobs past ``queued`` and not finished: what recovery resumes after a restart."""
        with self._session() as session:
            query = select(Job).where(col(Job.state).in_([s.value for s in IN_FLIGHT_STATES]))
            if platforms is not None:
                query = query.where(col(Job.platform).in_(list(platforms)))
            return list(session.exec(query.order_by(col(Job.id))))

    def count_by_state(self) -> dict[str, int]:
        with self._session() as session:
            rows = session.execute(select(Job.state, func.count()).group_by(col(Job.state)))
            return {state: int(n) for state, n in rows}

    def finished_with_media(self, before: datetime) -> list[Job]:
        with self._session() as session:
            query = (
                select(Job)
                .where(col(Job.finished_at) < before)
                .where(col(Job.output_path).is_not(None))
            )
            return list(session.exec(query))

    # -- leases and the write probe -----------------------------------------------------------

    def acquire_lease(
        self, claim: Lease, ttl_s: float, *, gone: Callable[[Lease], bool] = lambda lease: False
    ) -> Lease:
        """Take the lease ``claim`` names for its holder if it is free, lapsed, already theirs, or
        its holder is ``gone`` (a crashed process); one commit.

        Returns the lease as it stands afterwards: the caller holds it when the holder matches
        ``claim.holder``, otherwise the row names who does and until when.
        """
        return _retrying_first_insert(lambda: self._acquire_lease(claim, ttl_s, gone))

    def _acquire_lease(self, claim: Lease, ttl_s: float, gone: Callable[[Lease], bool]) -> Lease:
        now = utcnow()
        with self._session() as session, session.begin():
            lease = session.get(Lease, claim.name, with_for_update=True)
            if lease is not None and lease.holder != claim.holder and _aware(lease.expires_at) > now and not gone(lease):
                return lease
            if lease is None:
                lease = Lease(name=claim.name, holder=claim.holder)
                session.add(lease)
            if lease.holder != claim.holder or lease.acquired_at is None:
                lease.acquired_at = now
            lease.holder, lease.host, lease.pid, lease.detail = claim.holder, claim.host, claim.pid, claim.detail
            lease.renewed_at, lease.expires_at = now, now + timedelta(seconds=ttl_s)
            session.flush()
            return lease

    def renew_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Extend ``holder``'s lease; False when it is no longer theirs (it lapsed and was taken)."""
        now = utcnow()
        with self._session() as session, session.begin():
            renewed = session.execute(
                update(Lease)
                .where(col(Lease.name) == name, col(Lease.holder) == holder)
                .values(renewed_at=now, expires_at=now + timedelta(seconds=ttl_s))
            )
            return bool(renewed.rowcount)

    def get_lease(self, name: str) -> Lease | None:
        with self._session() as session:
            return session.get(Lease, name)

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up at once (a clean stop), so a standby need not wait for it to lapse."""
        with self._session() as session, session.begin():
            session.execute(
                update(Lease)
                .where(col(Lease.name) == name, col(Lease.holder) == holder)
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )

    def probe_write(self) -> None:
        """Rewrite one small row: raises when the store does not take writes (read-only, full)."""
        _retrying_first_insert(self._probe_write)

    def _probe_write(self) -> None:
        now = utcnow()
        with self._session() as session, session.begin():
            probe = session.get(Lease, "write-probe", with_for_update=True)
            if probe is None:
                session.add(Lease(name="write-probe", holder="healthz", acquired_at=now, renewed_at=now, expires_at=now))
            else:
                probe.renewed_at = probe.expires_at = now

    # -- usage ------------------------------------------------------------------------------

    @staticmethod
    def usage_counts(
        session: Session, *, platform: str, workspace_id: str, user_id: str, day_start: datetime, month_start: datetime
    ) -> UsageCounts:
        """Counts for the quota check in three indexed queries; call it inside the admitting transaction."""
        counted = col(Job.counts_toward_quota).is_(True)
        active = col(Job.state).in_([s.value for s in ACTIVE_STATES])
        today = and_(counted, col(Job.created_at) >= day_start)
        this_month = and_(counted, col(Job.created_at) >= month_start)
        user = session.execute(
            select(
                func.count().filter(today),
                func.count().filter(active),
                func.max(Job.created_at).filter(counted),
                func.coalesce(func.sum(Job.cost_usd).filter(this_month), 0.0),
            ).where(Job.platform == platform, Job.user_id == user_id)
        ).one()
        workspace = session.execute(
            select(
                func.count().filter(today),
                func.coalesce(func.sum(Job.cost_usd).filter(this_month), 0.0),
            ).where(Job.platform == platform, Job.workspace_id == workspace_id, col(Job.created_at) >= month_start)
        ).one()
        depth = session.execute(select(func.count()).where(active)).scalar_one()
        return UsageCounts(
            user_jobs_today=int(user[0]),
            user_active=int(user[1]),
            workspace_jobs_today=int(workspace[0]),
            queue_depth=int(depth),
            last_submit_at=user[2],
            user_spend_month=float(user[3]),
            workspace_spend_month=float(workspace[1]),
        )

    def usage_by_user(
        self, *, platform: str | None, workspace_id: str | None, day_start: datetime, month_start: datetime
    ) -> list[UserUsage]:
        """Per-user jobs and spend this month (and today), for usage reports."""
        with self._session() as session:
            query = select(
                Job.platform,
                Job.user_id,
                func.max(Job.user_name),
                func.count(),
                func.coalesce(func.sum(Job.cost_usd), 0.0),
            ).where(col(Job.counts_toward_quota).is_(True), col(Job.created_at) >= month_start)
            if platform is not None:
                query = query.where(Job.platform == platform)
            if workspace_id is not None:
                query = query.where(Job.workspace_id == workspace_id)
            month_rows = session.execute(query.group_by(col(Job.platform), col(Job.user_id))).all()
            today_query = (
                select(Job.platform, Job.user_id, func.count())
                .where(col(Job.counts_toward_quota).is_(True), col(Job.created_at) >= day_start)
                .group_by(col(Job.platform), col(Job.user_id))
            )
            today_counts = {(p, u): int(n) for p, u, n in session.execute(today_query)}
        return sorted(
            (
                UserUsage(p, u, name or "", today_counts.get((p, u), 0), int(n), float(spend))
                for p, u, name, n, spend in month_rows
            ),
            key=lambda usage: (-usage.spend_month, -usage.jobs_month, usage.user_id),
        )


MAX_POSTGRESQL_ID = 2**31 - 1
"""The largest id PostgreSQL's INTEGER columns hold (SQLite's hold 64 bits)."""

ADMISSION_LOCK = 0x76696465  # "vide": the PostgreSQL advisory lock one admission holds at a time
"""Any number of processes (replicas) admit jobs into one PostgreSQL database; this lock makes
their quota checks and inserts happen one after another, as SQLite's write lock does."""


def _serialise_admissions(session: Session) -> None:
    """Hold the admission lock until this transaction ends (PostgreSQL; SQLite holds its write
    lock from BEGIN IMMEDIATE already). Under READ COMMITTED each later statement then sees
    every job admitted before: the counts the quota reads cannot be stale."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADMISSION_LOCK})


def _retrying_first_insert(attempt: Callable[[], T]) -> T:
    """Run ``attempt`` again once if it lost a race to insert the same row (two processes
    creating the first lease): the second try finds the row and goes through its lock."""
    try:
        return attempt()
    except IntegrityError:
        return attempt()


def _aware(moment: datetime) -> datetime:
    """SQLite hands datetimes back naive; they are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
