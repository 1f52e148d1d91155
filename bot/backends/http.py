"""``HttpBackend``: a generator reached over the provider REST contract (``wan26-api-guide.txt``).

Third-party WAN providers, our own GPU worker and the built-in simulator all serve the same
contract, so this one module talks to all three:

    POST {base}/video/generations                 text-to-video  -> {"task_id": ...}
    POST {base}/video/image-to-video              image-to-video -> {"task_id": ...}
    GET  {base}/video/generations/{id}            -> {"status", "progress", "output": {"video_url"}, "error"}
    POST {base}/video/generations/{id}/cancel     best effort; many providers lack it
    GET  {video_url}                              the finished clip, often on a CDN

Transient faults (429, 5xx, timeouts, refused connections) are retried a bounded number of times
with exponential backoff and jitter, honouring ``Retry-After``; what is left becomes a
``BackendError`` whose message can be shown to the person as it is. The API key travels only in
the ``Authorization`` header to the provider's own origin: never to a CDN or presigned URL, and
never into a message, a ``repr`` or a log record (we log method, path and status only).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import os
import random
import tempfile
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from bot.errors import BackendError
from bot.models import GenerationSpec, Quality, TaskState, TaskStatus

__all__ = ["HttpBackend"]

_log = logging.getLogger(__name__)

_STATUSES: dict[str, TaskStatus] = {
    **dict.fromkeys(("queued", "pending", "submitted"), TaskStatus.QUEUED),
    **dict.fromkeys(("running", "processing", "in_progress"), TaskStatus.RUNNING),
    **dict.fromkeys(("succeeded", "success", "completed"), TaskStatus.SUCCEEDED),
    **dict.fromkeys(("failed", "error", "canceled", "cancelled"), TaskStatus.FAILED),
}

# What Quality.HIGH asks of the provider when the spec leaves a knob unset (the guide's values).
_HIGH_QUALITY_STEPS = 50
_HIGH_QUALITY_GUIDANCE = 7.5

# Network faults after which the same request may well succeed; anything else httpx raises
# (a malformed URL, an unsupported scheme) is a configuration error and is not retried.
_TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

_NOT_RESPONDING = "The video service is not responding."
_BAD_KEY = "The video service rejected our API key (check WAN_API_KEY)."
_PROVIDER_MESSAGE_MAX = 300
_DEFAULT_PORTS = {"http": 80, "https": 443}


class HttpBackend:
    """A ``Backend`` for any server speaking the provider REST contract.

    One ``httpx.AsyncClient`` is shared by every call so connections are pooled; the pool holds
    ``max_concurrency`` keep-alive connections (one per in-flight task: each task polls or
    downloads one thing at a time) plus two spare for cancels. ``timeout_s`` bounds each network
    step (connect, each read, each write), not a whole download. A request is tried at most
    ``1 + max_retries`` times; waits grow as ``backoff_base_s * 2**attempt`` with jitter, never
    shorter than the server's ``Retry-After`` and never longer than ``backoff_max_s``.

    ``transport`` swaps the network layer (tests, a proxy); leave it ``None`` in production.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str = "",
        *,
        model: str = "wan-2.6",
        name: str = "http",
        label: str | None = None,
        max_concurrency: int = 4,
        max_segment_s: int = 10,
        timeout_s: float = 30.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 20.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.label = label or model
        self.model = model
        self.max_concurrency = max_concurrency
        self.max_segment_s = max_segment_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._base = httpx.URL(base_url.rstrip("/") + "/")
        self._api_key = api_key
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(
                max_connections=max_concurrency + 2, max_keepalive_connections=max_concurrency
            ),
            headers={"User-Agent": "videobot"},
            transport=transport,
        )

    def __repr__(self) -> str:
        base = self._base.copy_with(userinfo=b"")
        return f"HttpBackend(name={self.name!r}, model={self.model!r}, base_url={str(base)!r})"

    async def submit(self, spec: GenerationSpec) -> str:
        """Start a generation and return the provider's task id.

        The body follows the guide: ``model``, ``prompt``, optional ``negative_prompt``, for
        image-to-video an ``image`` data URI, and ``parameters`` with ``duration``,
        ``resolution`` (``"WxH"``), ``fps``, ``seed`` and whichever of ``guidance_scale``,
        ``num_inference_steps`` and ``motion_strength`` are set. Quality maps to parameters so:
        ``Quality.HIGH`` asks for 50 inference steps and guidance 7.5 (the guide's
        high-quality settings) unless the spec sets its own; ``Quality.STANDARD`` sends neither
        and leaves the provider's defaults, which are faster and cheaper.

        A submit that timed out may still have reached the provider; retrying it can, rarely,
        start (and bill) a second task. That is accepted: a request that never started is the
        more common fault, and the contract offers no idempotency key.
        """
        steps, guidance = spec.num_inference_steps, spec.guidance_scale
        if spec.quality is Quality.HIGH:
            steps = _HIGH_QUALITY_STEPS if steps is None else steps
            guidance = _HIGH_QUALITY_GUIDANCE if guidance is None else guidance
        parameters = {
            "duration": spec.duration_s,
            "resolution": f"{spec.width}x{spec.height}",
            "fps": spec.fps,
            "seed": spec.seed,
            "guidance_scale": guidance,
            "num_inference_steps": steps,
            "motion_strength": spec.motion_strength,
        }
        body: dict[str, Any] = {"model": self.model, "prompt": spec.prompt}
        if spec.negative_prompt:
            body["negative_prompt"] = spec.negative_prompt
        path = "video/generations"
        if spec.image is not None:
            if not spec.image_mime:
                raise BackendError("The image has no known type; attach a PNG or JPEG.")
            encoded = base64.b64encode(spec.image).decode("ascii")
            body["image"] = f"data:{spec.image_mime};base64,{encoded}"
            path = "video/image-to-video"
        body["parameters"] = {k: v for k, v in parameters.items() if v is not None}

        data = _json_object(await self._send("POST", self._base.join(path), json=body))
        task_id = data.get("task_id")
        if not isinstance(task_id, str | int) or isinstance(task_id, bool) or task_id == "":
            raise BackendError("The video service accepted the request but sent no task id.")
        return str(task_id)

    async def poll(self, task_id: str) -> TaskState:
        """Report a task's state, normalising the provider's vocabulary.

        Status words are matched case-insensitively (see ``_STATUSES``); a word we do not know
        is an error rather than "still running", so a changed API fails loudly instead of
        leaving jobs waiting until they time out. ``progress`` may come as a fraction or a
        percentage; a finished task always reports 1.0. A relative ``video_url`` is resolved
        against the base URL (our worker serves files from its own origin).
        """
        data = _json_object(await self._send("GET", self._task_url(task_id)))
        raw_status = str(data.get("status", "")).strip().lower()
        status = _STATUSES.get(raw_status)
        if status is None:
            raise BackendError(
                f"The video service reported a task status we do not understand: "
                f"{_clip(raw_status) or '(none)'}."
            )
        if status is TaskStatus.FAILED:
            reason = _provider_message(data) or f"the task ended as {raw_status}"
            return TaskState(status, _progress(data.get("progress")), error=self._scrub(reason))
        if status is TaskStatus.QUEUED or status is TaskStatus.RUNNING:
            return TaskState(status, _progress(data.get("progress")))
        output = data.get("output")
        video_url = output.get("video_url") if isinstance(output, dict) else None
        if not isinstance(video_url, str) or not video_url:
            raise BackendError("The video service finished the task but sent no video URL.")
        return TaskState(status, 1.0, video_url=str(self._base.join(video_url)))

    async def fetch(self, state: TaskState, dest: Path, max_bytes: int) -> Path:
        """Download the finished video to ``dest`` (whole or not at all) and return it.

        A declared ``Content-Length`` over ``max_bytes`` is refused before any body is read, and
        the stream is cut as soon as more than ``max_bytes`` arrive, since servers may omit or
        misstate the length. Our key goes only to our provider's origin, and on redirects httpx
        drops it once the chain leaves that origin (presigned URLs must not see it).
        """
        if not state.video_url:
            raise BackendError("The video service gave no video to download.")
        response = await self._send("GET", httpx.URL(state.video_url), stream=True)
        try:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise _too_big(max_bytes)
            dest.parent.mkdir(parents=True, exist_ok=True)
            size = await _stream_to(response, dest, max_bytes)
        except _TRANSIENT_ERRORS as exc:
            raise BackendError("The video download was interrupted — try again.", retryable=True) from exc
        finally:
            await response.aclose()
        _log.debug("fetched %s (%d bytes)", response.url.path, size)
        return dest

    async def cancel(self, task_id: str) -> None:
        """Ask the provider to stop a task, once and without retries.

        Cancelling is advisory: many providers have no cancel endpoint (404/405) and the job is
        already marked canceled on our side, so failures are logged at debug and swallowed
        rather than holding up the person who pressed "cancel".
        """
        url = self._task_url(task_id, "/cancel")
        try:
            response = await self._client.post(url, headers=self._auth_for(url))
        except httpx.HTTPError as exc:
            _log.debug("cancel POST %s failed: %s", url.path, type(exc).__name__)
            return
        _log.debug("cancel POST %s -> HTTP %d", url.path, response.status_code)

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()

    def _task_url(self, task_id: str, suffix: str = "") -> httpx.URL:
        # Task ids come from the provider; quoting keeps a strange one from changing the path.
        return self._base.join(f"video/generations/{quote(task_id, safe='')}{suffix}")

    def _auth_for(self, url: httpx.URL) -> dict[str, str]:
        """The auth header, only for our provider's own origin (never a CDN or presigned URL)."""
        if not self._api_key or _origin(url) != _origin(self._base):
            return {}
        return {"Authorization": f"Bearer {self._api_key}"}

    def _scrub(self, text: str) -> str:
        """Mask our key in provider-supplied text: some services echo the rejected credential."""
        return text.replace(self._api_key, "***") if self._api_key else text

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        *,
        json: dict[str, Any] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send with bounded retries and return a 2xx response; raise ``BackendError`` otherwise.

        With ``stream=True`` the body is left unread and the caller must close the response.
        """
        attempt = 0
        while True:
            request = self._client.build_request(method, url, json=json, headers=self._auth_for(url))
            retry_after: float | None = None
            cause: Exception | None = None
            try:
                response = await self._client.send(request, stream=stream, follow_redirects=stream)
            except _TRANSIENT_ERRORS as exc:
                failure = BackendError(_NOT_RESPONDING, retryable=True)
                outcome, cause = type(exc).__name__, exc
            else:
                status = response.status_code
                outcome = f"HTTP {status}"
                if 200 <= status < 300:
                    _log.debug("%s %s -> %s", method, url.path, outcome)
                    return response
                await response.aread()
                await response.aclose()
                if status != 429 and status < 500:
                    _log.debug("%s %s -> %s", method, url.path, outcome)
                    raise self._refusal(response)
                retry_after = _retry_after_s(response.headers.get("Retry-After"))
                failure = BackendError(_busy_message(status), retryable=True, status_code=status)
            if attempt == self.max_retries:
                _log.info("%s %s -> %s; giving up after %d tries", method, url.path, outcome, attempt + 1)
                raise failure from cause
            delay = self._delay(attempt, retry_after)
            attempt += 1
            _log.info(
                "%s %s -> %s; retry %d/%d in %.2fs",
                method,
                url.path,
                outcome,
                attempt,
                self.max_retries,
                delay,
            )
            await asyncio.sleep(delay)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter, at least ``Retry-After``, at most ``backoff_max_s``.

        The jitter keeps several tasks that failed together from retrying in lockstep.
        """
        ceiling = self.backoff_base_s * 2**attempt
        backoff = random.uniform(ceiling / 2, ceiling)
        return min(self.backoff_max_s, max(backoff, retry_after or 0.0))

    def _refusal(self, response: httpx.Response) -> BackendError:
        """The non-retryable error for a 4xx (other than 429), naming the provider's reason."""
        status = response.status_code
        if status in (401, 403):
            return BackendError(_BAD_KEY, status_code=status)
        try:
            reason = _provider_message(response.json())
        except ValueError:
            reason = None
        if reason:
            message = f"The video service refused the request: {self._scrub(reason)}"
        else:
            message = f"The video service refused the request (HTTP {status})."
        return BackendError(message, status_code=status)


def _busy_message(status: int) -> str:
    if status == 429:
        return "The video service is busy (HTTP 429) — try again in a minute."
    return f"The video service is having trouble (HTTP {status}) — try again in a few minutes."


def _json_object(response: httpx.Response) -> dict[str, Any]:
    """The response's JSON object; an HTML error page or other garbage becomes a clear error."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise BackendError(
            f"The video service sent an answer we cannot read (HTTP {response.status_code}, "
            f"not a JSON object); check the provider URL.",
            status_code=response.status_code,
        )
    return data


def _provider_message(data: object) -> str | None:
    """The provider's own reason from ``{"error": {"message"}}``, ``{"error": "..."}`` or
    ``{"message"}`` (FastAPI's ``{"detail"}`` too, for our worker), shortened for chat."""
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    for candidate in (error, data.get("message"), data.get("detail")):
        if isinstance(candidate, str) and candidate.strip():
            return _clip(candidate.strip())
    return None


def _clip(text: str) -> str:
    if len(text) <= _PROVIDER_MESSAGE_MAX:
        return text
    return text[: _PROVIDER_MESSAGE_MAX - 1] + "…"


def _progress(value: object) -> float:
    """A fraction in [0, 1] from a fraction or a percentage (a value above 1 is a percentage)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    fraction = value / 100 if value > 1 else value
    return min(1.0, max(0.0, float(fraction)))


def _retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` of delta-seconds or an HTTP date; None if absent
    or unreadable. Fractions are accepted: some gateways send them, and tests use them."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme)


async def _stream_to(response: httpx.Response, dest: Path, max_bytes: int) -> int:
    """Stream the body into a temporary file beside ``dest``, then rename it into place.

    The rename is atomic on one filesystem, so ``dest`` never holds half a clip; the stream is
    cut as soon as more than ``max_bytes`` arrive. Returns the number of bytes written.
    """
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    received = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                if received > max_bytes:
                    raise _too_big(max_bytes)
                await asyncio.to_thread(out.write, chunk)
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return received


def _too_big(max_bytes: int) -> BackendError:
    limit = f"{max_bytes / 2**20:.1f} MiB" if max_bytes >= 2**20 else f"{max_bytes} bytes"
    return BackendError(f"The video is larger than the {limit} download limit.")
