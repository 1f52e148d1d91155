"""The admin pages: queue, jobs, one job, usage and limits, served beside /healthz.

Every route but the sign-in form needs a session; pages are rendered here (Jinja2, escaped by
default) and the only script is the vendored htmx, which reloads the live parts of a page.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web

from adapters.admin._charts import StackedBars, daily_spend_chart
from adapters.admin._media import first_frame_jpeg, inside
from adapters.admin._sessions import Session, Sessions
from adapters.admin._watch import Answers, ProviderWatch
from bot import ACTIVE_STATES, Job, JobFilter, JobReports, JobState, utcnow
from bot.errors import VideobotError
from bot.limits import window_start
from bot.models import Origin

if TYPE_CHECKING:
    from bot.app import Core

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC = HERE / "static"
PAGE_SIZE = 50
HEALTH_TTL_S = 5.0
STATES = [s.value for s in JobState]

_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".txt": "text/plain", ".svg": "image/svg+xml"}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'{nonce}; img-src 'self' data:; media-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _age(moment: datetime | None, now: datetime) -> str:
    aware = _aware(moment)
    if aware is None:
        return ""
    seconds = max(0, int((now - aware).total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


@dataclass
class BackendView:
    name: str
    label: str
    concurrency: int
    running: int
    details: dict[str, Any]
    failures: int
    rate_limited: int
    last_error: str
    last_at: datetime | None
    answers: Answers | None


class AdminSite:
    """The admin page of one running core. ``routes`` go on the ops server's app."""

    def __init__(self, core: Core, token: str, *, wrong_token_delay_s: float = 1.0) -> None:
        self.core = core
        self.service = core.service
        self.sessions = Sessions(token, wrong_delay_s=wrong_token_delay_s)
        self.reports = JobReports(core.service.db.repo.engine)
        self.media_root = core.service.media_dir
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["local"] = self._local
        self.templates.filters["usd"] = lambda value: f"${value:,.2f}"
        self._css = (STATIC / "admin.css").read_text()
        self._health: tuple[float, dict[str, dict[str, Any]]] = (0.0, {})
        self._probing: asyncio.Task[None] | None = None
        self.watch = ProviderWatch()
        self.watch.attach((name, g.backend) for name, g in core.service.generators.items())

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def zone(self) -> ZoneInfo:
        return self.service.limits.current().timezone

    def _local(self, moment: datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
        aware = _aware(moment)
        return aware.astimezone(self.zone).strftime(fmt) if aware else ""

    def routes(self) -> list[web.RouteDef]:
        guard = self._guard
        return [
            web.get("/admin/login", self.login_form),
            web.post("/admin/login", self.login),
            web.post("/admin/logout", guard(self.logout)),
            web.get("/admin", guard(self.queue)),
            web.get("/admin/", guard(self.queue)),
            web.get("/admin/live/queue", guard(self.queue_live)),
            web.get("/admin/jobs", guard(self.jobs)),
            web.get("/admin/jobs/{job_id:\\d+}", guard(self.job)),
            web.get("/admin/jobs/{job_id:\\d+}/thumb.jpg", guard(self.thumbnail)),
            web.get("/admin/jobs/{job_id:\\d+}/clip.mp4", guard(self.clip)),
            web.get("/admin/jobs/{job_id:\\d+}/image", guard(self.image)),
            web.post("/admin/jobs/{job_id:\\d+}/cancel", guard(self.cancel)),
            web.post("/admin/jobs/{job_id:\\d+}/retry", guard(self.retry)),
            web.get("/admin/usage", guard(self.usage)),
            web.get("/admin/usage.csv", guard(self.usage_csv)),
            web.get("/admin/limits", guard(self.limits)),
            web.get("/admin/static/{name}", guard(self.static)),
        ]

    def _guard(self, handler: Callable[[web.Request, Session], Awaitable[web.StreamResponse]]) -> Handler:
        """Send anyone without a session to the sign-in form; POSTs must carry the CSRF token."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            session = self.sessions.of(request)
            if session is None:
                if request.headers.get("HX-Request"):
                    return self._secured(web.Response(status=401, headers={"HX-Redirect": "/admin/login"}))
                return self._secured(_see_other("/admin/login"))
            if request.method == "POST":
                form = await request.post()
                if not self.sessions.csrf_ok(session, str(form.get("csrf", ""))):
                    return self._secured(web.Response(status=403, text="Missing or wrong CSRF token; reload the page."))
            return self._secured(await handler(request, session))

        return guarded

    @staticmethod
    def _secured(response: web.StreamResponse, nonce: str | None = None) -> web.StreamResponse:
        response.headers["Content-Security-Policy"] = _CSP.format(nonce=f" 'nonce-{nonce}'" if nonce else "")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def _render(self, name: str, session: Session | None, status: int = 200, **values: Any) -> web.Response:
        template = self.templates.get_template(name)
        body = template.render(csrf=session.csrf if session else "", zone=self.zone.key, **values)
        return web.Response(text=body, content_type="text/html", charset="utf-8", status=status)

    # -- sign-in ----------------------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if self.sessions.of(request) is not None:
            return self._secured(_see_other("/admin"))
        return self._login_page(None)

    def _login_page(self, error: str | None, status: int = 200) -> web.StreamResponse:
        import secrets

        nonce = secrets.token_urlsafe(16)
        page = self._render("login.html", None, status=status, error=error, css=self._css, nonce=nonce)
        return self._secured(page, nonce)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        if not await self.sessions.check_token(str(form.get("token", ""))):
            log.warning("Admin sign-in refused: wrong token from %s", request.remote)
            return self._login_page("That token is wrong.", status=401)
        response = _see_other("/admin")
        self.sessions.open(response, request)
        log.info("Admin signed in from %s", request.remote)
        return self._secured(response)

    async def logout(self, request: web.Request, session: Session) -> web.StreamResponse:
        response = _see_other("/admin/login")
        self.sessions.close(request, response)
        return response

    # -- queue now --------------------------------------------------------------------------

    async def queue(self, request: web.Request, session: Session) -> web.StreamResponse:
        return self._render("queue.html", session, page="queue", **await self._queue_values())

    async def queue_live(self, request: web.Request, session: Session) -> web.StreamResponse:
        return self._render("_queue_live.html", session, **await self._queue_values())

    async def _queue_values(self) -> dict[str, Any]:
        db = self.service.db
        counts = await db.interactive(db.repo.count_by_state)
        active = await db.interactive(self.reports.active)
        now = utcnow()
        live = self.core.runner.live_progress
        rows = [
            {
                "job": job,
                "percent": round(100 * (live.get(job.id or 0, job.progress) if job.state != JobState.QUEUED else 0.0)),
                "age": _age(job.created_at, now),
                "prompt": job.prompt if len(job.prompt) <= 60 else job.prompt[:57] + "...",
            }
            for job in active
        ]
        shown_queued = sum(1 for job in active if job.state == JobState.QUEUED)
        return {
            "counts": [(state, counts.get(state, 0)) for state in STATES],
            "rows": rows,
            "more_queued": counts.get(JobState.QUEUED.value, 0) - shown_queued,
            "backends": await self._backends(active),
            "now": now,
        }

    async def _backends(self, active: list[Job]) -> list[BackendView]:
        db = self.service.db
        trouble = await db.interactive(self.reports.trouble)
        details = await self._probe_health()
        views = []
        for name, generator in self.service.generators.items():
            backend = generator.backend
            seen = trouble.get(name)
            views.append(
                BackendView(
                    name=name,
                    label=backend.label,
                    concurrency=backend.max_concurrency,
                    running=sum(1 for j in active if j.backend == name and j.state != JobState.QUEUED),
                    details=details.get(name, {}),
                    failures=seen.failures if seen else 0,
                    rate_limited=seen.rate_limited if seen else 0,
                    last_error=seen.last_error if seen else "",
                    last_at=seen.last_at if seen else None,
                    answers=self.watch.answers(name),
                )
            )
        return views

    async def _probe_health(self) -> dict[str, dict[str, Any]]:
        """What each backend says of itself (a worker's model and memory). Asked in the background
        at most every few seconds, so a slow backend never slows the page; the first call waits."""
        at, cached = self._health
        if time.monotonic() - at >= HEALTH_TTL_S and (self._probing is None or self._probing.done()):
            self._health = (time.monotonic(), cached)
            self._probing = asyncio.create_task(self._ask_backends())
            if not at:
                await asyncio.shield(self._probing)
        return self._health[1]

    async def _ask_backends(self) -> None:
        async def one(backend: Any) -> dict[str, Any]:
            try:
                generator = getattr(backend, "generator", None)
                if generator is not None and hasattr(generator, "health"):  # the GPU in this process
                    return dict(await asyncio.to_thread(generator.health))
                health = getattr(backend, "health", None)
                if health is not None:  # our worker or the simulator (http backend): its /v1/health
                    return dict(await health())
            except (TimeoutError, VideobotError, OSError, ValueError) as error:
                return {"status": f"not answering ({type(error).__name__})"}
            return {}

        names = list(self.service.generators)
        found = await asyncio.gather(*(one(self.service.generators[n].backend) for n in names))
        self._health = (time.monotonic(), {name: _flatten(value) for name, value in zip(names, found)})

    # -- jobs -------------------------------------------------------------------------------

    def _filter(self, request: web.Request) -> tuple[JobFilter, dict[str, str]]:
        query = request.query
        raw = {key: query.get(key, "").strip()[:200] for key in ("state", "platform", "workspace", "user", "backend", "q", "from", "to")}
        zone = self.zone

        def day(text: str, plus: int = 0) -> datetime | None:
            try:
                parsed = date.fromisoformat(text)
            except ValueError:
                return None
            local = datetime(parsed.year, parsed.month, parsed.day, tzinfo=zone) + timedelta(days=plus)
            return local.astimezone(UTC)

        where = JobFilter(
            state=raw["state"] if raw["state"] in STATES else "",
            platform=raw["platform"],
            workspace=raw["workspace"],
            user=raw["user"],
            backend=raw["backend"],
            text=raw["q"],
            since=day(raw["from"]),
            until=day(raw["to"], plus=1),
        )
        return where, raw

    async def jobs(self, request: web.Request, session: Session) -> web.StreamResponse:
        where, raw = self._filter(request)
        try:
            page = max(1, int(request.query.get("page", "1")))
        except ValueError:
            page = 1
        db = self.service.db
        found = await db.interactive(self.reports.search, where, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
        choices = await db.interactive(self.reports.choices)
        kept = {k: v for k, v in raw.items() if v}
        pages = max(1, -(-found.total // PAGE_SIZE))
        return self._render(
            "jobs.html",
            session,
            page="jobs",
            jobs=found.jobs,
            total=found.total,
            current=page,
            pages=pages,
            newer=f"?{urlencode({**kept, 'page': page - 1})}" if page > 1 else None,
            older=f"?{urlencode({**kept, 'page': page + 1})}" if page < pages else None,
            raw=raw,
            states=STATES,
            choices=choices,
            has_clip=lambda job: bool(job.output_path),
        )

    async def _job_or_404(self, request: web.Request) -> Job:
        job = await self.service.db.interactive(self.service.db.repo.get, int(request.match_info["job_id"]))
        if job is None:
            raise web.HTTPNotFound(text="No such job.")
        return job

    async def job(self, request: web.Request, session: Session) -> web.StreamResponse:
        job, events = await self.service.db.interactive(self.reports.job_with_events, int(request.match_info["job_id"]))
        if job is None:
            raise web.HTTPNotFound(text="No such job.")
        clip = inside(job.output_path, self.media_root)
        image = inside(job.image_path, self.media_root)
        progress = self.core.runner.live_progress.get(job.id or 0, job.progress)
        return self._render(
            "job.html",
            session,
            page="jobs",
            job=job,
            events=events,
            clip=clip is not None,
            image=image is not None,
            progress=progress,
            active=job.state in {s.value for s in ACTIVE_STATES},
            retryable=job.state in (JobState.FAILED.value, JobState.CANCELED.value),
            notice=request.query.get("notice", "")[:200],
        )

    async def thumbnail(self, request: web.Request, session: Session) -> web.StreamResponse:
        job = await self._job_or_404(request)
        clip = inside(job.output_path, self.media_root)
        if clip is None:
            raise web.HTTPNotFound(text="This job has no clip.")
        out = self.media_root / "thumbs" / f"{job.id}.jpg"
        try:
            await self.service.media.run(first_frame_jpeg, clip, out)
        except (OSError, ValueError):
            raise web.HTTPNotFound(text="The clip has no readable first frame.") from None
        return web.FileResponse(out, headers={"Content-Type": "image/jpeg", "Cache-Control": "private, max-age=3600"})

    async def clip(self, request: web.Request, session: Session) -> web.StreamResponse:
        job = await self._job_or_404(request)
        clip = inside(job.output_path, self.media_root)
        if clip is None:
            raise web.HTTPNotFound(text="This job has no clip (not made yet, or removed after the retention period).")
        return web.FileResponse(clip, headers={"Content-Type": "video/mp4", "Cache-Control": "private, max-age=3600"})

    async def image(self, request: web.Request, session: Session) -> web.StreamResponse:
        job = await self._job_or_404(request)
        image = inside(job.image_path, self.media_root)
        if image is None:
            raise web.HTTPNotFound(text="This job has no source image.")
        mime = job.image_mime if job.image_mime in ("image/png", "image/jpeg", "image/webp") else "application/octet-stream"
        return web.FileResponse(image, headers={"Content-Type": mime, "Cache-Control": "private, max-age=3600"})

    def _as_admin(self, job: Job) -> Origin:
        """The job's own place and person, acting as an admin: a retry goes back to the same thread."""
        return Origin(
            platform=job.platform,
            workspace_id=job.workspace_id,
            channel_id=job.channel_id,
            thread_id=job.thread_id,
            user_id=job.user_id,
            user_name=job.user_name,
            is_admin=True,
            extra={str(k): str(v) for k, v in (job.origin_extra or {}).items()},
        )

    async def cancel(self, request: web.Request, session: Session) -> web.StreamResponse:
        job = await self._job_or_404(request)
        by = Origin(
            platform=job.platform, workspace_id=job.workspace_id, channel_id=job.channel_id,
            user_id="admin-page", user_name="an admin (admin page)", is_admin=True,
        )
        try:
            await self.service.cancel(job.id or 0, by)
        except VideobotError as error:
            return self._back(job.id or 0, str(error))
        log.info("job %s canceled from the admin page", job.id)
        return self._back(job.id or 0, f"Job #{job.id} canceled.")

    async def retry(self, request: web.Request, session: Session) -> web.StreamResponse:
        job = await self._job_or_404(request)
        try:
            again = await self.service.retry(job.id or 0, self._as_admin(job))
        except VideobotError as error:
            return self._back(job.id or 0, str(error))
        log.info("job %s retried from the admin page as job %s", job.id, again.id)
        return self._back(again.id or 0, f"Retry of job #{job.id} queued as job #{again.id}.")

    @staticmethod
    def _back(job_id: int, notice: str) -> web.StreamResponse:
        return _see_other(f"/admin/jobs/{job_id}?{urlencode({'notice': notice})}")

    # -- usage ------------------------------------------------------------------------------

    async def _usage_values(self) -> dict[str, Any]:
        config = self.service.limits.current()
        zone = config.timezone
        now = utcnow()
        day_start = window_start(now, "day", zone).replace(tzinfo=UTC)
        month_start = window_start(now, "month", zone).replace(tzinfo=UTC)
        db = self.service.db
        users = await db.interactive(db.repo.usage_by_user, platform=None, workspace_id=None,
                                     day_start=day_start, month_start=month_start)
        workspaces = await db.interactive(self.reports.usage_by_workspace, day_start=day_start, month_start=month_start)
        homes = await db.interactive(self.reports.workspaces_of_users, month_start=month_start)
        spend = await db.interactive(self.reports.spend_since, month_start)
        user_rows = []
        for row in users:
            workspace = homes.get((row.platform, row.user_id), "")
            limits = config.resolve(Origin(platform=row.platform, workspace_id=workspace, channel_id="", user_id=row.user_id))
            user_rows.append({"usage": row, "workspace": workspace, "budget": limits.user_monthly_budget_usd,
                              "quota": limits.user_daily_jobs})
        workspace_rows = []
        for row in workspaces:
            limits = config.resolve(Origin(platform=row.platform, workspace_id=row.workspace_id, channel_id="", user_id=""))
            workspace_rows.append({"usage": row, "budget": limits.workspace_monthly_budget_usd,
                                   "quota": limits.workspace_daily_jobs})
        local_now = now.astimezone(zone)
        chart: StackedBars = daily_spend_chart(spend, zone, local_now.date())
        return {
            "users": user_rows,
            "workspaces": workspace_rows,
            "chart": chart,
            "month": local_now.strftime("%B %Y"),
            "total_jobs": sum(r.jobs_month for r in users),
            "total_spend": sum(r.spend_month for r in users),
        }

    async def usage(self, request: web.Request, session: Session) -> web.StreamResponse:
        return self._render("usage.html", session, page="usage", **await self._usage_values())

    async def usage_csv(self, request: web.Request, session: Session) -> web.StreamResponse:
        values = await self._usage_values()
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["scope", "date", "platform", "workspace", "user_id", "user_name", "jobs_today", "jobs_month",
                         "spend_usd", "monthly_budget_usd", "daily_jobs_quota"])
        for row in values["workspaces"]:
            u = row["usage"]
            writer.writerow(["workspace", "", u.platform, u.workspace_id, "", "", u.jobs_today, u.jobs_month,
                             f"{u.spend_month:.4f}", _blank(row["budget"]), _blank(row["quota"])])
        for row in values["users"]:
            u = row["usage"]
            writer.writerow(["user", "", u.platform, row["workspace"], u.user_id, _safe_cell(u.user_name), u.jobs_today,
                             u.jobs_month, f"{u.spend_month:.4f}", _blank(row["budget"]), _blank(row["quota"])])
        for bar in values["chart"].bars:
            for part in bar.parts:
                platform, _, workspace = part.series.partition(":")
                writer.writerow(["day", bar.day.isoformat(), platform, workspace, "", "", "", "", f"{part.value:.4f}", "", ""])
        month = values["month"].replace(" ", "-").lower()
        return web.Response(
            text=out.getvalue(),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="videobot-usage-{month}.csv"'},
        )

    # -- limits -----------------------------------------------------------------------------

    async def limits(self, request: web.Request, session: Session) -> web.StreamResponse:
        store = self.service.limits
        config = store.current()
        return self._render(
            "limits.html",
            session,
            page="limits",
            path=str(store.path),
            text=store.text,
            loaded_at=store.loaded_at,
            error=store.last_error,
            timezone=config.timezone.key,
        )

    # -- static -----------------------------------------------------------------------------

    async def static(self, request: web.Request, session: Session) -> web.StreamResponse:
        name = request.match_info["name"]
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file() or path.suffix not in _STATIC_TYPES:
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Content-Type": _STATIC_TYPES[path.suffix],
                                               "Cache-Control": "private, max-age=3600"})


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _blank(value: object) -> str:
    return "" if value is None else str(value)


def _safe_cell(text: str) -> str:
    """A user-chosen name as a spreadsheet cell that cannot run as a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested health answer as ``a.b: value`` pairs, for a two-column table."""
    flat: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}{key}."))
        return flat
    if isinstance(value, (list, tuple)):
        value = ", ".join(str(item) for item in value)
    if isinstance(value, int) and not isinstance(value, bool) and prefix.rstrip(".").endswith("_bytes"):
        value = f"{value / 2**30:.2f} GiB"
    flat[prefix.rstrip(".")] = value
    return flat
