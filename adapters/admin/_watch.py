"""What each provider answered lately: 429s and other errors, including those a retry hid.

A provider's 429 is retried by the backend and usually never fails a job, so the jobs table
does not show it. The watch listens to each HTTP backend's client (an httpx response hook) and
keeps the last error answers in memory, for the queue page's backend cards.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx

WINDOW_S = 3600.0


@dataclass(frozen=True)
class Answers:
    """Error answers in the last hour: 429s, 5xx, other 4xx, and the latest one."""

    rate_limited: int
    server_errors: int
    refusals: int
    latest: str


class ProviderWatch:
    def __init__(self, keep: int = 1000) -> None:
        self._seen: dict[str, deque[tuple[float, int, str]]] = {}
        self._keep = keep

    def attach(self, backends: Iterable[tuple[str, Any]]) -> None:
        """Listen to every backend built on our provider client (``http``, the simulator, hosted ones)."""
        for name, backend in backends:
            client = getattr(getattr(backend, "_client", None), "_client", None)
            if not isinstance(client, httpx.AsyncClient):
                continue
            seen = self._seen.setdefault(name, deque(maxlen=self._keep))

            async def record(response: httpx.Response, seen: deque[tuple[float, int, str]] = seen) -> None:
                if response.status_code >= 400:
                    seen.append((time.time(), response.status_code, response.request.url.path))

            hooks = client.event_hooks
            client.event_hooks = {**hooks, "response": [*hooks.get("response", []), record]}

    def answers(self, name: str, now: float | None = None) -> Answers | None:
        seen = self._seen.get(name)
        if seen is None:
            return None
        since = (now or time.time()) - WINDOW_S
        recent = [(at, status, path) for at, status, path in seen if at >= since]
        latest = ""
        if recent:
            at, status, path = recent[-1]
            latest = f"HTTP {status} on {path}, {int((now or time.time()) - at)} s ago"
        return Answers(
            rate_limited=sum(1 for _, s, _ in recent if s == 429),
            server_errors=sum(1 for _, s, _ in recent if s >= 500),
            refusals=sum(1 for _, s, _ in recent if 400 <= s < 500 and s != 429),
            latest=latest,
        )
