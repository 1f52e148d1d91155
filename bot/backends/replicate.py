"""``ReplicateBackend``: Wan models run as Replicate official models over its HTTP API.

    POST {base}/v1/models/{owner}/{name}/predictions   {"input": {...}} -> a prediction
    GET  {base}/v1/predictions/{id}                    starting | processing | succeeded | failed | canceled
    POST {base}/v1/predictions/{id}/cancel             stops it (and its billing)
    POST {base}/v1/files                               multipart upload of a large input image
    GET  {output}                                      the finished clip, on replicate.delivery

The key travels as ``Authorization: Bearer`` to the API origin only (``ProviderClient``), never
to the delivery host. Errors come as problem+json (``{"title", "detail", "status"}``); a refused
input names the field in ``detail`` and becomes the person's message. Outputs are deleted an hour
after the prediction finishes, so the runner downloads right after the poll that sees success,
and an output already gone is a clear error rather than a silent retry.

wan-2.5 on Replicate always makes sound and takes no switch for it; ``--silent`` is honoured by
stripping the track after download (the runner does that), never by an input field the model
does not declare.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from bot.backends._client import ProviderClient, clip_text, response_json
from bot.catalog import ModelSpec, model_spec
from bot.errors import BackendError, ConfigurationError
from bot.images import ImageRules, fit_image
from bot.models import GenerationSpec, Mode, TaskState, TaskStatus

if TYPE_CHECKING:
    from bot.settings import Settings

__all__ = ["DEFAULT_I2V_MODEL", "DEFAULT_T2V_MODEL", "IMAGE_RULES", "ReplicateBackend"]

_log = logging.getLogger(__name__)

DEFAULT_T2V_MODEL = "wan-video/wan-2.5-t2v"
DEFAULT_I2V_MODEL = "wan-video/wan-2.5-i2v"

IMAGE_RULES = ImageRules(min_side=360, max_side=2000, max_bytes=10 * 1024 * 1024)
"""What wan-2.5-i2v takes as a first frame: sides of 360–2000 px, at most 10 MB, JPEG/PNG/WebP."""

INLINE_IMAGE_MAX_BYTES = 1_000_000
"""Images up to this size go inline as a data: URI; larger ones through the Files API."""

_STATUSES: dict[str, TaskStatus] = {
    "starting": TaskStatus.QUEUED,
    "processing": TaskStatus.RUNNING,
    "succeeded": TaskStatus.SUCCEEDED,
    "failed": TaskStatus.FAILED,
    "canceled": TaskStatus.FAILED,
    "aborted": TaskStatus.FAILED,
}

_MISCONFIGURED = "The bot's video service is misconfigured (Replicate refused its API token); an admin has been told."
_EXPIRED = (
    "The finished video is no longer on Replicate (it deletes outputs an hour after they are made), "
    "so it could not be downloaded. Try again."
)
_PERCENT = re.compile(r"(\d{1,3})%\|")


class ReplicateBackend:
    """A ``Backend`` for Replicate's official Wan models.

    ``models`` maps each mode to its table entry (``bot.catalog``); the provider's model id is
    the entry's name. The retry and timeout knobs are ``ProviderClient``'s; ``transport`` swaps
    the network layer (tests, a proxy).
    """

    def __init__(
        self,
        api_token: str,
        *,
        base_url: str = "https://api.replicate.com",
        t2v_model: str = DEFAULT_T2V_MODEL,
        i2v_model: str = DEFAULT_I2V_MODEL,
        name: str = "replicate",
        label: str | None = None,
        max_concurrency: int = 4,
        inline_image_max_bytes: int = INLINE_IMAGE_MAX_BYTES,
        timeout_s: float = 30.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 20.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not api_token:
            raise ConfigurationError(
                "VIDEOBOT_BACKEND=replicate needs REPLICATE_API_TOKEN (from https://replicate.com/account/api-tokens)."
            )
        self.name = name
        self.models: Mapping[Mode, ModelSpec] = {
            Mode.TEXT_TO_VIDEO: _spec_for(t2v_model, Mode.TEXT_TO_VIDEO),
            Mode.IMAGE_TO_VIDEO: _spec_for(i2v_model, Mode.IMAGE_TO_VIDEO),
        }
        self.label = label or f"{t2v_model.rsplit('/', 1)[-1].removesuffix('-t2v')} on Replicate"
        self.max_concurrency = max_concurrency
        self.max_segment_s = max(spec.max_segment_s for spec in self.models.values())
        self.inline_image_max_bytes = inline_image_max_bytes
        base = base_url.rstrip("/")
        self._client = ProviderClient(
            base.removesuffix("/v1"),
            auth_headers={"Authorization": f"Bearer {api_token}"},
            secret=api_token,
            refusal=self._refusal,
            max_concurrency=max_concurrency,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            transport=transport,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        name: str = "replicate",
        t2v_model: str | None = None,
        i2v_model: str | None = None,
        max_concurrency: int | None = None,
    ) -> ReplicateBackend:
        """The backend ``REPLICATE_API_TOKEN`` and ``REPLICATE_BASE_URL`` describe."""
        return cls(
            settings.replicate_api_token,
            base_url=settings.replicate_base_url,
            t2v_model=t2v_model or DEFAULT_T2V_MODEL,
            i2v_model=i2v_model or DEFAULT_I2V_MODEL,
            name=name,
            max_concurrency=max_concurrency or 4,
        )

    def __repr__(self) -> str:
        models = [spec.name for spec in self.models.values()]
        return f"ReplicateBackend(name={self.name!r}, models={models!r}, base_url={self._client.public_base!r})"

    async def submit(self, spec: GenerationSpec) -> str:
        """Create a prediction and return its id.

        Text-to-video sends ``prompt``, ``size`` (``"1280*720"``), ``duration`` and ``seed`` (and
        ``negative_prompt`` when set); image-to-video sends ``image``, ``resolution`` (the tier:
        the clip keeps the image's shape) instead of ``size``. Only inputs the model declares
        are sent: no fps (it makes 24) and no sound switch (it always makes sound).

        A create that timed out may still have reached Replicate; retrying it can, rarely,
        start (and bill) a second prediction. Replicate offers no idempotency key for creates.
        """
        mode = spec.mode
        model = spec.model or self.models[mode].name
        inputs: dict[str, Any] = {"prompt": spec.prompt}
        if spec.image is not None:
            inputs["image"] = await self._image_input(spec.image, spec.image_mime)
            inputs["resolution"] = spec.tier
        else:
            inputs["size"] = f"{spec.width}*{spec.height}"
        inputs["duration"] = spec.duration_s
        inputs["seed"] = spec.seed
        if spec.negative_prompt:
            inputs["negative_prompt"] = spec.negative_prompt
        owner, _, name = model.partition("/")
        url = self._client.url(f"v1/models/{quote(owner, safe='')}/{quote(name, safe='')}/predictions")
        data = await self._client.send_json("POST", url, json={"input": inputs})
        prediction_id = data.get("id")
        if not isinstance(prediction_id, str) or not prediction_id:
            raise BackendError("Replicate accepted the request but sent no prediction id.")
        _log.debug("created prediction %s on %s (status %s)", prediction_id, model, data.get("status"))
        return prediction_id

    async def poll(self, task_id: str) -> TaskState:
        """Report a prediction's state; progress is read from the model's log (``45%|``).

        ``canceled`` and ``aborted`` end the task like ``failed``. A status word we do not know
        is an error, so a changed API fails loudly instead of leaving jobs waiting.
        """
        data = await self._client.send_json("GET", self._prediction_url(task_id))
        raw_status = str(data.get("status", "")).strip().lower()
        status = _STATUSES.get(raw_status)
        if status is None:
            raise BackendError(
                f"Replicate reported a prediction status we do not understand: {clip_text(raw_status) or '(none)'}."
            )
        if status is TaskStatus.FAILED:
            if raw_status == "failed":
                reason = _error_text(data.get("error")) or "the prediction failed"
            else:
                reason = f"the prediction was {raw_status} at Replicate"
            return TaskState(status, _log_progress(data.get("logs")), error=self._client.scrub(reason))
        if status is not TaskStatus.SUCCEEDED:
            return TaskState(status, _log_progress(data.get("logs")))
        output = data.get("output")
        if isinstance(output, list):
            output = next((item for item in output if isinstance(item, str) and item), None)
        if not isinstance(output, str) or not output:
            if data.get("data_removed"):
                raise BackendError(_EXPIRED)
            raise BackendError("Replicate finished the prediction but sent no video URL.")
        return TaskState(status, 1.0, video_url=str(self._client.url(output)))

    async def fetch(self, state: TaskState, dest: Path, max_bytes: int) -> Path:
        """Download the output at once (it is deleted after an hour); the key is not sent there."""
        if not state.video_url:
            raise BackendError("Replicate gave no video to download.")
        return await self._client.download(httpx.URL(state.video_url), dest, max_bytes)

    async def cancel(self, task_id: str) -> None:
        """Ask Replicate to stop the prediction, once and without retries; never raises."""
        url = self._prediction_url(task_id, "/cancel")
        try:
            response = await self._client.send("POST", url, retry=False)
        except BackendError as error:
            outcome = f"HTTP {error.status_code}" if error.status_code else "no answer"
        else:
            outcome = f"HTTP {response.status_code}"
        _log.info("cancel of prediction %s -> %s", task_id, outcome)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _image_input(self, image: bytes, mime: str | None) -> str:
        """The first frame as the model takes it: fitted to ``IMAGE_RULES``, then inline as a
        data: URI when small, else uploaded through the Files API and referred to by its URL."""
        if not mime:
            raise BackendError("The image has no known type; attach a PNG or JPEG.")
        data, mime = await asyncio.to_thread(fit_image, image, mime, IMAGE_RULES)
        if len(data) <= self.inline_image_max_bytes:
            return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        filename = "frame." + mime.split("/", 1)[1].replace("jpeg", "jpg")
        uploaded = await self._client.send_json(
            "POST", self._client.url("v1/files"), files={"content": (filename, data, mime)}
        )
        urls = uploaded.get("urls")
        url = urls.get("get") if isinstance(urls, dict) else None
        if not isinstance(url, str) or not url:
            raise BackendError("Replicate stored the image but sent no URL for it.")
        _log.debug("uploaded the %d-byte first frame as file %s", len(data), uploaded.get("id"))
        return url

    def _prediction_url(self, task_id: str, suffix: str = "") -> httpx.URL:
        # Prediction ids come from Replicate; quoting keeps a strange one from changing the path.
        return self._client.url(f"v1/predictions/{quote(task_id, safe='')}{suffix}")

    def _refusal(self, response: httpx.Response) -> BackendError:
        """The non-retryable error for a 4xx (other than 429), in words for the person."""
        status = response.status_code
        on_api = bool(self._client.auth_for(response.request.url))
        if not on_api and status in (403, 404, 410):
            return BackendError(_EXPIRED, status_code=status)
        if on_api and status in (401, 403):
            _log.error(
                "Replicate refused REPLICATE_API_TOKEN (HTTP %s); set a valid token from "
                "https://replicate.com/account/api-tokens and restart.",
                status,
            )
            return BackendError(_MISCONFIGURED, status_code=status)
        reason = _problem_text(response_json(response))
        if reason:
            return BackendError(f"Replicate refused the request: {self._client.scrub(reason)}", status_code=status)
        return BackendError(f"Replicate refused the request (HTTP {status}).", status_code=status)


def _spec_for(model: str, mode: Mode) -> ModelSpec:
    spec = model_spec(model)
    if mode not in spec.modes:
        variable = "VIDEOBOT_T2V_MODEL" if mode is Mode.TEXT_TO_VIDEO else "VIDEOBOT_I2V_MODEL"
        words = "text-to-video" if mode is Mode.TEXT_TO_VIDEO else "image-to-video"
        raise ConfigurationError(f"{variable}: {model} does not make {words} videos.")
    return spec


def _problem_text(data: object) -> str | None:
    """The reason from a problem+json body: ``detail`` (which names a refused input field),
    else ``title``; Replicate's older ``{"detail"}`` bodies read the same way."""
    if not isinstance(data, dict):
        return None
    for key in ("detail", "title", "error"):
        text = _error_text(data.get(key))
        if text:
            return text
    return None


def _error_text(value: object) -> str | None:
    """A prediction's ``error`` (a string, or an object with ``message``/``detail``), tidied for chat."""
    if isinstance(value, dict):
        value = value.get("message") or value.get("detail")
    if not isinstance(value, str):
        return None
    lines = [line.strip().removeprefix("- ").strip() for line in value.splitlines()]
    text = "; ".join(line for line in lines if line)
    return clip_text(text) if text else None


def _log_progress(logs: object) -> float:
    """The last percentage a progress bar printed to the prediction's log, as a fraction."""
    if not isinstance(logs, str):
        return 0.0
    found = _PERCENT.findall(logs[-4000:])
    return min(1.0, int(found[-1]) / 100) if found else 0.0
