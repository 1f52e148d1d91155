"""A fake Slack: the Web API, the file upload and download hosts, ``response_url`` and the
Socket Mode websocket, all on one ephemeral loopback port.

The adapter's real ``AsyncWebClient`` talks to it through ``base_url`` (``SLACK_API_URL``), so
the tests exercise the same requests Slack would receive: parameters arrive in the query string
(``files.getUploadURLExternal``, ``files.completeUploadExternal``), as form fields or as JSON,
and the clip bytes as a raw POST to the ``upload_url`` handed out. Every call is recorded.

It also holds what a test needs to act as Slack towards the app: ``sign`` builds the headers
Slack sends in HTTP mode, and the payload builders produce the bodies of a slash command, an
``app_mention`` event callback, a block action, a message shortcut and a view submission.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from slack_sdk.signature import SignatureVerifier

BOT_TOKEN = "xoxb-test-bot-token"
APP_TOKEN = "xapp-test-app-token"
SIGNING_SECRET = "test-signing-secret"
TEAM_ID = "T0TEAM"
BOT_USER_ID = "U0BOT"
BOT_ID = "B0BOT"
_TRIGGERS = itertools.count(1)


@dataclass
class Call:
    """One request the fake received: the API method (or ``upload``/``download``/``response``),
    every parameter merged from query string, form and JSON body, and the bearer token."""

    method: str
    params: dict[str, Any]
    token: str | None
    at: float = field(default_factory=time.monotonic)


@dataclass
class StoredFile:
    id: str
    name: str
    mimetype: str
    content: bytes = b""
    title: str = ""
    uploaded: bool = False
    shares: dict[str, list[dict[str, str]]] = field(default_factory=dict)


class FakeSlack:
    """Start with ``await FakeSlack().start()``; stop with ``await fake.stop()``.

    ``bot_tokens`` are the bot tokens it accepts (``BOT_TOKEN``, unless given): tests with
    several bot processes give each its own, to tell from a call which process made it.
    """

    def __init__(self, *, bot_tokens: tuple[str, ...] = (BOT_TOKEN,)) -> None:
        self.bot_tokens = set(bot_tokens)
        self.calls: list[Call] = []
        self.stalled: list[Call] = []
        self._stalls: dict[str, int] = {}
        self._release = asyncio.Event()
        self.files: dict[str, StoredFile] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.socket_acks: list[dict[str, Any]] = []
        self._errors: dict[tuple[str, str | None], str] = {}
        self._rate_limited: dict[str, int] = {}
        self._sockets: list[web.WebSocketResponse] = []
        self._socket_connected = asyncio.Event()
        self._changed = asyncio.Event()
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ----- lifecycle --------------------------------------------------------------------

    async def start(self) -> FakeSlack:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.add_routes(
            [
                web.route("*", "/api/{method}", self._api),
                web.post("/upload/{file_id}", self._upload),
                web.get("/files-pri/{file_id}/{name}", self._download),
                web.post("/response/{hook}", self._response),
                web.get("/socket", self._socket),
                web.get("/_fake/counts", self._counts),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self._release.set()
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    # ----- what a test arranges ---------------------------------------------------------

    def fail(self, method: str, error: str, *, channel: str | None = None) -> None:
        """Answer ``method`` (for ``channel`` only, if given) with ``{"ok": false, "error": error}``."""
        self._errors[(method, channel)] = error

    def rate_limit(self, method: str, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with HTTP 429 and ``Retry-After: 0``,
        as Slack does past a method's rate limit."""
        self._rate_limited[method] = times

    def stall(self, method: str, times: int = 1) -> None:
        """Do the work of the next ``times`` calls of ``method`` (Slack has the file, say), then
        hold their answers until ``release()``: the caller may die meanwhile, not knowing.
        The held calls are in ``stalled``."""
        self._stalls[method] = times

    def release(self) -> None:
        self._release.set()

    def add_file(self, name: str, content: bytes, mimetype: str) -> dict[str, Any]:
        """Store a file someone shared and return the file object Slack would put in a payload."""
        file_id = f"F{next(self._ids):06d}"
        self.files[file_id] = StoredFile(file_id, name, mimetype, content, title=name, uploaded=True)
        return self._file_object(self.files[file_id])

    def add_message(self, channel: str, message: dict[str, Any]) -> dict[str, Any]:
        """Put a message into ``channel``'s history (a thread parent with an image, say)."""
        stored = {"type": "message", "ts": self._next_ts(), **message}
        self.messages.setdefault(channel, []).append(stored)
        return stored

    def response_url(self, name: str = "hook") -> str:
        return f"{self.base_url}/response/{name}"

    # ----- what a test inspects ---------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        return [
            m for m in self.messages.get(channel, []) if m.get("ts") == thread_ts or m.get("thread_ts") == thread_ts
        ]

    async def wait_for(self, check: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Wait until ``check()`` returns something truthy (re-checked after every call)."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting; calls so far: {[c.method for c in self.calls]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))
            except TimeoutError:
                pass

    # ----- Socket Mode ------------------------------------------------------------------

    async def wait_for_socket(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._socket_connected.wait(), timeout)

    async def push(self, envelope: dict[str, Any], *, to: int | None = None) -> None:
        """Send an envelope to every connected Socket Mode client, or only to the ``to``-th
        connection (Slack hands each envelope to one of an app's connections)."""
        for ws in self._sockets if to is None else [self._sockets[to]]:
            await ws.send_str(json.dumps(envelope))

    @property
    def sockets(self) -> int:
        """How many Socket Mode connections are open now."""
        return len(self._sockets)

    def socket_ack(self, envelope_id: str) -> dict[str, Any] | None:
        return next((a for a in self.socket_acks if a.get("envelope_id") == envelope_id), None)

    # ----- handlers ---------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                params.update(await request.json())
            else:
                params.update(await request.post())
        token = _bearer(request) or params.get("token")
        self._record(method, params, token)
        expected = {APP_TOKEN} if method == "apps.connections.open" else self.bot_tokens
        if token not in expected:
            return _slack(ok=False, error="invalid_auth")
        if self._rate_limited.get(method, 0) > 0:
            self._rate_limited[method] -= 1
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": "0"})
        error = self._errors.get((method, params.get("channel") or params.get("channel_id"))) or self._errors.get(
            (method, None)
        )
        if error:
            return _slack(ok=False, error=error)
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return _slack(ok=False, error="unknown_method")
        answer = handler(params)
        if self._stalls.get(method, 0) > 0:
            self._stalls[method] -= 1
            self.stalled.append(self.calls[-1])
            self._changed.set()
            await self._release.wait()
        return _slack(**answer)

    async def _upload(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        body = await request.read()
        self._record("upload", {"file_id": file_id, "bytes": len(body)}, _bearer(request))
        stored = self.files.get(file_id)
        if stored is None:
            return web.Response(status=404, text="no such upload")
        stored.content = body
        stored.uploaded = True
        return web.Response(text=f"OK - {len(body)}")

    async def _download(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        token = _bearer(request)
        self._record("download", {"file_id": file_id}, token)
        stored = self.files.get(file_id)
        if token not in self.bot_tokens or stored is None:
            # Slack answers an unauthenticated download with its sign-in page, not an error code.
            return web.Response(text="<html>sign in</html>", content_type="text/html")
        return web.Response(body=stored.content, content_type=stored.mimetype)

    async def _response(self, request: web.Request) -> web.Response:
        self._record("response", {"hook": request.match_info["hook"], **(await request.json())}, None)
        return web.Response(text="ok")

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_str(json.dumps({"type": "hello", "num_connections": 1}))
        self._socket_connected.set()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self.socket_acks.append(json.loads(msg.data))
                    self._changed.set()
        finally:
            self._sockets.remove(ws)
        return ws

    async def _counts(self, request: web.Request) -> web.Response:
        """How many calls each method has had, for a driver in another process (the benchmark)."""
        counts: dict[str, int] = {}
        for call in self.calls:
            counts[call.method] = counts.get(call.method, 0) + 1
        return web.json_response(counts)

    def _record(self, method: str, params: dict[str, Any], token: str | None) -> None:
        self.calls.append(Call(method, params, token))
        self._changed.set()

    # ----- Web API methods --------------------------------------------------------------

    def _m_auth_test(self, p: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://fake.slack.test/",
            "team": "Fake",
            "team_id": TEAM_ID,
            "user": "videobot",
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
        }

    def _m_apps_connections_open(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"url": f"ws://127.0.0.1:{self.port}/socket"}

    def _m_chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        message = {"user": BOT_USER_ID, "bot_id": BOT_ID, "text": p.get("text", ""), "blocks": _json(p.get("blocks"))}
        if p.get("thread_ts"):
            message["thread_ts"] = p["thread_ts"]
        stored = self.add_message(p["channel"], message)
        return {"channel": p["channel"], "ts": stored["ts"], "message": stored}

    def _m_chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
        for message in self.messages.get(p["channel"], []):
            if message["ts"] == p["ts"]:
                message.update(text=p.get("text", ""), blocks=_json(p.get("blocks")))
                return {"channel": p["channel"], "ts": p["ts"]}
        return {"ok": False, "error": "message_not_found"}

    def _m_chat_postEphemeral(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"message_ts": self._next_ts()}

    def _m_conversations_replies(self, p: dict[str, Any]) -> dict[str, Any]:
        thread = self.thread(p["channel"], p["ts"])
        if not thread:
            return {"ok": False, "error": "thread_not_found"}
        return {"messages": thread[: int(p.get("limit") or 1000)], "has_more": False}

    def _m_views_open(self, p: dict[str, Any]) -> dict[str, Any]:
        view = _json(p.get("view"))
        return {"view": {"id": f"V{next(self._ids):06d}", **view}}

    def _m_files_getUploadURLExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        file_id = f"F{next(self._ids):06d}"
        self.files[file_id] = StoredFile(file_id, p["filename"], "video/mp4")
        return {"file_id": file_id, "upload_url": f"{self.base_url}/upload/{file_id}"}

    def _m_files_completeUploadExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        done = []
        for item in _json(p["files"]):
            stored = self.files.get(item["id"])
            if stored is None or not stored.uploaded:
                return {"ok": False, "error": "file_not_found"}
            stored.title = item.get("title") or stored.name
            channel = p.get("channel_id")
            if channel:
                message = {
                    "user": BOT_USER_ID,
                    "bot_id": BOT_ID,
                    "text": p.get("initial_comment", ""),
                    "files": [{"id": stored.id, "name": stored.name}],
                }
                if p.get("thread_ts"):
                    message["thread_ts"] = p["thread_ts"]
                posted = self.add_message(channel, message)
                share = {"ts": posted["ts"], **({"thread_ts": p["thread_ts"]} if p.get("thread_ts") else {})}
                stored.shares.setdefault(channel, []).append(share)
            done.append({"id": stored.id, "title": stored.title})
        return {"files": done}

    def _m_files_info(self, p: dict[str, Any]) -> dict[str, Any]:
        stored = self.files.get(p["file"])
        if stored is None:
            return {"ok": False, "error": "file_not_found"}
        return {"file": self._file_object(stored)}

    # ----- helpers ----------------------------------------------------------------------

    def _file_object(self, stored: StoredFile) -> dict[str, Any]:
        url = f"{self.base_url}/files-pri/{stored.id}/{urllib.parse.quote(stored.name)}"
        obj: dict[str, Any] = {
            "id": stored.id,
            "name": stored.name,
            "title": stored.title,
            "mimetype": stored.mimetype,
            "filetype": stored.name.rsplit(".", 1)[-1],
            "size": len(stored.content),
            "url_private": url,
            "url_private_download": url + "?download=1",
        }
        if stored.shares:
            obj["shares"] = {"public": stored.shares}
        return obj

    def _next_ts(self) -> str:
        return f"1700000000.{next(self._ts):06d}"


# ----- acting as Slack towards the app --------------------------------------------------


def sign(body: str, *, secret: str = SIGNING_SECRET, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack adds to an HTTP request, signed the way Slack signs them."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    assert signature is not None
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature}


def slash_command(
    text: str,
    *,
    user: str = "U0ALICE",
    channel: str = "C0GENERAL",
    response_url: str = "",
    trigger_id: str | None = None,
) -> dict[str, str]:
    """A slash command's form fields; each gets its own ``trigger_id`` unless one is given."""
    return {
        "token": "legacy-verification-token",
        "team_id": TEAM_ID,
        "team_domain": "fake",
        "channel_id": channel,
        "channel_name": "general",
        "user_id": user,
        "user_name": user.lower(),
        "command": "/video",
        "text": text,
        "api_app_id": "A0APP",
        "response_url": response_url,
        "trigger_id": trigger_id or f"trigger-{next(_TRIGGERS)}",
    }


def mention_event(
    text: str,
    *,
    user: str = "U0ALICE",
    channel: str = "C0GENERAL",
    ts: str = "1699999999.000001",
    thread_ts: str | None = None,
    files: list[dict[str, Any]] | None = None,
    event_id: str = "Ev0001",
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "app_mention",
        "user": user,
        "text": f"<@{BOT_USER_ID}> {text}",
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    if files:
        event["files"] = files
    return {
        "token": "legacy-verification-token",
        "team_id": TEAM_ID,
        "api_app_id": "A0APP",
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()),
        "authorizations": [{"team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True}],
    }


def block_action(
    action_id: str,
    value: str,
    *,
    user: str = "U0ALICE",
    channel: str = "C0GENERAL",
    message_ts: str = "1700000000.000001",
    response_url: str = "",
) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "team": {"id": TEAM_ID, "domain": "fake"},
        "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID},
        "api_app_id": "A0APP",
        "trigger_id": f"trigger-{action_id}-{user}",
        "channel": {"id": channel, "name": "general"},
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel},
        "message": {"ts": message_ts, "text": "status"},
        "response_url": response_url,
        "actions": [
            {"type": "button", "action_id": action_id, "block_id": "b", "value": value, "action_ts": str(time.time())}
        ],
    }


def message_shortcut(
    message: dict[str, Any],
    *,
    user: str = "U0ALICE",
    channel: str = "C0GENERAL",
    response_url: str = "",
    callback_id: str = "videobot_animate",
) -> dict[str, Any]:
    return {
        "type": "message_action",
        "callback_id": callback_id,
        "team": {"id": TEAM_ID, "domain": "fake"},
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM_ID},
        "channel": {"id": channel, "name": "general"},
        "message": message,
        "message_ts": message["ts"],
        "response_url": response_url,
        "trigger_id": "trigger-shortcut",
        "action_ts": str(time.time()),
    }


def view_submission(
    view: dict[str, Any], values: dict[str, dict[str, Any]], *, user: str = "U0ALICE", view_id: str = "V0MODAL"
) -> dict[str, Any]:
    """A modal submitted with ``values`` in Slack's ``view.state.values`` shape."""
    return {
        "type": "view_submission",
        "team": {"id": TEAM_ID, "domain": "fake"},
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM_ID},
        "api_app_id": "A0APP",
        "trigger_id": "trigger-view",
        "view": {**view, "id": view_id, "team_id": TEAM_ID, "state": {"values": values}},
    }


def form_body(fields: dict[str, str]) -> str:
    return urllib.parse.urlencode(fields)


def interactive_body(payload: dict[str, Any]) -> str:
    return urllib.parse.urlencode({"payload": json.dumps(payload)})


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None
    return header.removeprefix("Bearer ").strip() or None


def _json(value: Any) -> Any:
    if isinstance(value, str):
        return json.loads(value) if value else None
    return value


def _slack(ok: bool = True, **body: Any) -> web.Response:
    body.setdefault("ok", ok)
    return web.json_response(body)
