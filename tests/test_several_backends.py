"""Two generators declared at once under [backends]: how a job picks its generator.

Both generators are real simulator services on loopback, each with its own name, so the job
records which one ran it and the clip's caption names it. A channel override picks its default;
``--model`` picks among those the limits allow there, and a name they don't allow is refused with
the allowed list before any job exists.
"""

from __future__ import annotations

import pytest

from bot.errors import InvalidRequest
from bot.grammar import parse_request
from tests.conftest import webhook_origin
from tests.test_jobs_end_to_end import _delivered, _finish

pytestmark = pytest.mark.timeout(90)

LIMITS = """
[backends.draft]
type = "simulator"
label = "draft generator"
resolution = "480p"
price_per_second = 0.01

[backends.final]
type = "simulator"
label = "final generator"
resolution = "480p"
concurrency = 1
price_per_second = 0.2

[defaults]
resolutions = ["832x480", "480x832"]
user_concurrent_jobs = 0
user_daily_jobs = 0

[workspaces."webhook:acme".channels.showcase]
backend = "final"

[workspaces."webhook:acme".channels.drafts]
backends = ["draft"]
"""


async def test_model_picks_a_generator_and_a_channel_override_picks_the_other(make_core, receiver) -> None:
    core = await make_core(LIMITS)

    default = await core.service.submit(parse_request("a fox --duration 2"), webhook_origin(receiver))
    chosen = await core.service.submit(parse_request("a fox --duration 2 --model final"), webhook_origin(receiver))
    showcase = await core.service.submit(
        parse_request("a fox --duration 2"), webhook_origin(receiver, channel_id="showcase")
    )
    back = await core.service.submit(
        parse_request("a fox --duration 2 --model draft"), webhook_origin(receiver, channel_id="showcase")
    )

    expected = {default.id: "draft", chosen.id: "final", showcase.id: "final", back.id: "draft"}
    for job_id, name in expected.items():
        job = await _finish(core, receiver, job_id)
        assert (job.state, job.backend) == ("succeeded", name), job.error
        assert f"{name} generator" in _delivered(receiver, job_id).caption
    # Each generator's own price per second: 2 s at 0.01 and at 0.2.
    assert (await core.service.status(default.id)).cost_usd == pytest.approx(0.02)
    assert (await core.service.status(chosen.id)).cost_usd == pytest.approx(0.4)


async def test_a_generator_the_channel_does_not_allow_is_refused_with_the_allowed_list(make_core, receiver) -> None:
    core = await make_core(LIMITS)
    drafts = webhook_origin(receiver, channel_id="drafts")

    with pytest.raises(InvalidRequest, match="--model final is not offered here; choose draft"):
        await core.service.submit(parse_request("a fox --duration 2 --model final"), drafts)
    with pytest.raises(InvalidRequest, match="--model nope is not offered here; choose draft, final"):
        await core.service.submit(parse_request("a fox --duration 2 --model nope"), webhook_origin(receiver))

    assert core.service.db.repo.recent() == []
    help_text = core.service.help_text(drafts)
    assert "Generator here: draft (draft generator)" in help_text and "final" not in help_text
    assert "Also offered here with --model: final" in core.service.help_text(webhook_origin(receiver))


async def test_after_a_restart_each_job_runs_on_the_generator_it_was_admitted_for(make_core, receiver) -> None:
    first = await make_core(LIMITS, start=False)
    draft = await first.service.submit(parse_request("a fox --duration 2"), webhook_origin(receiver))
    final = await first.service.submit(parse_request("a fox --duration 2 --model final"), webhook_origin(receiver))
    await first.stop()

    # The file now declares another generator first, so it is the default; stored choices hold.
    second = await make_core(LIMITS.replace("[backends.draft]", "[backends.zzz]\ntype = \"simulator\"\n\n[backends.draft]", 1))
    for job_id, name in {draft.id: "draft", final.id: "final"}.items():
        job = await _finish(second, receiver, job_id)
        assert (job.state, job.backend) == ("succeeded", name), job.error
