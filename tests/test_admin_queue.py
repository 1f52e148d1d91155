"""The queue page's backend cards: what a GPU reports of itself, a provider's 429s and failures."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import httpx
import pytest

from adapters.admin import AdminSite
from bot.app import Core
from bot.grammar import parse_request
from tests.conftest import webhook_origin
from tests.fakes.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.timeout(60)

TOKEN = "queue-page-token-8841"


@asynccontextmanager
async def _signed_in(core: Core) -> AsyncIterator[httpx.AsyncClient]:
    site = AdminSite(core, TOKEN)
    port = await core.serve_ops("127.0.0.1", 0, site.routes())
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        assert (await client.post("/admin/login", data={"token": TOKEN})).status_code == 303
        yield client


async def test_a_providers_429s_and_failures_show_on_its_card(make_core: Any, receiver: WebhookReceiver) -> None:
    core: Core = await make_core()
    async with _signed_in(core) as client:
        busy = await core.service.submit(parse_request("a busy day [sim:429x2] --duration 1 --resolution 832x480"),
                                         webhook_origin(receiver, "ann"))
        broken = await core.service.submit(parse_request("a broken day [sim:fail] --duration 1 --resolution 832x480"),
                                           webhook_origin(receiver, "bob"))
        await receiver.wait_for(busy.id or 0, "delivered")
        await receiver.wait_for(broken.id or 0, "failed")
        card = (await client.get("/admin/live/queue")).text.split('data-backend="simulator"', 1)[1]
        assert re.search(r'data-answers="429">2<', card), card
        assert "HTTP 429 on /v1/video/generations" in card
        assert "Last 24 h: 1 failed" in card and "simulated generation failure" in card
        assert "max_parallel" in card  # the simulator's own /v1/health answer


class _GpuGenerator:
    def health(self) -> dict[str, Any]:
        return {"model": "Wan-AI/Wan2.2-TI2V-5B-Diffusers", "device": "cuda:0", "gpu": "NVIDIA H200",
                "memory": {"gpu_allocated_bytes": 24 * 2**30, "gpu_total_bytes": 141 * 2**30}}


class _GpuBackend:
    """Stands in for DiffusersBackend: only its health is read here."""

    name = "diffusers"
    label = "Wan2.2-TI2V-5B on this GPU"
    max_concurrency = 1
    max_segment_s = 5
    models: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        self.generator = _GpuGenerator()

    async def aclose(self) -> None:
        return None


async def test_a_gpus_model_and_memory_show_on_its_card(make_core: Any) -> None:
    core: Core = await make_core(backend=_GpuBackend())
    async with _signed_in(core) as client:
        page = (await client.get("/admin")).text
        card = page.split('data-backend="diffusers"', 1)[1]
        assert "Wan-AI/Wan2.2-TI2V-5B-Diffusers" in card and "NVIDIA H200" in card
        assert "memory.gpu_allocated_bytes</th><td>24.00 GiB" in card
        assert "0 running of 1 at once" in card
