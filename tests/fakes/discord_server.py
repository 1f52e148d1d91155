"""A fake Discord on loopback: enough REST, CDN and gateway for the real discord.py client.

Tests run the unmodified library against it. ``FakeDiscord.patched()`` points
``discord.http.Route.BASE`` at the REST routes here and ``DiscordWebSocket.DEFAULT_GATEWAY`` at the
websocket, so every byte goes through discord.py's own HTTP, multipart, rate-limit and gateway
code. The fake behaves as Discord documents (and as the library expects):

- JSON answers carry exactly ``application/json``; errors are ``{"code", "message"}`` bodies.
- The gateway sends HELLO, waits for IDENTIFY, answers READY (guilds unavailable) and then one
  GUILD_CREATE per guild; heartbeats are acknowledged; zlib-stream compression is honoured.
- Sharding: a connection that identifies with ``shard: [id, count]`` hears only the guilds that
  shard owns (``(guild_id >> 22) % count == id``), their READY entries, GUILD_CREATEs and events,
  as on Discord. Every IDENTIFY is kept in ``identifies`` (without its token).
- Without the MESSAGE_CONTENT intent a MESSAGE_CREATE keeps its content only when it mentions
  the bot, as on Discord.
- Interactions must be answered within ``callback_deadline_s`` and only once; the callback answer
  carries ``interaction`` and ``resource``; tokens stop working after ``token_ttl_s``.
- Messages honour ``nonce`` with ``enforce_nonce``: a repeat within ``nonce_window_s`` returns the
  earlier message instead of creating a second one.
- Uploads over the guild's limit are refused with 413; channels enforce the bot's permissions.

Every REST call is recorded in ``calls`` for assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import discord
import yarl
from aiohttp import BodyPartReader, WSMsgType, web

DISCORD_EPOCH_MS = 1420070400000
API_PREFIX = "/api/v10"

# permission bits (https://discord.com/developers/docs/topics/permissions)
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
USE_APPLICATION_COMMANDS = 1 << 31
CREATE_PUBLIC_THREADS = 1 << 35
SEND_MESSAGES_IN_THREADS = 1 << 38
ALL_PERMISSIONS = (1 << 51) - 1

MEMBER_PERMISSIONS = (
    VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | ADD_REACTIONS
    | USE_APPLICATION_COMMANDS
    | CREATE_PUBLIC_THREADS
    | SEND_MESSAGES_IN_THREADS
)
BOT_PERMISSIONS = MEMBER_PERMISSIONS

INTENT_GUILDS = 1 << 0
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_MESSAGE_CONTENT = 1 << 15

PREMIUM_FILESIZE = {0: 10 * 1024 * 1024, 1: 10 * 1024 * 1024, 2: 50 * 1024 * 1024, 3: 100 * 1024 * 1024}

# interaction callback types
CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE = 4, 5
EPHEMERAL = 1 << 6
LOADING = 1 << 7


def _iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(ts if ts is not None else time.time(), UTC).isoformat()


class DiscordError(Exception):
    """Turned into Discord's JSON error body by the middleware."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class UploadedFile:
    field: str
    filename: str
    content_type: str
    data: bytes


@dataclass
class RecordedCall:
    """One REST request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    files: list[UploadedFile]
    status: int = 0
    at: float = field(default_factory=time.monotonic)
    authorized: bool = False


_CALL = web.RequestKey("call", RecordedCall)


@dataclass
class FakeUser:
    id: int
    username: str
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "global_name": self.username,
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
        }


@dataclass
class FakeChannel:
    """A text channel or a public thread. ``bot_deny`` removes permissions from the bot here."""

    id: int
    guild_id: int
    name: str
    type: int = 0
    parent_id: int | None = None
    owner_id: int | None = None
    bot_deny: int = 0
    message_ids: list[int] = field(default_factory=list)

    @property
    def is_thread(self) -> bool:
        return self.type in (10, 11, 12)

    def payload(self, bot_id: int) -> dict[str, Any]:
        if self.is_thread:
            return {
                "id": str(self.id),
                "guild_id": str(self.guild_id),
                "parent_id": str(self.parent_id),
                "owner_id": str(self.owner_id),
                "name": self.name,
                "type": self.type,
                "last_message_id": str(self.message_ids[-1]) if self.message_ids else None,
                "rate_limit_per_user": 0,
                "message_count": len(self.message_ids),
                "total_message_sent": len(self.message_ids),
                "member_count": 1,
                "flags": 0,
                "thread_metadata": {
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": _iso(),
                    "locked": False,
                    "create_timestamp": _iso(),
                },
            }
        overwrites = []
        if self.bot_deny:
            overwrites.append({"id": str(bot_id), "type": 1, "allow": "0", "deny": str(self.bot_deny)})
        return {
            "id": str(self.id),
            "guild_id": str(self.guild_id),
            "name": self.name,
            "type": self.type,
            "position": 0,
            "parent_id": None,
            "topic": None,
            "nsfw": False,
            "rate_limit_per_user": 0,
            "last_message_id": str(self.message_ids[-1]) if self.message_ids else None,
            "permission_overwrites": overwrites,
            "flags": 0,
        }


@dataclass
class FakeGuild:
    id: int
    name: str
    owner_id: int
    premium_tier: int = 0
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    member_roles: dict[int, list[int]] = field(default_factory=dict)
    roles: dict[int, tuple[str, int]] = field(default_factory=dict)

    @property
    def filesize_limit(self) -> int:
        return PREMIUM_FILESIZE[self.premium_tier]


@dataclass
class FakeInteraction:
    """An interaction the fake sent, and what the bot did with it."""

    id: int
    token: str
    type: int
    guild_id: int
    channel_id: int
    user: FakeUser
    dispatched_at: float
    payload: dict[str, Any]
    responded: asyncio.Event = field(default_factory=asyncio.Event)
    responded_at: float | None = None
    response_type: int | None = None
    response_flags: int = 0
    original_message_id: int | None = None
    original_deleted: bool = False
    expired: bool = False

    @property
    def answer_latency(self) -> float:
        """Seconds from the gateway event to the bot's callback (the interaction must be answered)."""
        assert self.responded_at is not None, "the interaction was not answered"
        return self.responded_at - self.dispatched_at


@dataclass
class _Session:
    ws: web.WebSocketResponse
    intents: int = 0
    compress: zlib._Compress | None = None
    seq: int = 0
    session_id: str = field(default_factory=lambda: secrets.token_hex(16))
    shard: tuple[int, int] = (0, 1)

    def owns(self, guild_id: int | str | None) -> bool:
        """Whether this connection's shard receives the guild's events (all, unsharded)."""
        if guild_id is None:
            return True
        shard_id, count = self.shard
        return shard_of(int(guild_id), count) == shard_id

    async def send(self, payload: dict[str, Any]) -> None:
        text = json.dumps(payload)
        if self.compress is not None:
            data = self.compress.compress(text.encode()) + self.compress.flush(zlib.Z_SYNC_FLUSH)
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(text)


def shard_of(guild_id: int, shard_count: int) -> int:
    """The shard Discord sends a guild's events to."""
    return (guild_id >> 22) % shard_count


class FakeDiscord:
    """A loopback Discord: REST under ``/api/v10``, a CDN under ``/cdn`` and a gateway at ``/gateway``."""

    def __init__(
        self,
        *,
        bot_token: str = "fake-bot-token.abc.def",
        callback_deadline_s: float = 3.0,
        token_ttl_s: float = 15 * 60,
        nonce_window_s: float = 300.0,
    ) -> None:
        self.bot_token = bot_token
        self.callback_deadline_s = callback_deadline_s
        self.token_ttl_s = token_ttl_s
        self.nonce_window_s = nonce_window_s
        self._counter = itertools.count(1)
        self.bot = FakeUser(self.snowflake(), "videobot", bot=True)
        self.application_id = self.bot.id
        self.users: dict[int, FakeUser] = {self.bot.id: self.bot}
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.messages: dict[int, dict[str, Any]] = {}
        self._ephemeral: dict[int, dict[str, Any]] = {}
        self.files: dict[str, tuple[str, bytes]] = {}
        self.interactions: dict[str, FakeInteraction] = {}
        self.commands: dict[str, list[dict[str, Any]]] = {}
        self.calls: list[RecordedCall] = []
        self.sessions: list[_Session] = []
        self.identifies: list[dict[str, Any]] = []
        self.identified = asyncio.Event()
        self._nonces: dict[tuple[int, int, str], tuple[int, float]] = {}
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=256 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/cdn/attachments/{channel_id}/{attachment_id}/{filename}", self._cdn)
        r = app.router
        p = API_PREFIX
        r.add_get(p + "/users/@me", self._get_me)
        r.add_get(p + "/oauth2/applications/@me", self._get_application)
        r.add_put(p + "/applications/{app_id}/commands", self._put_commands)
        r.add_put(p + "/applications/{app_id}/guilds/{guild_id}/commands", self._put_commands)
        r.add_post(p + "/interactions/{interaction_id}/{token}/callback", self._interaction_callback)
        r.add_post(p + "/webhooks/{app_id}/{token}", self._webhook_send)
        r.add_patch(p + "/webhooks/{app_id}/{token}/messages/{message_id}", self._webhook_edit)
        r.add_delete(p + "/webhooks/{app_id}/{token}/messages/{message_id}", self._webhook_delete)
        r.add_get(p + "/channels/{channel_id}/messages", self._get_messages)
        r.add_post(p + "/channels/{channel_id}/messages", self._create_message)
        r.add_patch(p + "/channels/{channel_id}/messages/{message_id}", self._edit_message)
        r.add_post(p + "/channels/{channel_id}/messages/{message_id}/threads", self._thread_from_message)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)  # bursts of 200 interactions
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        for session in list(self.sessions):
            await session.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/gateway"

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        """Point discord.py's REST base and default gateway at this fake for the duration."""
        old_base = discord.http.Route.BASE
        old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield
        finally:
            discord.http.Route.BASE = old_base
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway

    # ---------------------------------------------------------------- world building

    def snowflake(self) -> int:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return (ms << 22) | (next(self._counter) & 0x3FFFFF)

    def add_user(self, username: str) -> FakeUser:
        user = FakeUser(self.snowflake(), username)
        self.users[user.id] = user
        return user

    def add_guild(
        self, name: str = "Test Guild", *, premium_tier: int = 0, shard: tuple[int, int] | None = None
    ) -> FakeGuild:
        """A guild; ``shard=(id, count)`` picks an id that shard owns."""
        owner = self.add_user(f"{name} owner")
        guild_id = self.snowflake()
        if shard is not None:
            shard_id, count = shard
            timestamp = guild_id >> 22
            guild_id = ((timestamp - timestamp % count + shard_id) << 22) | (guild_id & 0x3FFFFF)
            assert shard_of(guild_id, count) == shard_id
        guild = FakeGuild(guild_id, name, owner.id, premium_tier)
        guild.roles[guild.id] = ("@everyone", MEMBER_PERMISSIONS)
        bot_role = self.snowflake()
        guild.roles[bot_role] = ("videobot", BOT_PERMISSIONS)
        guild.member_roles[self.bot.id] = [bot_role]
        guild.member_roles[owner.id] = []
        self.guilds[guild.id] = guild
        return guild

    def add_member(self, guild: FakeGuild, user: FakeUser, *, manage_guild: bool = False) -> None:
        roles: list[int] = []
        if manage_guild:
            role = self.snowflake()
            guild.roles[role] = ("Server Managers", MEMBER_PERMISSIONS | MANAGE_GUILD)
            roles.append(role)
        guild.member_roles[user.id] = roles

    def add_text_channel(self, guild: FakeGuild, name: str = "general", *, bot_deny: int = 0) -> FakeChannel:
        channel = FakeChannel(self.snowflake(), guild.id, name, bot_deny=bot_deny)
        guild.channels[channel.id] = channel
        self.channels[channel.id] = channel
        return channel

    def add_thread(self, parent: FakeChannel, name: str, owner: FakeUser) -> FakeChannel:
        thread = FakeChannel(self.snowflake(), parent.guild_id, name, type=11, parent_id=parent.id, owner_id=owner.id)
        self.guilds[parent.guild_id].channels[thread.id] = thread
        self.channels[thread.id] = thread
        return thread

    def upload_attachment(
        self, channel: FakeChannel, filename: str, data: bytes, content_type: str | None
    ) -> dict[str, Any]:
        """Store a file on the fake CDN and return its attachment object as Discord sends it."""
        attachment_id = self.snowflake()
        key = f"{channel.id}/{attachment_id}/{filename}"
        self.files[key] = (content_type or "application/octet-stream", data)
        url = f"{self.base_url}/cdn/attachments/{key}"
        payload: dict[str, Any] = {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
        }
        if content_type is not None:
            payload["content_type"] = content_type
        return payload

    def permissions(self, channel: FakeChannel, user_id: int) -> int:
        """The user's resolved permissions in a channel (threads inherit their parent's)."""
        if channel.is_thread:
            return self.permissions(self.channels[channel.parent_id or 0], user_id)
        guild = self.guilds[channel.guild_id]
        if user_id == guild.owner_id:
            return ALL_PERMISSIONS
        perms = guild.roles[guild.id][1]
        for role in guild.member_roles.get(user_id, []):
            perms |= guild.roles[role][1]
        if perms & ADMINISTRATOR:
            return ALL_PERMISSIONS
        if user_id == self.bot.id:
            perms &= ~channel.bot_deny
        return perms

    # ---------------------------------------------------------------- payloads

    def member_payload(self, guild: FakeGuild, user: FakeUser, *, channel: FakeChannel | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "user": user.payload(),
            "roles": [str(r) for r in guild.member_roles.get(user.id, [])],
            "joined_at": _iso(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
            "avatar": None,
            "pending": False,
        }
        if channel is not None:
            payload["permissions"] = str(self.permissions(channel, user.id))
        return payload

    def guild_payload(self, guild: FakeGuild) -> dict[str, Any]:
        channels = [c.payload(self.bot.id) for c in guild.channels.values() if not c.is_thread]
        threads = [c.payload(self.bot.id) for c in guild.channels.values() if c.is_thread]
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(guild.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": guild.premium_tier,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": "en-US",
            "features": [],
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "vanity_url_code": None,
            "application_id": None,
            "max_members": 500000,
            "max_video_channel_users": 25,
            "roles": [
                {
                    "id": str(role_id),
                    "name": name,
                    "permissions": str(perms),
                    "position": 0 if role_id == guild.id else 1,
                    "color": 0,
                    "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                }
                for role_id, (name, perms) in guild.roles.items()
            ],
            "emojis": [],
            "stickers": [],
            "joined_at": _iso(),
            "large": False,
            "unavailable": False,
            "member_count": len(guild.member_roles),
            "members": [self.member_payload(guild, self.bot)],
            "channels": channels,
            "threads": threads,
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def _message(
        self,
        channel: FakeChannel,
        author: FakeUser,
        content: str = "",
        *,
        attachments: list[dict[str, Any]] | None = None,
        embeds: list[dict[str, Any]] | None = None,
        components: list[dict[str, Any]] | None = None,
        flags: int = 0,
        nonce: str | None = None,
        interaction: FakeInteraction | None = None,
        message_reference: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        message_id = self.snowflake()
        mentions = []
        if f"<@{self.bot.id}>" in content or f"<@!{self.bot.id}>" in content:
            mentions.append(self.bot.payload())
        message: dict[str, Any] = {
            "id": str(message_id),
            "channel_id": str(channel.id),
            "guild_id": str(channel.guild_id),
            "author": author.payload(),
            "content": content,
            "timestamp": _iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": mentions,
            "mention_roles": [],
            "attachments": attachments or [],
            "embeds": embeds or [],
            "components": components or [],
            "pinned": False,
            "type": 0,
            "flags": flags,
        }
        if nonce is not None:
            message["nonce"] = nonce
        if interaction is not None:
            message["type"] = 20
            message["application_id"] = str(self.application_id)
            message["webhook_id"] = str(self.application_id)
            message["interaction_metadata"] = {
                "id": str(interaction.id),
                "type": interaction.type,
                "user": interaction.user.payload(),
                "authorizing_integration_owners": {"0": str(interaction.guild_id)},
            }
        if message_reference is not None:
            message["type"] = 19
            message["message_reference"] = {
                k: str(v) if k.endswith("_id") else v for k, v in message_reference.items() if v is not None
            }
        if author is not self.bot and channel.guild_id:
            message["member"] = {
                k: v for k, v in self.member_payload(self.guilds[channel.guild_id], author).items() if k != "user"
            }
        if not flags & EPHEMERAL:
            self.messages[message_id] = message
            channel.message_ids.append(message_id)
        return message

    # ---------------------------------------------------------------- test-facing actions

    async def dispatch(self, event: str, data: dict[str, Any]) -> float:
        """Send a DISPATCH to every identified session; returns the send time (monotonic)."""
        sent = time.monotonic()
        for session in list(self.sessions):
            if not session.owns(data.get("guild_id")):
                continue
            if event == "MESSAGE_CREATE" and not session.intents & INTENT_GUILD_MESSAGES:
                continue
            payload = data
            if event == "MESSAGE_CREATE" and not session.intents & INTENT_MESSAGE_CONTENT:
                payload = self._without_content(data)
            session.seq += 1
            with contextlib.suppress(ConnectionResetError):
                await session.send({"op": 0, "t": event, "s": session.seq, "d": payload})
        return sent

    def _without_content(self, message: dict[str, Any]) -> dict[str, Any]:
        """Discord blanks content for bots without the intent, unless the bot is mentioned."""
        mentioned = any(m["id"] == str(self.bot.id) for m in message.get("mentions", []))
        if mentioned or message["author"]["id"] == str(self.bot.id):
            return message
        return {**message, "content": "", "attachments": [], "embeds": [], "components": []}

    async def post_user_message(
        self,
        channel: FakeChannel,
        user: FakeUser,
        content: str,
        *,
        attachments: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A person posts a message; it is stored and dispatched as MESSAGE_CREATE."""
        message = self._message(channel, user, content, attachments=attachments)
        await self.dispatch("MESSAGE_CREATE", message)
        await self._notify()
        return message

    def mention(self) -> str:
        return f"<@{self.bot.id}>"

    async def slash_command(
        self,
        channel: FakeChannel,
        user: FakeUser,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        attachments: dict[str, dict[str, Any]] | None = None,
    ) -> FakeInteraction:
        """Dispatch an INTERACTION_CREATE for ``/name`` with the given option values.

        ``attachments`` maps an option name to an attachment object from ``upload_attachment``;
        it is sent in ``data.resolved.attachments`` with the option's value its id, as Discord does.
        """
        option_types = {str: 3, bool: 5, int: 4, float: 10}
        data_options: list[dict[str, Any]] = []
        for key, value in (options or {}).items():
            data_options.append({"name": key, "type": option_types[type(value)], "value": value})
        resolved: dict[str, Any] = {}
        for key, attachment in (attachments or {}).items():
            data_options.append({"name": key, "type": 11, "value": attachment["id"]})
            resolved.setdefault("attachments", {})[attachment["id"]] = attachment
        data: dict[str, Any] = {"id": "0", "name": name, "type": 1, "options": data_options}
        for scope in (str(channel.guild_id), "global"):
            registered = next((c for c in self.commands.get(scope, []) if c["name"] == name), None)
            if registered is not None:
                data["id"] = registered["id"]
                if scope != "global":
                    data["guild_id"] = scope
                break
        if resolved:
            data["resolved"] = resolved
        return await self._interaction(2, channel, user, data)

    async def click_button(self, message: dict[str, Any], custom_id: str, user: FakeUser) -> FakeInteraction:
        """Dispatch a component INTERACTION_CREATE for a button on ``message``."""
        channel = self.channels[int(message["channel_id"])]
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._interaction(3, channel, user, data, message=self.messages.get(int(message["id"]), message))

    async def _interaction(
        self,
        kind: int,
        channel: FakeChannel,
        user: FakeUser,
        data: dict[str, Any],
        *,
        message: dict[str, Any] | None = None,
    ) -> FakeInteraction:
        guild = self.guilds[channel.guild_id]
        interaction_id = self.snowflake()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48)
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": kind,
            "token": token,
            "version": 1,
            "guild_id": str(guild.id),
            "guild": {"id": str(guild.id), "locale": "en-US", "features": []},
            "channel_id": str(channel.id),
            "channel": channel.payload(self.bot.id),
            "member": self.member_payload(guild, user, channel=channel),
            "app_permissions": str(self.permissions(channel, self.bot.id)),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(guild.id)},
            "context": 0,
            "attachment_size_limit": guild.filesize_limit,
            "data": data,
        }
        if message is not None:
            payload["message"] = message
        interaction = FakeInteraction(
            interaction_id, token, kind, guild.id, channel.id, user, time.monotonic(), payload
        )
        self.interactions[token] = interaction
        interaction.dispatched_at = await self.dispatch("INTERACTION_CREATE", payload)
        return interaction

    def respond_as_bot(self, interaction: FakeInteraction, content: str) -> dict[str, Any]:
        """Record that the bot answered ``interaction`` with a channel message, without a client.

        For tests of one adapter part (a notifier) that need a status message made earlier.
        """
        message = self._message(self.channels[interaction.channel_id], self.bot, content, interaction=interaction)
        interaction.response_type = CHANNEL_MESSAGE
        interaction.original_message_id = int(message["id"])
        interaction.responded.set()
        return message

    def expire_token(self, interaction: FakeInteraction) -> None:
        """Make the interaction's token stop working, as Discord does after 15 minutes."""
        interaction.expired = True

    # ---------------------------------------------------------------- queries for tests

    def channel_messages(self, channel_id: int | str) -> list[dict[str, Any]]:
        """The channel's messages, oldest first."""
        return [self.messages[m] for m in self.channels[int(channel_id)].message_ids if m in self.messages]

    def threads_of(self, parent: FakeChannel) -> list[FakeChannel]:
        return [c for c in self.channels.values() if c.parent_id == parent.id]

    def calls_to(self, method: str, path_contains: str) -> list[RecordedCall]:
        return [c for c in self.calls if c.method == method and path_contains in c.path]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Wait until ``predicate()`` is truthy (checked after each change the fake sees)."""

        async def _wait() -> Any:
            async with self._changed:
                while True:
                    result = predicate()
                    if result:
                        return result
                    await self._changed.wait()

        return await asyncio.wait_for(_wait(), timeout)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ---------------------------------------------------------------- HTTP plumbing

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX):
            return await handler(request)
        call = RecordedCall(
            request.method,
            request.path[len(API_PREFIX) :],
            dict(request.query),
            None,
            [],
            authorized=request.headers.get("Authorization") == f"Bot {self.bot_token}",
        )
        request[_CALL] = call
        self.calls.append(call)
        try:
            if call.path.startswith(("/users", "/oauth2", "/applications", "/channels")) and not call.authorized:
                raise DiscordError(401, 0, "401: Unauthorized")
            response = await handler(request)
        except DiscordError as exc:
            response = self._json({"code": exc.code, "message": exc.message}, status=exc.status)
        except web.HTTPNotFound:
            response = self._json({"code": 0, "message": "404: Not Found"}, status=404)
        call.status = response.status
        await self._notify()
        return response

    @staticmethod
    def _json(data: Any, status: int = 200) -> web.Response:
        return web.Response(status=status, body=json.dumps(data).encode(), headers={"Content-Type": "application/json"})

    async def _body(self, request: web.Request) -> tuple[Any, list[UploadedFile]]:
        """Read a JSON or multipart (``payload_json`` + ``files[n]``) body, as Discord accepts."""
        call: RecordedCall = request[_CALL]
        files: list[UploadedFile] = []
        payload: Any = {}
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader):
                    raise DiscordError(400, 50035, "Invalid Form Body: nested multipart")
                if part.name == "payload_json":
                    payload = json.loads(await part.text())
                elif part.filename is not None:
                    data = await part.read(decode=False)
                    files.append(
                        UploadedFile(part.name or "", part.filename, part.headers.get("Content-Type", ""), bytes(data))
                    )
        elif request.can_read_body:
            payload = await request.json()
        call.json, call.files = payload, files
        return payload, files

    def _channel(self, request: web.Request) -> FakeChannel:
        try:
            return self.channels[int(request.match_info["channel_id"])]
        except (KeyError, ValueError):
            raise DiscordError(404, 10003, "Unknown Channel") from None

    def _stored_message(self, channel: FakeChannel, message_id: str) -> dict[str, Any]:
        message = self.messages.get(int(message_id)) if message_id.isdigit() else None
        if message is None or message["channel_id"] != str(channel.id):
            raise DiscordError(404, 10008, "Unknown Message")
        return message

    def _require(self, channel: FakeChannel, needed: int) -> None:
        if self.permissions(channel, self.bot.id) & needed != needed:
            raise DiscordError(403, 50013, "Missing Permissions")

    def _attachments_from(
        self, channel: FakeChannel, payload: dict[str, Any], files: list[UploadedFile]
    ) -> list[dict[str, Any]]:
        guild = self.guilds[channel.guild_id]
        if sum(len(f.data) for f in files) > guild.filesize_limit:
            raise DiscordError(413, 40005, "Request entity too large")
        described = {str(a.get("id")): a for a in payload.get("attachments", [])}
        out: list[dict[str, Any]] = []
        for index, upload in enumerate(files):
            meta = described.get(str(index), {})
            mime = "video/mp4" if upload.filename.endswith(".mp4") else upload.content_type
            attachment = self.upload_attachment(channel, meta.get("filename", upload.filename), upload.data, mime)
            out.append(attachment)
        return out

    def _apply_edit(self, message: dict[str, Any], payload: dict[str, Any], files: list[UploadedFile]) -> None:
        channel = self.channels[int(message["channel_id"])]
        for key in ("content", "embeds", "components"):
            if key in payload and payload[key] is not None:
                message[key] = payload[key]
        if "flags" in payload and payload["flags"] is not None:
            message["flags"] = (message["flags"] & ~LOADING) | (payload["flags"] & ~LOADING)
        else:
            message["flags"] &= ~LOADING
        if files or "attachments" in payload:
            listed = {str(a["id"]) for a in payload.get("attachments", [])}
            kept = [a for a in message["attachments"] if a["id"] in listed]
            message["attachments"] = kept + self._attachments_from(channel, payload, files)
        message["edited_timestamp"] = _iso()

    # ---------------------------------------------------------------- REST: identity and commands

    async def _get_me(self, request: web.Request) -> web.Response:
        return self._json({**self.bot.payload(), "verified": True, "mfa_enabled": False, "locale": "en-US"})

    async def _get_application(self, request: web.Request) -> web.Response:
        return self._json(
            {
                "id": str(self.application_id),
                "name": "videobot",
                "icon": None,
                "description": "",
                "rpc_origins": [],
                "bot_public": True,
                "bot_require_code_grant": False,
                "bot": self.bot.payload(),
                "owner": self.users[next(iter(self.users))].payload(),
                "summary": "",
                "verify_key": secrets.token_hex(32),
                "team": None,
                "flags": 1 << 19,
                "interactions_endpoint_url": None,
                "tags": [],
                "redirect_uris": [],
                "approximate_guild_count": len(self.guilds),
            }
        )

    async def _put_commands(self, request: web.Request) -> web.Response:
        payload, _ = await self._body(request)
        scope = request.match_info.get("guild_id", "global")
        registered: list[dict[str, Any]] = []
        for command in payload:
            registered.append(
                {
                    "id": str(self.snowflake()),
                    "application_id": str(self.application_id),
                    "guild_id": None if scope == "global" else scope,
                    "version": str(self.snowflake()),
                    "default_member_permissions": None,
                    "dm_permission": True,
                    "nsfw": False,
                    "type": 1,
                    "options": [],
                    "description": "",
                    **command,
                }
            )
        self.commands[scope] = registered
        return self._json(registered)

    # ---------------------------------------------------------------- REST: interactions

    def _interaction_by_token(self, token: str, *, for_webhook: bool = True) -> FakeInteraction:
        interaction = self.interactions.get(token)
        if interaction is None:
            raise DiscordError(404, 10015, "Unknown Webhook")
        if for_webhook and (interaction.expired or time.monotonic() - interaction.dispatched_at > self.token_ttl_s):
            raise DiscordError(401, 50027, "Invalid Webhook Token")
        return interaction

    async def _interaction_callback(self, request: web.Request) -> web.Response:
        payload, files = await self._body(request)
        interaction = self.interactions.get(request.match_info["token"])
        if interaction is None or str(interaction.id) != request.match_info["interaction_id"]:
            raise DiscordError(404, 10062, "Unknown interaction")
        if interaction.response_type is not None:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        if time.monotonic() - interaction.dispatched_at > self.callback_deadline_s:
            raise DiscordError(404, 10062, "Unknown interaction")
        kind = payload["type"]
        data = payload.get("data") or {}
        flags = int(data.get("flags") or 0)
        interaction.response_type = kind
        interaction.response_flags = flags
        interaction.responded_at = time.monotonic()
        channel = self.channels[interaction.channel_id]
        resource: dict[str, Any] = {"type": kind}
        answer: dict[str, Any] = {"id": str(interaction.id), "type": interaction.type}
        if kind in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE):
            message = self._message(
                channel,
                self.bot,
                data.get("content") or "",
                embeds=data.get("embeds"),
                components=data.get("components"),
                flags=flags | (LOADING if kind == DEFERRED_CHANNEL_MESSAGE else 0),
                interaction=interaction,
                attachments=self._attachments_from(channel, data, files) if files else None,
            )
            interaction.original_message_id = int(message["id"])
            if flags & EPHEMERAL:
                self._ephemeral[int(message["id"])] = message
            else:
                await self.dispatch("MESSAGE_CREATE", message)
            resource["message"] = message
            answer.update(
                response_message_id=message["id"],
                response_message_loading=kind == DEFERRED_CHANNEL_MESSAGE,
                response_message_ephemeral=bool(flags & EPHEMERAL),
            )
        interaction.responded.set()
        if request.query.get("with_response") in ("1", "true", "True"):
            return self._json({"interaction": answer, "resource": resource})
        return web.Response(status=204)

    def original_response(self, interaction: FakeInteraction) -> dict[str, Any] | None:
        """The interaction's original response message (ephemeral ones included), if any."""
        if interaction.original_message_id is None or interaction.original_deleted:
            return None
        mid = interaction.original_message_id
        return self.messages.get(mid) or self._ephemeral.get(mid)

    def ephemeral_replies(self, interaction: FakeInteraction) -> list[dict[str, Any]]:
        """Ephemeral messages the bot sent for this interaction (original or follow-ups)."""
        return [
            m for m in self._ephemeral.values() if m.get("interaction_metadata", {}).get("id") == str(interaction.id)
        ]

    def _webhook_message(self, interaction: FakeInteraction, message_id: str) -> dict[str, Any]:
        if message_id == "@original":
            message = self.original_response(interaction)
        else:
            message = self.messages.get(int(message_id)) or self._ephemeral.get(int(message_id))
            if message is not None and message.get("interaction_metadata", {}).get("id") != str(interaction.id):
                message = None
        if message is None:
            raise DiscordError(404, 10008, "Unknown Message")
        return message

    async def _webhook_send(self, request: web.Request) -> web.Response:
        payload, files = await self._body(request)
        interaction = self._interaction_by_token(request.match_info["token"])
        if interaction.response_type is None:
            raise DiscordError(404, 10015, "Unknown Webhook")
        flags = int(payload.get("flags") or 0)
        original = self.original_response(interaction)
        if original is not None and original["flags"] & LOADING:
            # the first follow-up after a deferral replaces the "thinking" message and keeps its visibility
            self._apply_edit(original, payload, files)
            return self._json(original)
        channel = self.channels[interaction.channel_id]
        message = self._message(
            channel,
            self.bot,
            payload.get("content") or "",
            embeds=payload.get("embeds"),
            components=payload.get("components"),
            flags=flags,
            interaction=interaction,
            attachments=self._attachments_from(channel, payload, files) if files else None,
        )
        if flags & EPHEMERAL:
            self._ephemeral[int(message["id"])] = message
        else:
            await self.dispatch("MESSAGE_CREATE", message)
        return self._json(message)

    async def _webhook_edit(self, request: web.Request) -> web.Response:
        payload, files = await self._body(request)
        interaction = self._interaction_by_token(request.match_info["token"])
        message = self._webhook_message(interaction, request.match_info["message_id"])
        self._apply_edit(message, payload, files)
        if not message["flags"] & EPHEMERAL:
            await self.dispatch("MESSAGE_UPDATE", message)
        return self._json(message)

    async def _webhook_delete(self, request: web.Request) -> web.Response:
        interaction = self._interaction_by_token(request.match_info["token"])
        message = self._webhook_message(interaction, request.match_info["message_id"])
        mid = int(message["id"])
        if mid == interaction.original_message_id:
            interaction.original_deleted = True
        self.messages.pop(mid, None)
        self._ephemeral.pop(mid, None)
        return web.Response(status=204)

    # ---------------------------------------------------------------- REST: channels and messages

    async def _get_messages(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self._require(channel, VIEW_CHANNEL | READ_MESSAGE_HISTORY)
        limit = min(int(request.query.get("limit", 50)), 100)
        before = int(request.query.get("before", 0) or 0)
        after = int(request.query.get("after", 0) or 0)
        ids = [m for m in channel.message_ids if m in self.messages]
        if before:
            ids = [m for m in ids if m < before]
        if after:
            ids = [m for m in ids if m > after]
        newest_first = sorted(ids, reverse=True)
        if after and not before:
            chosen = sorted(ids)[:limit]
            newest_first = sorted(chosen, reverse=True)
        return self._json([self.messages[m] for m in newest_first[:limit]])

    async def _create_message(self, request: web.Request) -> web.Response:
        payload, files = await self._body(request)
        channel = self._channel(request)
        send = SEND_MESSAGES_IN_THREADS if channel.is_thread else SEND_MESSAGES
        self._require(channel, VIEW_CHANNEL | send | (ATTACH_FILES if files else 0))
        nonce = payload.get("nonce")
        key = (channel.id, self.bot.id, str(nonce))
        if nonce is not None and payload.get("enforce_nonce"):
            seen = self._nonces.get(key)
            if seen is not None and time.monotonic() - seen[1] < self.nonce_window_s and seen[0] in self.messages:
                return self._json(self.messages[seen[0]])
        reference = payload.get("message_reference")
        message = self._message(
            channel,
            self.bot,
            payload.get("content") or "",
            embeds=payload.get("embeds"),
            components=payload.get("components"),
            flags=int(payload.get("flags") or 0),
            nonce=str(nonce) if nonce is not None else None,
            attachments=self._attachments_from(channel, payload, files),
            message_reference=reference,
        )
        if nonce is not None:
            self._nonces[key] = (int(message["id"]), time.monotonic())
        await self.dispatch("MESSAGE_CREATE", message)
        return self._json(message)

    async def _edit_message(self, request: web.Request) -> web.Response:
        payload, files = await self._body(request)
        channel = self._channel(request)
        message = self._stored_message(channel, request.match_info["message_id"])
        if message["author"]["id"] != str(self.bot.id):
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        self._require(channel, VIEW_CHANNEL)
        self._apply_edit(message, payload, files)
        await self.dispatch("MESSAGE_UPDATE", message)
        return self._json(message)

    async def _thread_from_message(self, request: web.Request) -> web.Response:
        payload, _ = await self._body(request)
        parent = self._channel(request)
        starter = self._stored_message(parent, request.match_info["message_id"])
        name = payload.get("name", "")
        if parent.is_thread:
            raise DiscordError(400, 50024, "Cannot execute action on this channel type")
        self._require(parent, VIEW_CHANNEL | CREATE_PUBLIC_THREADS)
        if not 1 <= len(name) <= 100:
            raise DiscordError(400, 50035, "Invalid Form Body: name")
        if int(starter["id"]) in self.channels:
            raise DiscordError(400, 160004, "A thread has already been created for this message")
        # a thread started from a message takes that message's id
        thread = FakeChannel(
            int(starter["id"]), parent.guild_id, name, type=11, parent_id=parent.id, owner_id=self.bot.id
        )
        self.channels[thread.id] = thread
        self.guilds[parent.guild_id].channels[thread.id] = thread
        starter["thread"] = thread.payload(self.bot.id)
        await self.dispatch("THREAD_CREATE", {**thread.payload(self.bot.id), "newly_created": True})
        return self._json(thread.payload(self.bot.id), status=201)

    # ---------------------------------------------------------------- CDN

    async def _cdn(self, request: web.Request) -> web.Response:
        key = "/".join(request.match_info[k] for k in ("channel_id", "attachment_id", "filename"))
        if key not in self.files:
            return web.Response(status=404, text="Not Found")
        content_type, data = self.files[key]
        return web.Response(body=data, headers={"Content-Type": content_type})

    def download(self, attachment: dict[str, Any]) -> bytes:
        """The bytes behind an attachment URL served by this fake."""
        key = attachment["url"].split("/cdn/attachments/", 1)[1]
        return self.files[key][1]

    # ---------------------------------------------------------------- gateway

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        session = _Session(ws)
        if request.query.get("compress") == "zlib-stream":
            session.compress = zlib.compressobj()
        await session.send({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None})
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    break
                await self._gateway_message(session, json.loads(msg.data))
        finally:
            if session in self.sessions:
                self.sessions.remove(session)
        return ws

    async def _gateway_message(self, session: _Session, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == 1:
            await session.send({"op": 11, "d": None, "s": None, "t": None})
        elif op == 2:
            data = msg["d"]
            if data.get("token") != self.bot_token:
                await session.ws.close(code=4004, message=b"Authentication failed.")
                return
            session.intents = int(data.get("intents", 0))
            if data.get("shard"):
                shard_id, count = (int(n) for n in data["shard"])
                session.shard = (shard_id, count)
            self.identifies.append({k: v for k, v in data.items() if k != "token"})
            self.sessions.append(session)
            guilds = [g for g in self.guilds.values() if session.owns(g.id)]
            session.seq += 1
            await session.send(
                {
                    "op": 0,
                    "t": "READY",
                    "s": session.seq,
                    "d": {
                        "v": 10,
                        "user": {**self.bot.payload(), "verified": True, "mfa_enabled": False},
                        "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
                        "session_id": session.session_id,
                        "resume_gateway_url": self.gateway_url,
                        "application": {"id": str(self.application_id), "flags": 1 << 19},
                        "private_channels": [],
                        "relationships": [],
                        **({"shard": list(session.shard)} if data.get("shard") else {}),
                    },
                }
            )
            if session.intents & INTENT_GUILDS:
                for guild in guilds:
                    session.seq += 1
                    await session.send({"op": 0, "t": "GUILD_CREATE", "s": session.seq, "d": self.guild_payload(guild)})
            self.identified.set()
            await self._notify()
        elif op == 6:
            # sessions are not kept across connections here: tell the client to identify afresh
            await session.send({"op": 9, "d": False, "s": None, "t": None})


@contextlib.asynccontextmanager
async def running_fake_discord(**options: Any) -> AsyncIterator[FakeDiscord]:
    """Start a fake Discord, patch discord.py to use it, and clean both up afterwards."""
    fake = FakeDiscord(**options)
    await fake.start()
    try:
        with fake.patched():
            yield fake
    finally:
        await fake.close()
