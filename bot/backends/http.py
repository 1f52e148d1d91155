"""``HttpBackend``: a generator reached over the provider REST contract (``wan26-api-guide.txt``).

Third-party WAN providers, our own GPU worker and the built-in simulator all serve the same
contract, so this one module talks to all three:

    POST {base}/video/generations                 text-to-video  -> {"task_id": ...}
    POST {base}/video/image-to-video              image-to-video -> {"task_id": ...}
    GET  {base}/video/generations/{id}            -> {"status", "progress", "output": {"video_url"}, "error"}
    POST {base}/video/generations/{id}/cancel     best effort; many providers lack it
    GET  {video_url}                              the finished clip, often on a CDN

Retries, ``Retry-After``, key hygiene and bounded downloads come from the shared
``ProviderClient`` (``_client.py``); this module holds the contract's paths, bodies and words.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from bot.backends._client import (
    ProviderClient,
    clip_text,
    progress_fraction,
    response_json,
)
from bot.catalog import own_generator
from bot.errors import BackendError
from bot.models import GenerationSpec, Mode, Quality, TaskState, TaskStatus

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

_BAD_KEY = "The video service rejected our API key (check WAN_API_KEY)."


class HttpBackend:
    """A ``Backend`` for any server speaking the provider REST contract.

    The retry and timeout knobs are ``ProviderClient``'s; ``transport`` swaps the network layer
    (tests, a proxy); leave it ``None`` in production. ``audio`` says the server's clips come
    with sound (``videobot simulator --audio``), so jobs keep it unless ``--silent``.
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
        audio: bool = False,
        timeout_s: float = 30.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 20.0,
        download_stall_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.label = label or model
        self.model = model
        self.max_concurrency = max_concurrency
        self.max_segment_s = max_segment_s
        own = own_generator(model, max_segment_s, audio=audio)
        self.models = {Mode.TEXT_TO_VIDEO: own, Mode.IMAGE_TO_VIDEO: own}
        self._client = ProviderClient(
            base_url,
            auth_headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
            secret=api_key,
            refusal=self._refusal,
            max_concurrency=max_concurrency,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            stall_s=download_stall_s,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"HttpBackend(name={self.name!r}, model={self.model!r}, base_url={self._client.public_base!r})"

    async def submit(self, spec: GenerationSpec) -> str:
        """Start a generation and return the provider's task id.

        The body follows the guide: ``model``, ``prompt``, optional ``negative_prompt``, for
        image-to-video an ``image`` data URI (and, for a clip that must end on a frame, an
        ``end_image`` data URI: the contract's keyframe field), and ``parameters`` with ``duration``,
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
            if spec.end_image is not None:
                if not spec.end_image_mime:
                    raise BackendError("The end image has no known type; attach a PNG or JPEG.")
                encoded = base64.b64encode(spec.end_image).decode("ascii")
                body["end_image"] = f"data:{spec.end_image_mime};base64,{encoded}"
        body["parameters"] = {k: v for k, v in parameters.items() if v is not None}

        data = await self._client.send_json("POST", self._client.url(path), json=body)
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
        data = await self._client.send_json("GET", self._task_url(task_id))
        raw_status = str(data.get("status", "")).strip().lower()
        status = _STATUSES.get(raw_status)
        if status is None:
            raise BackendError(
                f"The video service reported a task status we do not understand: "
                f"{clip_text(raw_status) or '(none)'}."
            )
        if status is TaskStatus.FAILED:
            reason = _provider_message(data) or f"the task ended as {raw_status}"
            return TaskState(status, progress_fraction(data.get("progress")), error=self._client.scrub(reason))
        if status is TaskStatus.QUEUED or status is TaskStatus.RUNNING:
            return TaskState(status, progress_fraction(data.get("progress")))
        output = data.get("output")
        video_url = output.get("video_url") if isinstance(output, dict) else None
        if not isinstance(video_url, str) or not video_url:
            raise BackendError("The video service finished the task but sent no video URL.")
        try:
            resolved = self._client.url(video_url)
        except httpx.InvalidURL:
            raise BackendError("The video service sent a video link we cannot follow.") from None
        return TaskState(status, 1.0, video_url=str(resolved))

    async def fetch(self, state: TaskState, dest: Path, max_bytes: int) -> Path:
        """Download the finished video to ``dest`` (whole or not at all) and return it.

        A declared ``Content-Length`` over ``max_bytes`` is refused before any body is read, and
        the stream is cut as soon as more than ``max_bytes`` arrive, since servers may omit or
        misstate the length. Our key goes only to our provider's origin, and on redirects httpx
        drops it once the chain leaves that origin (presigned URLs must not see it).
        """
        if not state.video_url:
            raise BackendError("The video service gave no video to download.")
        try:
            url = httpx.URL(state.video_url)
        except httpx.InvalidURL:
            raise BackendError("The video service sent a video link we cannot follow.") from None
        return await self._client.download(url, dest, max_bytes)

    async def cancel(self, task_id: str) -> None:
        """Ask the provider to stop a task, once and without retries.

        Cancelling is advisory: many providers have no cancel endpoint (404/405) and the job is
        already marked canceled on our side, so failures are logged at debug and swallowed
        rather than holding up the person who pressed "cancel".
        """
        url = self._task_url(task_id, "/cancel")
        try:
            response = await self._client.send("POST", url, retry=False)
        except BackendError as error:
            outcome = f"HTTP {error.status_code}" if error.status_code else "no answer"
        else:
            outcome = f"HTTP {response.status_code}"
        _log.debug("cancel POST %s -> %s", url.path, outcome)

    async def health(self) -> dict[str, Any]:
        """What the server reports about itself at ``/v1/health`` (our GPU worker: its model and
        memory; the simulator: its queue), for the admin page. Asked once, without retries."""
        return await asyncio.wait_for(self._client.send_json("GET", self._client.url("health"), retry=False), 2.0)

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()

    def _task_url(self, task_id: str, suffix: str = "") -> httpx.URL:
        # Task ids come from the provider; quoting keeps a strange one from changing the path.
        return self._client.url(f"video/generations/{quote(task_id, safe='')}{suffix}")

    def _refusal(self, response: httpx.Response) -> BackendError:
        """The non-retryable error for a 4xx (other than 429), naming the provider's reason."""
        status = response.status_code
        if status in (401, 403):
            return BackendError(_BAD_KEY, status_code=status)
        reason = _provider_message(response_json(response))
        if reason:
            message = f"The video service refused the request: {self._client.scrub(reason)}"
        else:
            message = f"The video service refused the request (HTTP {status})."
        return BackendError(message, status_code=status)


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
            return clip_text(candidate)
    return None
