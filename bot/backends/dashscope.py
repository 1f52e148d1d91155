"""``DashScopeBackend``: Wan's own API on Alibaba Cloud Model Studio (DashScope).

    POST {base}/services/aigc/video-generation/video-synthesis   t2v and i2v (X-DashScope-Async: enable)
    POST {base}/services/aigc/image2video/video-synthesis        first/last-frame models (``*kf2v*``):
         input.first_frame_url, input.last_frame_url (URLs or data URIs)
         -> {"output": {"task_id", "task_status": "PENDING"}, "request_id"}
    GET  {base}/tasks/{task_id}
         -> {"output": {"task_id", "task_status", "video_url" | "code", "message"}, "usage", "request_id"}
    POST {base}/tasks/{task_id}/cancel                            only while the task is PENDING
    GET  {video_url}                                              a signed OSS link, valid 24 hours

Errors come as ``{"code", "message", "request_id"}``. ``{base}`` is the region's
``https://dashscope-intl.aliyuncs.com/api/v1`` (Singapore, the default),
``https://dashscope-us.aliyuncs.com/api/v1`` (US, Virginia) or
``https://dashscope.aliyuncs.com/api/v1`` (China, Beijing); key, model and host must all belong to
one region. Retries, ``Retry-After``, key hygiene and bounded downloads are ``ProviderClient``'s;
this module holds DashScope's paths, bodies and words.

End frames go to the first-and-last-frame models, ``wan2.2-kf2v-flash`` (480P/720P/1080P) and
``wanx2.1-kf2v-plus`` (720P), each image a data URI fitted to ``IMAGE_RULES`` (Model Studio's
"first-and-last-frame to video" API reference: ``input.first_frame_url``, ``input.last_frame_url``;
the clip takes the first frame's shape, the last frame is cropped to it). Multi-shot is Wan 2.6's
``parameters.shot_type: "multi"``, which DashScope honours only with ``prompt_extend: true`` (the
rewrite is what splits the prompt into shots), so ``--shots multi`` sends both.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from bot.backends._client import ProviderClient, clip_text, response_json
from bot.catalog import ModelSpec, model_spec
from bot.errors import BackendError, ConfigurationError, InvalidRequest
from bot.images import ImageRules, fit_image
from bot.models import GenerationSpec, Mode, TaskState, TaskStatus

if TYPE_CHECKING:
    from bot.settings import Settings

__all__ = ["DEFAULT_BASE_URL", "IMAGE_RULES", "DashScopeBackend"]

_log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://dashscope-intl.aliyuncs.com/api/v1"
DEFAULT_T2V_MODEL = "wan2.6-t2v"
DEFAULT_I2V_MODEL = "wan2.6-i2v"
DEFAULT_END_FRAME_MODEL = "wan2.2-kf2v-flash"
"""Where an end frame goes when the image-to-video model takes none: the cheapest kf2v model."""
DEFAULT_CONCURRENCY = 2
"""DashScope runs two tasks at once per model and account by default; more stay PENDING."""

IMAGE_RULES = ImageRules(
    min_side=360,
    max_side=2000,
    max_bytes=10 * 1024 * 1024,
    mimes=("image/jpeg", "image/png", "image/webp", "image/bmp"),
)
"""What the image-to-video models take as ``img_url``: 360–2000 px a side, 10 MB, these formats."""

_SYNTHESIS = "services/aigc/video-generation/video-synthesis"
_KEYFRAME_SYNTHESIS = "services/aigc/image2video/video-synthesis"

_STATUSES: dict[str, TaskStatus] = {
    "PENDING": TaskStatus.QUEUED,
    "RUNNING": TaskStatus.RUNNING,
    "SUCCEEDED": TaskStatus.SUCCEEDED,
    "FAILED": TaskStatus.FAILED,
    "CANCELED": TaskStatus.FAILED,
    "UNKNOWN": TaskStatus.FAILED,
}

_CONTENT_CODES = ("DataInspection", "IPInfringement", "data_inspection")
"""Prefixes of DashScope's content-check codes (``DataInspectionFailed``, ``IPInfringementSuspect``)."""
_CONTENT_REFUSED = "the provider's content check refused this prompt (or its image); try other words"
_MISCONFIGURED = "The bot is misconfigured: the video service did not accept its key. An admin has been told."
_ACCOUNT = "The bot's video service account needs attention (billing or access). An admin has been told."
_REGIONS = (
    "key, model and host must share a region: Singapore https://dashscope-intl.aliyuncs.com/api/v1, "
    "US (Virginia) https://dashscope-us.aliyuncs.com/api/v1, "
    "China (Beijing) https://dashscope.aliyuncs.com/api/v1"
)


class DashScopeBackend:
    """A ``Backend`` for Alibaba Model Studio's Wan models.

    ``prompt_extend`` lets DashScope rewrite short prompts (its own default is on); ``transport``
    swaps the network layer (tests, a proxy); the retry knobs are ``ProviderClient``'s.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str = "",
        *,
        t2v_model: str = DEFAULT_T2V_MODEL,
        i2v_model: str = DEFAULT_I2V_MODEL,
        end_frame_model: str = DEFAULT_END_FRAME_MODEL,
        name: str = "dashscope",
        label: str | None = None,
        max_concurrency: int = DEFAULT_CONCURRENCY,
        prompt_extend: bool = True,
        timeout_s: float = 30.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 20.0,
        verify: bool | str = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        t2v, i2v = _model_for(t2v_model, Mode.TEXT_TO_VIDEO), _model_for(i2v_model, Mode.IMAGE_TO_VIDEO)
        self.name = name
        self.label = label or f"{t2v.name.split('-')[0]} (DashScope)"
        self.max_concurrency = max_concurrency
        self.max_segment_s = t2v.max_segment_s
        self.models: dict[Mode, ModelSpec] = {Mode.TEXT_TO_VIDEO: t2v, Mode.IMAGE_TO_VIDEO: i2v}
        self.end_frame_model: ModelSpec = i2v if i2v.end_frame else _model_for(end_frame_model, Mode.IMAGE_TO_VIDEO)
        """The model a request with an end frame is made on: the image-to-video model when it
        takes one, else ``end_frame_model`` (a ``kf2v`` model)."""
        if not self.end_frame_model.end_frame:
            raise ConfigurationError(f"{end_frame_model!r} takes no end frame; use wan2.2-kf2v-flash or wanx2.1-kf2v-plus.")
        self.prompt_extend = prompt_extend
        self._client = ProviderClient(
            base_url,
            auth_headers={"Authorization": f"Bearer {api_key}"},
            secret=api_key,
            refusal=self._refusal,
            max_concurrency=max_concurrency,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            transport=transport,
            verify=verify,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        name: str = "dashscope",
        t2v_model: str | None = None,
        i2v_model: str | None = None,
        max_concurrency: int | None = None,
    ) -> DashScopeBackend:
        """The backend ``VIDEOBOT_BACKEND=dashscope`` (or a ``[backends.NAME]`` table) asks for."""
        if not settings.dashscope_api_key:
            raise ConfigurationError(
                "VIDEOBOT_BACKEND=dashscope needs DASHSCOPE_API_KEY (an Alibaba Model Studio key of the "
                "region DASHSCOPE_HTTP_BASE_URL points at)."
            )
        return cls(
            settings.dashscope_base_url or DEFAULT_BASE_URL,
            settings.dashscope_api_key,
            t2v_model=t2v_model or DEFAULT_T2V_MODEL,
            i2v_model=i2v_model or DEFAULT_I2V_MODEL,
            name=name,
            max_concurrency=max_concurrency or DEFAULT_CONCURRENCY,
            verify=settings.ssl_cert_file or True,
        )

    def __repr__(self) -> str:
        models = ", ".join(spec.name for spec in self.models.values())
        return f"DashScopeBackend(name={self.name!r}, models=[{models}], base_url={self._client.public_base!r})"

    async def submit(self, spec: GenerationSpec) -> str:
        """Start a task and return DashScope's task id.

        Text-to-video sends ``parameters.size`` as ``"1280*720"``; image-to-video sends
        ``parameters.resolution`` (``"720P"``) and the image as an ``img_url`` data URI (the clip
        keeps the image's shape), after fitting it to ``IMAGE_RULES``. ``duration``, ``seed``,
        ``prompt_extend`` and ``watermark: false`` always go; ``audio`` only to models that make
        sound (``False`` for ``--silent``). An end frame makes it a ``kf2v`` call: the images go
        as ``first_frame_url`` then ``last_frame_url``. ``shots="multi"`` adds ``shot_type`` and
        forces ``prompt_extend`` on (Wan 2.6 only; elsewhere refused before anything is sent).

        A submit that timed out may still have started a task; the retry can, rarely, start
        (and bill) a second one, since DashScope offers no idempotency key.
        """
        model = self._model(spec)
        keyframes = "kf2v" in model.name
        multi_shot = spec.shots == "multi"
        if multi_shot and not model.multi_shot:
            raise BackendError(f"{model.name} makes one shot per clip; --shots multi needs Wan 2.6.", retryable=False)
        body_input: dict[str, Any] = {"prompt": spec.prompt}
        if spec.negative_prompt:
            body_input["negative_prompt"] = spec.negative_prompt
        parameters: dict[str, Any] = {"duration": spec.duration_s}
        if spec.image is not None:
            first = await _data_uri(spec.image, spec.image_mime)
            body_input["first_frame_url" if keyframes else "img_url"] = first
            if spec.end_image is not None:
                body_input["last_frame_url"] = await _data_uri(spec.end_image, spec.end_image_mime)
            parameters["resolution"] = spec.tier.upper()
        else:
            parameters["size"] = f"{spec.width}*{spec.height}"
        parameters["prompt_extend"] = self.prompt_extend or multi_shot
        if multi_shot:
            parameters["shot_type"] = "multi"
        parameters["watermark"] = False
        parameters["seed"] = spec.seed % 2**31
        if model.audio:
            parameters["audio"] = spec.audio
        body = {"model": model.name, "input": body_input, "parameters": parameters}

        path = _KEYFRAME_SYNTHESIS if keyframes else _SYNTHESIS
        data = await self._client.send_json(
            "POST", self._client.url(path), json=body, headers={"X-DashScope-Async": "enable"}
        )
        output = data.get("output")
        task_id = output.get("task_id") if isinstance(output, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise BackendError("The video service accepted the request but sent no task id.")
        return task_id

    async def poll(self, task_id: str) -> TaskState:
        """Report a task's state from ``output.task_status``.

        DashScope reports no progress, so a task shows 0 until it finishes. FAILED carries the
        provider's ``code`` and ``message``; CANCELED and UNKNOWN (an id DashScope no longer
        knows: tasks are kept 24 hours) end the job too. A status word we do not know is an
        error rather than "still running", so a changed API fails loudly.
        """
        data = await self._client.send_json("GET", self._task_url(task_id))
        output = data.get("output")
        if not isinstance(output, dict):
            raise BackendError("The video service answered a status check without a task.")
        raw = str(output.get("task_status", "")).strip().upper()
        status = _STATUSES.get(raw)
        if status is None:
            raise BackendError(
                f"The video service reported a task status we do not understand: {clip_text(raw) or '(none)'}."
            )
        if status is TaskStatus.FAILED:
            return TaskState(status, error=self._client.scrub(_task_failure(raw, output)))
        if status is not TaskStatus.SUCCEEDED:
            return TaskState(status)
        video_url = output.get("video_url")
        if not isinstance(video_url, str) or not video_url:
            raise BackendError("The video service finished the task but sent no video URL.")
        return TaskState(status, 1.0, video_url=video_url)

    async def fetch(self, state: TaskState, dest: Path, max_bytes: int) -> Path:
        """Download the finished video (a signed OSS link; our key never goes there)."""
        if not state.video_url:
            raise BackendError("The video service gave no video to download.")
        return await self._client.download(httpx.URL(state.video_url), dest, max_bytes)

    async def cancel(self, task_id: str) -> None:
        """Ask DashScope to cancel a task, once and without retries.

        DashScope cancels only PENDING tasks; a running one finishes (and is billed). Failures
        are logged at debug and swallowed: the job is already canceled on our side.
        """
        url = self._task_url(task_id, "/cancel")
        try:
            response = await self._client.send("POST", url, retry=False)
        except BackendError as error:
            outcome = f"HTTP {error.status_code}" if error.status_code else "no answer"
        else:
            outcome = f"HTTP {response.status_code}"
        _log.info("cancel POST %s -> %s", url.path, outcome)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _model(self, spec: GenerationSpec) -> ModelSpec:
        """The model named by the spec, else the mode's; an end frame needs a ``kf2v`` model."""
        model = self.models[spec.mode]
        if spec.model and spec.model != model.name:
            model = _model_for(spec.model, spec.mode)
        if spec.end_image is not None and not model.end_frame:
            if spec.model and spec.model != self.models[spec.mode].name:
                raise BackendError(f"{model.name} takes no end frame.", retryable=False)
            model = self.end_frame_model
        if spec.end_image is not None and spec.image is None:
            raise BackendError("An end frame needs a start image too.", retryable=False)
        return model

    def _task_url(self, task_id: str, suffix: str = "") -> httpx.URL:
        return self._client.url(f"tasks/{quote(task_id, safe='')}{suffix}")

    def _refusal(self, response: httpx.Response) -> BackendError:
        """The person's message for a 4xx (not 429); an admin's problem is also logged for them."""
        status = response.status_code
        url, base = response.request.url, self._client.base
        if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
            if status == 403:
                return BackendError(
                    "The finished video's download link had expired (DashScope keeps videos for 24 hours).",
                    status_code=status,
                )
            return BackendError(f"The finished video could not be downloaded (HTTP {status}).", status_code=status)
        data = response_json(response)
        code = str(data.get("code") or "") if isinstance(data, dict) else ""
        message = self._client.scrub(str(data.get("message") or "")) if isinstance(data, dict) else ""
        request_id = str(data.get("request_id") or "") if isinstance(data, dict) else ""
        if status == 401 or code in ("InvalidApiKey", "InvalidApiKey.Missing"):
            _log.error(
                "DashScope refused DASHSCOPE_API_KEY (HTTP %s, %s) at %s: check the key; %s. request_id=%s",
                status, code or "no code", self._client.public_base, _REGIONS, request_id or "-",
            )
            return BackendError(_MISCONFIGURED, status_code=status)
        if code == "Arrearage" or (status == 403 and code in ("AccessDenied", "Model.AccessDenied", "AccessDenied.Unpurchased")):
            _log.error(
                "DashScope refused the request for the account (HTTP %s, %s: %s) at %s; check billing, the "
                "model's activation and that %s. request_id=%s",
                status, code, clip_text(message), self._client.public_base, _REGIONS, request_id or "-",
            )
            return BackendError(_ACCOUNT, status_code=status)
        if any(code.startswith(c) for c in _CONTENT_CODES):
            return BackendError(f"The video was not made: {_CONTENT_REFUSED}.", status_code=status)
        if message:
            return BackendError(f"The video service refused the request: {clip_text(message)}", status_code=status)
        return BackendError(
            f"The video service refused the request ({code or f'HTTP {status}'}).", status_code=status
        )


def _model_for(name: str, mode: Mode) -> ModelSpec:
    spec = model_spec(name)
    if mode not in spec.modes:
        setting = "VIDEOBOT_T2V_MODEL" if mode is Mode.TEXT_TO_VIDEO else "VIDEOBOT_I2V_MODEL"
        raise ConfigurationError(f"{setting}={name!r} cannot make {'text' if mode is Mode.TEXT_TO_VIDEO else 'image'}-to-video.")
    return spec


async def _data_uri(image: bytes, mime: str | None) -> str:
    """``image`` fitted to ``IMAGE_RULES`` (off the event loop) as a base64 data URI."""
    if not mime:
        raise BackendError("The image has no known type; attach a PNG or JPEG.")
    try:
        data, fitted = await asyncio.to_thread(fit_image, image, mime, IMAGE_RULES)
    except InvalidRequest as refused:  # a banner-shaped image cannot meet 360–2000 px a side
        raise BackendError(str(refused)) from refused
    return f"data:{fitted};base64,{base64.b64encode(data).decode('ascii')}"


def _task_failure(status: str, output: dict[str, Any]) -> str:
    """Why a task ended without a video, in words for the person."""
    code = str(output.get("code") or "")
    message = str(output.get("message") or "").strip()
    if any(code.startswith(c) for c in _CONTENT_CODES):
        return _CONTENT_REFUSED
    if status == "CANCELED":
        return "the task was canceled"
    if status == "UNKNOWN":
        return "the provider no longer knows this task (DashScope keeps tasks for 24 hours)"
    if message:
        return clip_text(f"{message} ({code})" if code else message)
    return f"the task failed ({code})" if code else "the task failed with no reason given"
