"""``FalBackend``: Wan models on fal.ai's queue (``queue.fal.run``).

fal runs every model behind one queue protocol (docs.fal.ai, "Queue"):

    POST https://{host}/{endpoint id}       the model's input     -> {request_id, status_url,
                                                                     response_url, cancel_url}
    GET  {status_url}?logs=1                -> {"status": IN_QUEUE (+ queue_position) |
                                                IN_PROGRESS | COMPLETED (+ error when it failed)}
    GET  {response_url}                     the model's output: {"video": {"url": ...}}, or a
                                            422 ``{"detail": [{loc, msg, type}]}`` for an input
                                            the model refused
    PUT  {cancel_url}                       202 CANCELLATION_REQUESTED (while still queued)
    GET  {video.url}                        the clip, on fal's CDN (fal.media), without our key

The three URLs are used as fal returns them, never built: they drop the endpoint's sub-path
(``fal-ai/wan-25-preview/text-to-video`` polls under ``fal-ai/wan-25-preview``). They are
packed with the request id into the task id (compact JSON), so a restarted bot resumes from what
it stored. The key goes only to the configured queue host: a returned URL anywhere else is
refused rather than followed. The host is always reached over https; the CA bundle comes from
``SSL_CERT_FILE`` when set, as fal's own client does, else certifi's.

wan-25 on fal always makes sound and has no switch for it: ``--silent`` is honoured by the
runner, which strips the track after download, so no unknown field is ever sent.

End frames go to ``fal-ai/wan-flf2v``, fal's Wan 2.1 first-last-frame-to-video endpoint
(https://fal.ai/models/fal-ai/wan-flf2v/api and its ``llms.txt`` schema): the first image as
``start_image_url``, the last as ``end_image_url`` (both data URIs fitted to ``IMAGE_RULES``),
``num_frames`` (81–100) at ``frames_per_second`` (16), ``resolution`` 480p or 720p and
``aspect_ratio: "auto"`` (the clip follows the start image). fal's Wan 2.5 takes no end frame and
no multi-shot switch, so ``--shots multi`` is refused here rather than silently ignored.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certifi
import httpx

from bot.backends._client import ProviderClient, clip_text, response_json
from bot.catalog import ModelSpec, model_spec
from bot.errors import BackendError, ConfigurationError
from bot.images import ImageRules, fit_image
from bot.models import GenerationSpec, Mode, TaskState, TaskStatus
from bot.settings import Settings

__all__ = ["DEFAULT_END_FRAME_MODEL", "DEFAULT_HOST", "DEFAULT_I2V_MODEL", "DEFAULT_T2V_MODEL", "FalBackend"]

_log = logging.getLogger(__name__)

DEFAULT_HOST = "queue.fal.run"
DEFAULT_T2V_MODEL = "fal-ai/wan-25-preview/text-to-video"
DEFAULT_I2V_MODEL = "fal-ai/wan-25-preview/image-to-video"
DEFAULT_END_FRAME_MODEL = "fal-ai/wan-flf2v"
_FLF2V = "fal-ai/wan-flf2v"

# Wan's image-to-video takes first frames of 360–2000 px a side (fal's and Alibaba's model
# pages); 10 MB keeps the base64 data URI within a sane JSON body.
IMAGE_RULES = ImageRules(min_side=360, max_side=2000, max_bytes=10 * 1024 * 1024)

# The aspect ratios fal's Wan text-to-video endpoints accept, as width / height.
_ASPECTS = {"16:9": 16 / 9, "9:16": 9 / 16, "1:1": 1.0}

_BAD_KEY = "The bot is misconfigured: fal.ai did not accept its key. An admin has been told."
_OFF_HOST = "fal.ai answered with a URL outside FAL_QUEUE_RUN_HOST; videobot does not follow it."


@dataclass(frozen=True)
class FalTask:
    """What resumes a fal request: its id and the three URLs fal returned for it."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str

    def pack(self) -> str:
        """The task id stored with the job: compact JSON of the four fields."""
        return json.dumps(
            {"id": self.request_id, "status": self.status_url, "result": self.response_url, "cancel": self.cancel_url},
            separators=(",", ":"),
        )

    @classmethod
    def unpack(cls, task_id: str) -> FalTask:
        try:
            data = json.loads(task_id)
            return cls(str(data["id"]), str(data["status"]), str(data["result"]), str(data["cancel"]))
        except (ValueError, TypeError, KeyError):
            raise BackendError("This job's fal request id is unreadable; it cannot be resumed.") from None


class FalBackend:
    """A ``Backend`` on fal.ai's queue; see the module docstring.

    ``host`` is ``host[:port]`` (``FAL_QUEUE_RUN_HOST``), always https. ``ca_file`` is a CA
    bundle (``SSL_CERT_FILE``); empty: certifi's. ``transport`` swaps the network layer (tests).
    """

    def __init__(
        self,
        key: str,
        *,
        host: str = DEFAULT_HOST,
        t2v_model: str = DEFAULT_T2V_MODEL,
        i2v_model: str = DEFAULT_I2V_MODEL,
        end_frame_model: str = DEFAULT_END_FRAME_MODEL,
        name: str = "fal",
        label: str | None = None,
        max_concurrency: int = 4,
        ca_file: str = "",
        timeout_s: float = 30.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 20.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not key:
            raise ConfigurationError("The fal backend needs FAL_KEY (create one at https://fal.ai/dashboard/keys).")
        self.host = _checked_host(host)
        self.name = name
        self.models: dict[Mode, ModelSpec] = {
            Mode.TEXT_TO_VIDEO: model_spec(t2v_model),
            Mode.IMAGE_TO_VIDEO: model_spec(i2v_model),
        }
        for mode, spec in self.models.items():
            if mode not in spec.modes:
                raise ConfigurationError(f"{spec.name} is not a {mode.value} model; set the fal models the other way round.")
        i2v = self.models[Mode.IMAGE_TO_VIDEO]
        self.end_frame_model: ModelSpec = i2v if i2v.end_frame else model_spec(end_frame_model)
        """The endpoint a request with an end frame goes to: the image-to-video one when it takes
        an end frame, else ``end_frame_model`` (``fal-ai/wan-flf2v``)."""
        if not self.end_frame_model.end_frame:
            raise ConfigurationError(f"{end_frame_model!r} takes no end frame on fal; use {_FLF2V}.")
        self.label = label or _family(t2v_model)
        self.max_concurrency = max_concurrency
        self.max_segment_s = max(spec.max_segment_s for spec in self.models.values())
        self._client = ProviderClient(
            f"https://{self.host}/",
            auth_headers={"Authorization": f"Key {key}"},
            secret=key,
            refusal=self._refusal,
            max_concurrency=max_concurrency,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            transport=transport,
            verify=_ssl_context(ca_file),
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        name: str = "fal",
        t2v_model: str | None = None,
        i2v_model: str | None = None,
        max_concurrency: int | None = None,
    ) -> FalBackend:
        """The backend ``FAL_KEY``, ``FAL_QUEUE_RUN_HOST`` and ``SSL_CERT_FILE`` describe."""
        return cls(
            settings.fal_key,
            host=settings.fal_host or DEFAULT_HOST,
            t2v_model=t2v_model or DEFAULT_T2V_MODEL,
            i2v_model=i2v_model or DEFAULT_I2V_MODEL,
            name=name,
            max_concurrency=max_concurrency or 4,
            ca_file=settings.ssl_cert_file,
        )

    def __repr__(self) -> str:
        models = [spec.name for spec in self.models.values()]
        return f"FalBackend(name={self.name!r}, host={self.host!r}, models={models!r})"

    async def submit(self, spec: GenerationSpec) -> str:
        """Queue one generation on the mode's endpoint and return the packed ``FalTask``.

        wan-25 takes ``duration`` as the string ``"5"`` or ``"10"``, ``resolution`` as a tier,
        ``aspect_ratio`` (text-to-video; image-to-video follows the image) and the first frame
        as ``image_url``, here a data URI of the image fitted to ``IMAGE_RULES``. Wan 2.2 A14B
        counts frames instead (``num_frames`` at ``frames_per_second``).
        """
        model = self._model(spec)
        body = await self._input(model.name, spec)
        data = await self._client.send_json("POST", self._client.url(model.name), json=body)
        request_id = data.get("request_id")
        urls = [data.get(k) for k in ("status_url", "response_url", "cancel_url")]
        if not isinstance(request_id, str) or not request_id or not all(isinstance(u, str) and u for u in urls):
            raise BackendError("fal.ai accepted the request but sent no request id or status URLs.")
        task = FalTask(request_id, *(str(u) for u in urls))
        for url in urls:
            self._on_host(str(url))
        return task.pack()

    async def poll(self, task_id: str) -> TaskState:
        """The request's state from its stored ``status_url``; once COMPLETED, its result.

        IN_QUEUE and IN_PROGRESS carry no progress figure on fal, so both report 0; the queue
        position is logged. A COMPLETED request with an ``error`` failed; otherwise the result
        is read, and a 422 there (the model refused an input) becomes a message naming the field.
        """
        task = FalTask.unpack(task_id)
        status_url = self._on_host(task.status_url).copy_merge_params({"logs": "1"})
        data = await self._client.send_json("GET", status_url)
        status = str(data.get("status", "")).strip().upper()
        if status == "IN_QUEUE":
            _log.debug("fal request %s: in queue at position %s", task.request_id, data.get("queue_position"))
            return TaskState(TaskStatus.QUEUED, 0.0)
        if status == "IN_PROGRESS":
            return TaskState(TaskStatus.RUNNING, 0.0)
        if status in ("CANCELED", "CANCELLED", "FAILED"):
            return TaskState(TaskStatus.FAILED, error=self._reason(data) or f"the request ended as {status}")
        if status != "COMPLETED":
            raise BackendError(
                f"fal.ai reported a request status we do not understand: {clip_text(status) or '(none)'}."
            )
        reason = self._reason(data)
        if reason:
            return TaskState(TaskStatus.FAILED, error=reason)
        result = await self._client.send_json("GET", self._on_host(task.response_url))
        video = result.get("video")
        url = video.get("url") if isinstance(video, dict) else None
        if not isinstance(url, str) or httpx.URL(url).scheme != "https":
            raise BackendError("fal.ai finished the request but sent no https video URL.")
        return TaskState(TaskStatus.SUCCEEDED, 1.0, video_url=url)

    async def fetch(self, state: TaskState, dest: Path, max_bytes: int) -> Path:
        """Download the clip from fal's CDN (the key is not sent there) to ``dest``."""
        if not state.video_url:
            raise BackendError("fal.ai gave no video to download.")
        return await self._client.download(httpx.URL(state.video_url), dest, max_bytes)

    async def cancel(self, task_id: str) -> None:
        """``PUT cancel_url`` once, without retries; fal cancels only requests still queued,
        and the job is already canceled on our side, so every failure is logged and swallowed."""
        try:
            task = FalTask.unpack(task_id)
            url = self._on_host(task.cancel_url)
            response = await self._client.send("PUT", url, retry=False)
        except BackendError as error:
            _log.debug("fal cancel -> %s", f"HTTP {error.status_code}" if error.status_code else error)
            return
        answer = response_json(response)
        word = answer.get("status") if isinstance(answer, dict) else None
        _log.debug("fal cancel PUT %s -> HTTP %s %s", url.path, response.status_code, word or "")

    async def aclose(self) -> None:
        await self._client.aclose()

    def _model(self, spec: GenerationSpec) -> ModelSpec:
        """The mode's endpoint, or the end-frame one when the spec carries an end frame."""
        if spec.shots == "multi":
            raise BackendError("fal.ai's Wan makes one shot per clip; --shots multi needs Wan 2.6 on DashScope.")
        if spec.end_image is None:
            model = self.models[spec.mode]
            if model.name == _FLF2V:
                raise BackendError(f"{_FLF2V} needs an end image as well as a start image; attach both (or use --loop).")
            return model
        if spec.image is None:
            raise BackendError("An end frame needs a start image too.")
        return self.end_frame_model

    async def _input(self, endpoint: str, spec: GenerationSpec) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": spec.prompt, "seed": spec.seed, "resolution": spec.tier}
        if spec.negative_prompt:
            body["negative_prompt"] = spec.negative_prompt
        if endpoint == _FLF2V:
            body["num_frames"] = spec.duration_s * spec.fps + 1
            body["frames_per_second"] = spec.fps
            body["aspect_ratio"] = "auto"
            body["start_image_url"] = await _data_uri(spec.image, spec.image_mime)
            if spec.end_image is not None:
                body["end_image_url"] = await _data_uri(spec.end_image, spec.end_image_mime)
            return body
        if endpoint.startswith("fal-ai/wan/v2.2-a14b/"):
            body["num_frames"] = spec.duration_s * spec.fps + 1
            body["frames_per_second"] = spec.fps
            body["aspect_ratio"] = "auto" if spec.image is not None else _aspect(spec.width, spec.height)
        else:
            body["duration"] = str(spec.duration_s)
            if spec.image is None:
                body["aspect_ratio"] = _aspect(spec.width, spec.height)
        if spec.image is not None:
            body["image_url"] = await _data_uri(spec.image, spec.image_mime)
        return body

    def _on_host(self, url: str) -> httpx.URL:
        """``url`` if it is https on the configured queue host (the only place the key may go)."""
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            raise BackendError(_OFF_HOST) from None
        if parsed.scheme != "https" or _netloc(parsed) != _netloc(self._client.base):
            _log.warning("fal returned a URL on %s, outside FAL_QUEUE_RUN_HOST=%s; not following it",
                         parsed.host or "(none)", self.host)
            raise BackendError(_OFF_HOST)
        return parsed

    def _reason(self, data: dict[str, Any]) -> str | None:
        """Why a request failed: its ``error`` (and ``error_type``), else its last ERROR log."""
        error = data.get("error")
        if isinstance(error, dict):
            error = error.get("message") or error.get("detail")
        if not (isinstance(error, str) and error.strip()):
            logs = data.get("logs")
            errors = [
                entry.get("message") for entry in (logs if isinstance(logs, list) else [])
                if isinstance(entry, dict) and str(entry.get("level", "")).upper() == "ERROR"
            ]
            error = errors[-1] if errors and isinstance(errors[-1], str) else None
        if not error:
            return None
        return self._client.scrub(clip_text(str(error)))

    def _refusal(self, response: httpx.Response) -> BackendError:
        """The person's message for a 4xx (not 429): a bad key, a refused input, an expired link."""
        status = response.status_code
        on_queue = _netloc(response.request.url) == _netloc(self._client.base)
        if not on_queue:
            return BackendError(
                f"The finished video could not be downloaded from fal.ai (HTTP {status}); its link may have "
                "expired. Try again.",
                status_code=status,
            )
        if status in (401, 403):
            _log.error("fal.ai refused FAL_KEY (HTTP %s): set a valid key from https://fal.ai/dashboard/keys", status)
            return BackendError(_BAD_KEY, status_code=status)
        reason = _detail(response_json(response))
        if reason:
            return BackendError(f"fal.ai refused the request: {self._client.scrub(reason)}", status_code=status)
        return BackendError(f"fal.ai refused the request (HTTP {status}).", status_code=status)


async def _data_uri(image: bytes | None, mime: str | None) -> str:
    """``image`` fitted to ``IMAGE_RULES`` (off the event loop) as a base64 data URI."""
    if image is None or not mime:
        raise BackendError("The image has no known type; attach a PNG or JPEG.")
    data, fitted = await asyncio.to_thread(fit_image, image, mime, IMAGE_RULES)
    return f"data:{fitted};base64,{base64.b64encode(data).decode('ascii')}"


def _detail(data: object) -> str | None:
    """fal's reason: FastAPI's ``{"detail": [{loc, msg, type}]}`` named by field, or a string."""
    if not isinstance(data, dict):
        return None
    detail = data.get("detail")
    if isinstance(detail, str) and detail.strip():
        return clip_text(detail)
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if not isinstance(item, dict):
                continue
            loc = [str(p) for p in item.get("loc", []) if p != "body"] if isinstance(item.get("loc"), list) else []
            message = str(item.get("msg", "")).strip() or "not accepted"
            parts.append(f"{'.'.join(loc)}: {message}" if loc else message)
        if parts:
            return clip_text("; ".join(parts))
    return None


def _aspect(width: int, height: int) -> str:
    """The nearest aspect ratio fal's Wan endpoints take for a frame size."""
    ratio = width / height
    return min(_ASPECTS, key=lambda name: abs(_ASPECTS[name] - ratio))


def _family(model: str) -> str:
    """A caption label: ``fal-ai/wan-25-preview/text-to-video`` -> ``wan-25-preview (fal)``."""
    parts = model.split("/")
    core = "/".join(parts[1:-1]) if len(parts) > 2 else model
    return f"{core} (fal)"


def _netloc(url: httpx.URL) -> tuple[str, int]:
    return url.host, url.port or 443


def _checked_host(host: str) -> str:
    host = host.strip()
    try:
        parsed = httpx.URL(f"https://{host}/")
    except httpx.InvalidURL:
        parsed = None
    if not host or parsed is None or "/" in host or "@" in host or not parsed.host:
        raise ConfigurationError(
            "FAL_QUEUE_RUN_HOST must be a host name with an optional port, such as queue.fal.run "
            "(no https:// and no path; fal is always reached over https)."
        )
    return host


def _ssl_context(ca_file: str) -> ssl.SSLContext:
    """TLS verification as fal's client does it: ``SSL_CERT_FILE`` when set, else certifi."""
    try:
        return ssl.create_default_context(cafile=ca_file or certifi.where())
    except (OSError, ssl.SSLError):
        raise ConfigurationError(
            "SSL_CERT_FILE does not name a readable PEM bundle of CA certificates."
        ) from None

