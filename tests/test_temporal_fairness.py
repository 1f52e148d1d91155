"""Fairness on one provider slot: the dev server runs with matching.enableFairness (one
partition), every workflow and activity carries Priority(fairness_key=platform:user), so a
person behind another's five queued jobs is served second or third, not sixth."""

from __future__ import annotations

import asyncio

import pytest

from bot.grammar import parse_request
from tests.conftest import webhook_origin
from tests.temporal_server import temporal_address  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(180)

LIMITS = '[defaults]\nresolutions = ["832x480"]\nuser_concurrent_jobs = 0\nuser_daily_jobs = 0\ncooldown_s = 0\n'
PROMPT = "[sim:slow=1] a lake --duration 1 --resolution 832x480"


async def test_one_users_backlog_does_not_starve_another_on_one_worker_slot(
    make_core, receiver, temporal_address: str  # noqa: F811
) -> None:
    core = await make_core(LIMITS, engine="temporal", temporal_address=temporal_address,
                           max_concurrency=1)
    alice, bob = webhook_origin(receiver, "alice"), webhook_origin(receiver, "bob")
    jobs = [await core.service.submit(parse_request(f"{PROMPT} {n}"), alice) for n in range(5)]
    await asyncio.sleep(0.3)  # alice's workflows have scheduled their steps: her backlog is queued
    jobs.append(await core.service.submit(parse_request(PROMPT), bob))
    for job in jobs:
        assert await asyncio.wait_for(core.engine.wait(job.id), 120) == "succeeded"
    rows = [await core.service.status(job.id) for job in jobs]
    order = [row.user_id for row in sorted(rows, key=lambda r: r.submitted_at)]
    assert order.index("bob") in (1, 2), order

