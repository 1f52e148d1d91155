"""Usage limits as people meet them: quotas admitted atomically, windows, budgets, refusal texts, reloads."""

from __future__ import annotations

import asyncio
import os
import re
from datetime import timedelta
from typing import Any

import pytest

from bot.errors import InvalidRequest, LimitExceeded, NotAllowed
from bot.grammar import parse_request
from storage.tables import Job, JobState, utcnow
from tests.conftest import webhook_origin

pytestmark = pytest.mark.timeout(60)

SMALL = 'resolutions = ["832x480", "480x832", "1280x720"]\n'


async def test_fifty_concurrent_submits_under_a_limit_of_five_admit_exactly_five(make_core, receiver) -> None:
    core = await make_core(f"[defaults]\nuser_daily_jobs = 5\nuser_concurrent_jobs = 0\n{SMALL}", start=False)
    origin = webhook_origin(receiver)
    request = parse_request("a fox in the snow --resolution 832x480")
    results = await asyncio.gather(*(core.service.submit(request, origin) for _ in range(50)), return_exceptions=True)
    accepted = [r for r in results if isinstance(r, Job)]
    refused = [r for r in results if isinstance(r, LimitExceeded)]
    assert len(accepted) == 5 and len(refused) == 45
    assert len({job.id for job in accepted}) == 5
    assert "used 5 of your 5 videos for today" in str(refused[0])
    assert "resets at 00:00 UTC (in " in str(refused[0])


async def test_jobs_from_yesterday_do_not_count_today(make_core, receiver) -> None:
    core = await make_core(f"[defaults]\nuser_daily_jobs = 1\n{SMALL}", start=False)
    origin = webhook_origin(receiver)
    yesterday = utcnow() - timedelta(days=1, minutes=5)
    old = Job(prompt="old", platform="webhook", workspace_id="acme", channel_id="general", user_id="alice",
              created_at=yesterday, state=JobState.SUCCEEDED.value)
    core.service.db.repo.create(old)
    job = await core.service.submit(parse_request("today --resolution 832x480"), origin)
    assert job.id is not None
    with pytest.raises(LimitExceeded, match="used 1 of your 1"):
        await core.service.submit(parse_request("again --resolution 832x480"), origin)


async def test_monthly_budget_refuses_with_spend_and_reset(make_core, receiver) -> None:
    limits = f"[pricing]\nsimulator = 0.1\n[defaults]\nuser_monthly_budget_usd = 1.0\nuser_concurrent_jobs = 0\n{SMALL}"
    core = await make_core(limits, start=False)
    origin = webhook_origin(receiver)
    for _ in range(2):
        job = await core.service.submit(parse_request("a lake --resolution 832x480"), origin)
        assert job.cost_usd == pytest.approx(0.5)
    with pytest.raises(LimitExceeded) as refusal:
        await core.service.submit(parse_request("a lake --resolution 832x480"), origin)
    text = str(refusal.value)
    assert "$0.50" in text and "$1.00 of $1.00" in text and "monthly budget" in text
    assert refusal.value.resets_at is not None and refusal.value.resets_at.day == 1
    report = await core.service.usage_text(origin)
    assert "2 videos today" in report and "$1.00 spent of $1.00" in report


async def test_workspace_quota_cooldown_concurrency_and_queue_cap(make_core, receiver) -> None:
    core = await make_core(
        f"queue_cap = 3\n[defaults]\nworkspace_daily_jobs = 2\nuser_concurrent_jobs = 1\ncooldown_s = 0\n{SMALL}",
        start=False,
    )
    request = parse_request("waves --resolution 832x480")
    await core.service.submit(request, webhook_origin(receiver, "alice"))
    with pytest.raises(LimitExceeded, match="already have 1 videos in progress"):
        await core.service.submit(request, webhook_origin(receiver, "alice"))
    await core.service.submit(request, webhook_origin(receiver, "bob"))
    with pytest.raises(LimitExceeded, match="This workspace has used its 2 videos"):
        await core.service.submit(request, webhook_origin(receiver, "carol"))
    other = webhook_origin(receiver, "dave", workspace_id="globex")
    await core.service.submit(request, other)
    with pytest.raises(LimitExceeded, match="The bot is busy: 3 videos"):
        await core.service.submit(request, webhook_origin(receiver, "erin", workspace_id="globex"))


async def test_cooldown_tells_how_long_to_wait(make_core, receiver) -> None:
    core = await make_core(f"[defaults]\ncooldown_s = 120\nuser_concurrent_jobs = 0\n{SMALL}", start=False)
    request = parse_request("rain --resolution 832x480")
    await core.service.submit(request, webhook_origin(receiver))
    with pytest.raises(LimitExceeded, match=r"Please wait 1[12]\d s before your next video \(cooldown 120 s\)"):
        await core.service.submit(request, webhook_origin(receiver))


async def test_admins_are_exempt_and_channels_can_be_closed(make_core, receiver) -> None:
    core = await make_core(
        f'admins = ["webhook:root"]\n[defaults]\nuser_daily_jobs = 1\nallowed_channels = ["videos"]\n{SMALL}',
        start=False,
    )
    request = parse_request("clouds --resolution 832x480")
    with pytest.raises(NotAllowed, match="can't be made in this channel"):
        await core.service.submit(request, webhook_origin(receiver))
    for _ in range(3):
        await core.service.submit(request, webhook_origin(receiver, "root"))
    await core.service.submit(request, webhook_origin(receiver, channel_id="videos"))


async def test_request_rules_name_the_problem(make_core, receiver) -> None:
    core = await make_core(f'[defaults]\nmax_prompt_chars = 100\nblocked_terms = ["gore"]\n{SMALL}', start=False)
    origin = webhook_origin(receiver)
    cases = {
        "a fox --duration 11": "--duration 11 is longer than the 10 s allowed here",
        "a fox --resolution 960x960": "--resolution 960x960 (720p) is not allowed here; choose one of 832x480",
        "x" * 5000: "Your prompt is 5,000 characters; the limit is 100",
        "lots of GORE please --resolution 832x480": "blocked term",
    }
    for text, message in cases.items():
        with pytest.raises(InvalidRequest, match=re.escape(message)):
            await core.service.submit(parse_request(text), origin)


async def test_limits_reload_when_the_file_changes(make_core, receiver, make_settings) -> None:
    core = await make_core(f"[defaults]\nuser_daily_jobs = 1\nuser_concurrent_jobs = 0\n{SMALL}", start=False)
    origin = webhook_origin(receiver)
    request = parse_request("sunrise --resolution 832x480")
    await core.service.submit(request, origin)
    with pytest.raises(LimitExceeded):
        await core.service.submit(request, origin)
    path = core.settings.limits_path
    path.write_text(f"[defaults]\nuser_daily_jobs = 3\nuser_concurrent_jobs = 0\n{SMALL}")
    stamp = path.stat().st_mtime + 5
    os.utime(path, (stamp, stamp))
    await asyncio.sleep(0.3)
    assert (await core.service.submit(request, origin)).id is not None


async def test_failed_and_canceled_before_start_jobs_are_refunded(make_core, receiver) -> None:
    core = await make_core(f"[defaults]\nuser_daily_jobs = 1\nuser_concurrent_jobs = 0\n{SMALL}")
    origin = webhook_origin(receiver)
    failing = await core.service.submit(parse_request("[sim:fail] a boat --resolution 832x480"), origin)
    await receiver.wait_for(failing.id, "failed")
    job = await core.service.status(failing.id)
    assert job.state == "failed" and not job.counts_toward_quota
    await core.runner.stop()
    queued = await core.service.submit(parse_request("a boat --resolution 832x480"), origin)
    canceled = await core.service.cancel(queued.id, origin)
    assert canceled.state == "canceled" and not canceled.counts_toward_quota
    assert (await core.service.submit(parse_request("a boat --resolution 832x480"), origin)).id


def _submit_many(settings_kwargs: dict, count: int, ready: Any) -> tuple[int, int, list[str]]:
    """In a separate process (a replica): once every replica is ``ready`` (a barrier), submit
    ``count`` jobs at once; return how many were admitted, how many refused by the quota, and any
    other error."""
    from bot.app import Core
    from bot.settings import Settings
    from bot.models import Origin

    async def go() -> tuple[int, int, list[str]]:
        core = await Core.create(Settings(**settings_kwargs))
        origin = Origin("webhook", "acme", "general", "alice", extra={"callback_url": "http://127.0.0.1:9/none"})
        ready.wait(60)
        results = await asyncio.gather(
            *(core.service.submit(parse_request("a fox --resolution 832x480"), origin) for _ in range(count)),
            return_exceptions=True,
        )
        await core.stop()
        admitted = sum(isinstance(r, Job) for r in results)
        refused = sum(isinstance(r, LimitExceeded) for r in results)
        return admitted, refused, [repr(r) for r in results if not isinstance(r, (Job, LimitExceeded))]

    return asyncio.run(go())


def test_the_quota_holds_across_processes_sharing_one_database(make_settings) -> None:
    """Two replicas (processes with their own engine) on one database, 25 submits each at the
    same moment under a limit of 5: 5 jobs, 45 refusals, nothing else. On the SQLite file, and on
    PostgreSQL when the run is (``VIDEOBOT_TEST_DATABASE=postgresql``)."""
    import multiprocessing

    from sqlalchemy import func, select

    from storage.engine import make_engine

    settings = make_settings(f"[defaults]\nuser_daily_jobs = 5\nuser_concurrent_jobs = 0\n{SMALL}")
    kwargs = {"data_dir": settings.data_dir, "database_url": settings.database_url, "limits_path": settings.limits_path, "backend": "http",
              "wan_api_base_url": "http://127.0.0.1:9/v1"}
    spawn = multiprocessing.get_context("spawn")
    with spawn.Manager() as manager, spawn.Pool(2) as pool:
        ready = manager.Barrier(2)
        replicas = pool.starmap(_submit_many, [(kwargs, 25, ready), (kwargs, 25, ready)])
    assert [errors for _, _, errors in replicas] == [[], []]
    assert sum(admitted for admitted, _, _ in replicas) == 5 and sum(refused for _, refused, _ in replicas) == 45
    engine = make_engine(settings.database)
    try:
        with engine.connect() as db:
            assert db.execute(select(func.count()).select_from(Job)).scalar_one() == 5
    finally:
        engine.dispose()


async def test_a_workspace_that_lists_24_fps_first_gets_it_by_default(make_core, receiver) -> None:
    core = await make_core(f"[defaults]\nfps = [24]\n{SMALL}", start=False)
    job = await core.service.submit(parse_request("a windmill --resolution 832x480"), webhook_origin(receiver))
    assert job.fps == 24
    with pytest.raises(InvalidRequest, match="--fps 16 is not allowed here; choose 24"):
        await core.service.submit(parse_request("a windmill --resolution 832x480 --fps 16"), webhook_origin(receiver))
