"""``ProviderClient``: the HTTP layer every remote backend shares.

Each hosted provider (the API guide's contract, DashScope, fal, Replicate) differs in paths, body
shapes, status words and error bodies, but not in how a call to it must behave:

- transient faults (429, 5xx, timeouts, refused connections) are retried a bounded number of
  times with exponential backoff and jitter, never sooner than the server's ``Retry-After``;
- what is left becomes a ``BackendError`` whose message can be shown to the person as it is;
- the key travels only in a header to the provider's own origin, never to a CDN or presigned
  URL, and is masked in any provider text that echoes it; logs carry method, path and status;
- a download streams into a temporary file with a size cap, and lands whole or not at all;
  one that trickles (less than ``STALL_MIN_BYTES`` in ``stall_s``) is cut as stalled.

A backend module owns the vocabulary (``refusal`` turns a 4xx into the person's message); this
module owns the behaviour.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import ssl
import tempfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx

from bot.errors import BackendError
from bot.outbound import BlockedDestination, guarded_client

__all__ = ["ProviderClient", "Refusal", "json_object", "clip_text", "progress_fraction"]

_log = logging.getLogger(__name__)

# Network faults after which the same request may well succeed; anything else httpx raises
# (a malformed URL, an unsupported scheme) is a configuration error and is not retried.
TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# What a provider's answer can do wrong on the wire: a link we must not or cannot follow (a
# private address, another scheme, a redirect loop), or a body that cannot be decoded.
PROVIDER_FAULTS = (BlockedDestination, httpx.TooManyRedirects, httpx.UnsupportedProtocol, httpx.InvalidURL, httpx.DecodingError)

_NOT_RESPONDING = "The video service is not responding."

STALL_MIN_BYTES = 64 * 1024
"""A download must bring at least this much in every ``stall_s``, or it is stalled: a byte every
few seconds never trips a per-read timeout, yet would keep a job fetching for days."""
_PROVIDER_MESSAGE_MAX = 300
_DEFAULT_PORTS = {"http": 80, "https": 443}

Refusal = Callable[[httpx.Response], BackendError]
"""Turns a provider's 4xx answer (not 429) into the error the person sees."""


KEEPALIVE_CONNECTIONS = 16
"""Idle connections a provider's pool keeps (see ``ProviderClient``)."""


class ProviderClient:
    """One pooled ``httpx.AsyncClient`` plus the retry, auth and download rules above.

    ``auth_headers`` go only to requests whose origin is ``base_url``'s. The pool opens up to
    ``max_concurrency`` connections plus two spare for cancels, and keeps at most
    ``KEEPALIVE_CONNECTIONS`` of them open between requests: httpcore checks every idle
    connection (a system call each) before every request, so hundreds of idle connections
    cost the event loop more than the odd reconnect, and delay the acks it serves. ``timeout_s`` bounds
    each network step (connect, each read, each write), not a whole download. A request is
    tried at most ``1 + max_retries`` times; waits grow as ``backoff_base_s * 2**attempt``
    with jitter, never shorter than ``Retry-After`` and never longer than ``backoff_max_s``.
    A download that brings less than ``STALL_MIN_BYTES`` in any ``stall_s`` is cut.
    ``transport`` swaps the network layer (tests, a proxy); ``verify`` is httpx's TLS setting
    (an ``ssl.SSLContext``, or a CA bundle path for providers reached through a corporate proxy).
    Every request, and every redirect hop, passes ``bot.outbound``'s guard: ``base_url``'s host
    and port count as configured by the admin, anything else must be public or in
    ``VIDEOBOT_ALLOWED_HOSTS``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth_headers: Mapping[str, str] | None = None,
        secret: str = "",
        refusal: Refusal,
        max_concurrency: int = 4,
        timeout_s: float = 30.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 20.0,
        stall_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: bool | str | ssl.SSLContext = True,
    ) -> None:
        self.base = httpx.URL(base_url.rstrip("/") + "/")
        self.stall_s = stall_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._auth = dict(auth_headers or {})
        self._secret = secret
        self._refusal = refusal
        self._client = guarded_client(
            hosts=[str(self.base)],
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(
                max_connections=max_concurrency + 2,
                max_keepalive_connections=min(max_concurrency, KEEPALIVE_CONNECTIONS),
            ),
            headers={"User-Agent": "videobot"},
            transport=transport,
            verify=verify,
        )

    @property
    def public_base(self) -> str:
        """The base URL without any user info, safe for a ``repr`` or a log line."""
        return str(self.base.copy_with(userinfo=b""))

    def url(self, path: str) -> httpx.URL:
        """``path`` resolved against the base URL (an absolute URL stays as it is)."""
        return self.base.join(path)

    def auth_for(self, url: httpx.URL) -> dict[str, str]:
        """The auth headers, only for the provider's own origin (never a CDN or presigned URL)."""
        return dict(self._auth) if self._auth and _origin(url) == _origin(self.base) else {}

    def scrub(self, text: str) -> str:
        """Mask the key in provider-supplied text: some services echo the rejected credential."""
        return text.replace(self._secret, "***") if self._secret else text

    async def send(
        self,
        method: str,
        url: httpx.URL,
        *,
        json: Any = None,
        content: bytes | None = None,
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        retry: bool = True,
    ) -> httpx.Response:
        """Send with bounded retries and return a 2xx response; raise ``BackendError`` otherwise.

        With ``stream=True`` the body is left unread and the caller must close the response.
        ``retry=False`` sends once (a cancel must not hold up the person who pressed it).
        ``files`` sends a multipart form, field name to ``(filename, bytes, content type)``.
        """
        attempt = 0
        while True:
            merged = {**self.auth_for(url), **(headers or {})}
            request = self._client.build_request(method, url, json=json, content=content, files=files, headers=merged)
            retry_after: float | None = None
            cause: Exception | None = None
            try:
                response = await self._client.send(request, stream=stream, follow_redirects=stream)
            except TRANSIENT_ERRORS as exc:
                failure = BackendError(_NOT_RESPONDING, retryable=True)
                outcome, cause = type(exc).__name__, exc
            except PROVIDER_FAULTS as exc:
                _log.info("%s %s -> %s: %s", method, url.path, type(exc).__name__, exc)
                raise provider_fault(exc) from exc
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
                retry_after = retry_after_s(response.headers.get("Retry-After"))
                failure = BackendError(_busy_message(status), retryable=True, status_code=status)
            if not retry or attempt == self.max_retries:
                _log.info("%s %s -> %s; giving up after %d tries", method, url.path, outcome, attempt + 1)
                raise failure from cause
            delay = self._delay(attempt, retry_after)
            attempt += 1
            _log.info("%s %s -> %s; retry %d/%d in %.2fs", method, url.path, outcome, attempt, self.max_retries, delay)
            await asyncio.sleep(delay)

    async def send_json(self, method: str, url: httpx.URL, **kwargs: Any) -> dict[str, Any]:
        """``send`` and read the answer as a JSON object."""
        return json_object(await self.send(method, url, **kwargs))

    async def download(self, url: httpx.URL, dest: Path, max_bytes: int) -> Path:
        """Download ``url`` to ``dest`` (whole or not at all) and return it.

        A declared ``Content-Length`` over ``max_bytes`` is refused before any body is read, and
        the stream is cut as soon as more than ``max_bytes`` arrive, since servers may omit or
        misstate the length. On redirects httpx drops our auth header once the chain leaves
        the provider's origin (presigned URLs must not see it).
        """
        response = await self.send("GET", url, stream=True)
        try:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise _too_big(max_bytes)
            dest.parent.mkdir(parents=True, exist_ok=True)
            size = await _stream_to(response, dest, max_bytes, self.stall_s)
        except TRANSIENT_ERRORS as exc:
            raise BackendError("The video download was interrupted — try again.", retryable=True) from exc
        except PROVIDER_FAULTS as exc:
            raise provider_fault(exc) from exc
        finally:
            await response.aclose()
        _log.debug("fetched %s (%d bytes)", response.url.path, size)
        return dest

    async def aclose(self) -> None:
        await self._client.aclose()

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter, at least ``Retry-After``, at most ``backoff_max_s``.

        The jitter keeps several tasks that failed together from retrying in lockstep.
        """
        ceiling = self.backoff_base_s * 2**attempt
        backoff = random.uniform(ceiling / 2, ceiling)
        return min(self.backoff_max_s, max(backoff, retry_after or 0.0))


def provider_fault(exc: Exception) -> BackendError:
    """The person's message for a provider answer we will not or cannot follow: the provider's
    fault, said as such (not "something went wrong on our side"), and not retried."""
    if isinstance(exc, BlockedDestination):
        reason = f"a link we will not follow ({exc})"
    elif isinstance(exc, httpx.TooManyRedirects):
        reason = "a link that redirects too many times"
    elif isinstance(exc, httpx.DecodingError):
        reason = "a body that cannot be decoded"
    else:
        reason = "a link we cannot follow"
    return BackendError(f"The video service sent {reason}.")


def _busy_message(status: int) -> str:
    if status == 429:
        return "The video service is busy (HTTP 429) — try again in a minute."
    return f"The video service is having trouble (HTTP {status}) — try again in a few minutes."


def json_object(response: httpx.Response) -> dict[str, Any]:
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


def response_json(response: httpx.Response) -> Any:
    """The body as JSON, or None when it is not JSON (an HTML error page, an empty body)."""
    try:
        return response.json()
    except ValueError:
        return None


def clip_text(text: str) -> str:
    """Provider text shortened for a chat message."""
    text = text.strip()
    if len(text) <= _PROVIDER_MESSAGE_MAX:
        return text
    return text[: _PROVIDER_MESSAGE_MAX - 1] + "…"


def progress_fraction(value: object) -> float:
    """A fraction in [0, 1] from a fraction or a percentage (a value above 1 is a percentage)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    fraction = value / 100 if value > 1 else value
    return min(1.0, max(0.0, float(fraction)))


def retry_after_s(value: str | None) -> float | None:
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


async def _stream_to(response: httpx.Response, dest: Path, max_bytes: int, stall_s: float) -> int:
    """Stream the body into a temporary file beside ``dest``, then rename it into place.

    The rename is atomic on one filesystem, so ``dest`` never holds half a clip; the stream is
    cut as soon as more than ``max_bytes`` arrive, or when a window of ``stall_s`` passes with
    less than ``STALL_MIN_BYTES`` received. Returns the number of bytes written.
    """
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    received = 0
    loop = asyncio.get_running_loop()
    window_end, window_bytes = loop.time() + stall_s, 0
    chunks = response.aiter_bytes()
    try:
        with os.fdopen(fd, "wb") as out:
            while True:
                try:
                    async with asyncio.timeout_at(window_end):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise _stalled(stall_s, received) from None
                received += len(chunk)
                if received > max_bytes:
                    raise _too_big(max_bytes)
                await asyncio.to_thread(out.write, chunk)
                window_bytes += len(chunk)
                if window_bytes >= STALL_MIN_BYTES:
                    window_end, window_bytes = loop.time() + stall_s, 0
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return received


def _stalled(stall_s: float, received: int) -> BackendError:
    _log.info("download stalled: under %d bytes in %.1fs (%d bytes in all)", STALL_MIN_BYTES, stall_s, received)
    return BackendError(
        f"The video download stalled (almost nothing arrived in {stall_s:g} s) — try again.", retryable=True
    )


def _too_big(max_bytes: int) -> BackendError:
    limit = f"{max_bytes / 2**20:.1f} MiB" if max_bytes >= 2**20 else f"{max_bytes} bytes"
    return BackendError(f"The video is larger than the {limit} download limit.")
