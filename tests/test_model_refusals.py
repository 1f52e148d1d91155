"""A request the model cannot honour is refused before admission, with what the model accepts.

The generators are real DashScope backends pointed at the loopback fake; the fake records every
request, so the tests show that a refusal reaches neither the database nor the provider.
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from bot.errors import InvalidRequest
from bot.grammar import parse_request
from bot.images import load_image
from tests.conftest import webhook_origin
from tests.fakes.dashscope import KEY, FakeDashScope

pytestmark = pytest.mark.timeout(60)

LIMITS = """
[backends.wan25]
type = "dashscope"
t2v_model = "wan2.5-t2v-preview"
i2v_model = "wanx2.1-kf2v-plus"

[backends.wan26]
type = "dashscope"

[defaults]
resolutions = ["480p", "720p", "1080p"]
max_duration_s = 30
user_concurrent_jobs = 0
user_daily_jobs = 0
"""


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeDashScope]:
    async with FakeDashScope(tmp_path / "oss") as server:
        yield server


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ("a fox --duration 7", "wan2.5-t2v-preview makes clips of 5 or 10 s, so 7 s cannot be made"),
        ("a fox --duration 12", "wan2.5-t2v-preview makes clips of 5 or 10 s, so 12 s cannot be made"),
        ("a fox --model wan26 --resolution 480p", "wan2.6-t2v cannot make 832x480; it makes 720p ("),
        ("a fox --fps 16", "wan2.5-t2v-preview makes 24 fps only (got --fps 16)"),
    ],
)
async def test_what_the_model_cannot_make_is_refused_before_admission(
    make_core, receiver, fake: FakeDashScope, text: str, refusal: str
) -> None:
    core = await make_core(LIMITS, dashscope_api_key=KEY, dashscope_base_url=fake.base_url)

    with pytest.raises(InvalidRequest, match=re.escape(refusal)):
        await core.service.submit(parse_request(text), webhook_origin(receiver))

    assert core.service.db.repo.recent() == [] and fake.requests == []


async def test_1080p_on_a_720p_only_model_is_refused_with_its_sizes(make_core, receiver, fake: FakeDashScope) -> None:
    core = await make_core(LIMITS, dashscope_api_key=KEY, dashscope_base_url=fake.base_url)
    buffer = io.BytesIO()
    Image.new("RGB", (1200, 800), (30, 90, 160)).save(buffer, "JPEG")
    request = parse_request("slowly zoom in --resolution 1080p", image=load_image(buffer.getvalue()))

    with pytest.raises(InvalidRequest) as refused:
        await core.service.submit(request, webhook_origin(receiver))

    assert str(refused.value).startswith("wanx2.1-kf2v-plus cannot make ") and "it makes 720p (" in str(refused.value)
    assert core.service.db.repo.recent() == [] and fake.requests == []


async def test_a_length_the_model_makes_by_stitching_is_admitted_in_its_own_segments(
    make_core, receiver, fake: FakeDashScope
) -> None:
    core = await make_core(LIMITS, dashscope_api_key=KEY, dashscope_base_url=fake.base_url, start=False)

    twenty = await core.service.submit(parse_request("a fox --duration 20"), webhook_origin(receiver))
    fifteen = await core.service.submit(parse_request("a fox --duration 15"), webhook_origin(receiver))
    long_26 = await core.service.submit(parse_request("a fox --duration 20 --model wan26"), webhook_origin(receiver))

    assert (twenty.segment_count, fifteen.segment_count, long_26.segment_count) == (2, 2, 2)
    assert (twenty.model, long_26.model) == ("wan2.5-t2v-preview", "wan2.6-t2v")
