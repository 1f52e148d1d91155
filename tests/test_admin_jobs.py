"""The job list's filters and pages, over HTTP against a real core: dates in the admin's time
zone, text in the prompt taken literally, platform and backend, newest first, 50 a page."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from adapters.admin import AdminSite
from bot.app import Core
from storage.tables import Job

pytestmark = pytest.mark.timeout(60)

TOKEN = "jobs-page-token-3307"
LIMITS = 'timezone = "America/New_York"\n'


def _job(n: int, created: datetime, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "prompt": f"clip number {n}", "platform": "slack", "workspace_id": "T1", "channel_id": "C1",
        "user_id": f"U{n % 3}", "state": "succeeded", "backend": "simulator", "created_at": created,
    }
    values.update(fields)
    return Job(**values)


def _ids(page: str) -> list[int]:
    return [int(n) for n in re.findall(r'<tr data-job="(\d+)"', page)]


async def test_filters_dates_text_and_pages(make_core: Any) -> None:
    core: Core = await make_core(LIMITS, start=False)
    repo = core.service.db.repo
    # 22:30 on 1 March in New York is already 2 March in UTC: it belongs to 1 March here
    late = datetime(2026, 3, 2, 3, 30, tzinfo=UTC)
    repo.create(_job(0, late, prompt="100% of a fox_cub"))
    repo.create(_job(0, late + timedelta(hours=3), prompt="100 foxes", platform="discord", backend="fal"))
    for n in range(1, 56):
        repo.create(_job(n, datetime(2026, 3, 10, tzinfo=UTC) + timedelta(minutes=n)))
    site = AdminSite(core, TOKEN)
    port = await core.serve_ops("127.0.0.1", 0, site.routes())
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        assert (await client.post("/admin/login", data={"token": TOKEN})).status_code == 303

        async def ids(**query: str) -> list[int]:
            answer = await client.get("/admin/jobs", params=query)
            assert answer.status_code == 200
            return _ids(answer.text)

        first = await ids()
        assert len(first) == 50 and first == sorted(first, reverse=True) and first[0] == 57
        second = await ids(page="2")
        assert second == list(range(7, 0, -1))
        assert await ids(**{"from": "2026-03-01", "to": "2026-03-01"}) == [1]
        assert await ids(**{"from": "2026-03-02", "to": "2026-03-08"}) == [2]
        assert len(await ids(**{"from": "2026-03-09"})) == 50  # 00:01 UTC on the 10th is the 9th in New York
        assert await ids(q="100%") == [1]  # % and _ are letters here, not wildcards
        assert await ids(q="fox_cub") == [1]
        assert await ids(q="FOX") == [2, 1]
        assert await ids(platform="discord") == [2] and await ids(backend="fal") == [2]
        assert len(await ids(user="U1", page="1")) == 19
        page = (await client.get("/admin/jobs", params={"user": "U1", "state": "succeeded"})).text
        assert "19 jobs, newest first. Page 1 of 1." in page
        assert "2026-03-01 22:30" in (await client.get("/admin/jobs", params={"q": "100%"})).text  # local time
        assert await ids(state="not-a-state", q="foxes") == [2]  # an unknown state filters nothing
