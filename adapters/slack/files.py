"""Fetching the images people share in Slack, for image-to-video.

Slack's file URLs (``url_private``) need the bot token as a bearer header. That token must go
to Slack's own file hosts and nowhere else, so the host is checked before anything is sent:
``*.slack.com`` / ``*.slack-gov.com``, or the host of the configured Web API (a GovSlack or
test endpoint). A file is refused by what Slack says of it (its mimetype and size) before it is
downloaded, the download stops at the size limit, and ``bot.images.load_image`` then checks the
bytes themselves, because a file's declared type is only what the uploader's client guessed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.errors import InvalidRequest
from bot.images import load_image
from bot.models import ImageInput

_SLACK_FILE_DOMAINS = ("slack.com", "slack-gov.com")
_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)


def _megabytes(n_bytes: int) -> str:
    return f"{n_bytes / (1024 * 1024):.1f}".removesuffix(".0") + " MB"


class SlackFiles:
    """Reads shared files with the bot token, and only from Slack's hosts."""

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client
        self._api_host = urlsplit(client.base_url).hostname or ""

    def first_file(self, files: list[Mapping[str, Any]] | None) -> Mapping[str, Any] | None:
        """The file to animate when a message carries several: the first image, else the first file
        (so a lone PDF is refused by name rather than ignored)."""
        if not files:
            return None
        return next((f for f in files if str(f.get("mimetype", "")).startswith("image/")), files[0])

    def keyframe_files(
        self, files: list[Mapping[str, Any]] | None
    ) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
        """The file to start from and, when the message carries a second image, the one to end on
        (the first two images in the order they were shared)."""
        first = self.first_file(files)
        if first is None or not files:
            return first, None
        rest = [f for f in files if f is not first and str(f.get("mimetype", "")).startswith("image/")]
        return first, (rest[0] if rest else None)

    async def file_info(self, file_id: str) -> Mapping[str, Any]:
        """The full file object; payloads sometimes carry only the id (``file_access: check_file_info``)."""
        try:
            response = await self._client.files_info(file=file_id)
        except SlackApiError as error:
            raise InvalidRequest("videobot can't open that file; it may have been deleted or be private.") from error
        file: Mapping[str, Any] = response["file"]
        return file

    async def thread_parent_files(self, channel: str, thread_ts: str) -> list[Mapping[str, Any]]:
        """The files of a thread's first message, for a mention made inside that thread."""
        try:
            response = await self._client.conversations_replies(channel=channel, ts=thread_ts, limit=1)
        except SlackApiError:
            return []
        messages = response.get("messages") or []
        return list(messages[0].get("files") or []) if messages else []

    def check_declared(self, file: Mapping[str, Any], *, max_bytes: int) -> None:
        """Refuse by what Slack says of the file, before a byte of it is fetched."""
        name = str(file.get("name") or "That file")
        mimetype = str(file.get("mimetype") or "")
        if mimetype and not mimetype.startswith("image/"):
            raise InvalidRequest(f"{name} is not an image ({mimetype}). Attach a PNG, JPEG, WebP, GIF or BMP.")
        size = int(file.get("size") or 0)
        if size > max_bytes:
            raise InvalidRequest(f"{name} is {_megabytes(size)}; the limit is {_megabytes(max_bytes)}.")

    async def load(self, file: Mapping[str, Any], *, max_bytes: int, max_pixels: int) -> ImageInput:
        """Download ``file`` and return it checked as an image. Raises ``InvalidRequest``."""
        if "url_private" not in file and file.get("id"):
            file = await self.file_info(str(file["id"]))
        self.check_declared(file, max_bytes=max_bytes)
        name = str(file.get("name") or "That file")
        url = str(file.get("url_private_download") or file.get("url_private") or "")
        if not self._is_slack_host(url):
            raise InvalidRequest(f"{name} isn't stored in Slack, so videobot can't read it.")
        data = await self._download(url, max_bytes)
        return await asyncio.to_thread(load_image, data, max_bytes=max_bytes, max_pixels=max_pixels)

    def _is_slack_host(self, url: str) -> bool:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host and host == self._api_host:
            return True
        return parts.scheme == "https" and any(host == d or host.endswith("." + d) for d in _SLACK_FILE_DOMAINS)

    async def _download(self, url: str, max_bytes: int) -> bytes:
        headers = {"Authorization": f"Bearer {self._client.token}"}
        try:
            async with (
                aiohttp.ClientSession(timeout=_TIMEOUT) as session,
                session.get(url, headers=headers) as response,
            ):
                if response.status != 200:
                    raise InvalidRequest("videobot couldn't download that file from Slack. Try again.")
                data = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    data += chunk
                    if len(data) > max_bytes:
                        raise InvalidRequest(f"That file is over the {_megabytes(max_bytes)} limit.")
        except aiohttp.ClientError as error:
            raise InvalidRequest("videobot couldn't download that file from Slack. Try again.") from error
        return bytes(data)
