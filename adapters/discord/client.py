"""The discord.py client and the adapter that runs it beside the core.

Intents are the unprivileged minimum: guilds (channels, threads, the upload limit) and guild
messages (mentions, whose content Discord sends without the message-content intent). Commands
sync in ``setup_hook``: to each guild in ``DISCORD_GUILD_IDS`` at once, otherwise globally,
which Discord can take up to an hour to show everywhere.

Several replicas split the gateway by shard (``DISCORD_SHARD_COUNT``, ``DISCORD_SHARD_IDS``):
Discord sends each guild's events to the one connection whose shard owns it, so each replica
hears its own guilds. Everything the bot sends goes over REST, which any replica may use, so a
job taken by one replica can be delivered by another.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import discord
from discord import app_commands

from adapters.discord.commands import build_commands
from adapters.discord.mentions import handle_mention
from adapters.discord.notifier import DiscordNotifier, PendingInteractions
from adapters.discord.views import JobButton
from bot.errors import ConfigurationError
from bot.service import JobService
from bot.settings import Settings, discord_shard_problems

log = logging.getLogger(__name__)

INTENTS = discord.Intents(guilds=True, guild_messages=True)


class VideobotClient(discord.Client):
    """What interaction handlers reach through ``interaction.client``: the service and pending interactions."""

    def __init__(
        self,
        service: JobService,
        pending: PendingInteractions,
        *,
        guild_ids: tuple[int, ...] = (),
        **options: Any,
    ) -> None:
        super().__init__(intents=INTENTS, allowed_mentions=discord.AllowedMentions.none(), **options)
        self.service = service
        self.pending = pending
        self.guild_ids = guild_ids
        self.tree = app_commands.CommandTree(self)
        self.tree.error(self._on_command_error)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(JobButton)
        guilds = [discord.Object(g) for g in self.guild_ids]
        for command in build_commands():
            if guilds:
                self.tree.add_command(command, guilds=guilds)
            else:
                self.tree.add_command(command)
        if guilds:
            for guild in guilds:
                synced = await self.tree.sync(guild=guild)
                log.info("synced %d commands to guild %s", len(synced), guild.id)
        else:
            synced = await self.tree.sync()
            log.info("synced %d global commands (Discord may take up to an hour to show them)", len(synced))

    async def on_message(self, message: discord.Message) -> None:
        await handle_mention(self, message)

    async def _on_command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        """Log the fault; tell the person only that something went wrong, never the details."""
        log.error("command %s failed", interaction.command and interaction.command.name, exc_info=error)
        if self.is_closed():
            return
        text = "Something went wrong on my side; please try again in a moment."
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException:
            log.warning("could not report the failure of interaction %s", interaction.id)


class ShardedVideobotClient(VideobotClient, discord.AutoShardedClient):
    """The same client over several gateway connections, one per shard this replica runs."""


def make_client(
    service: JobService,
    pending: PendingInteractions,
    *,
    guild_ids: tuple[int, ...] = (),
    shard_count: int = 0,
    shard_ids: tuple[int, ...] = (),
    **options: Any,
) -> VideobotClient:
    """The client for this replica's shards: unsharded without a count; one shard as a plain
    client (``shard_id``); several, or all of ``shard_count`` when no ids are given, sharded."""
    if not shard_count:
        return VideobotClient(service, pending, guild_ids=guild_ids, **options)
    if len(shard_ids) == 1:
        return VideobotClient(
            service, pending, guild_ids=guild_ids, shard_id=shard_ids[0], shard_count=shard_count, **options
        )
    return ShardedVideobotClient(
        service,
        pending,
        guild_ids=guild_ids,
        shard_count=shard_count,
        shard_ids=list(shard_ids) or None,
        **options,
    )


class DiscordAdapter:
    """Logs in, syncs commands, keeps the gateway connection, and hands the notifier its client."""

    name = "discord"

    def __init__(self, settings: Settings, service: JobService, *, guild_ready_timeout: float = 2.0) -> None:
        if not settings.discord_token:
            raise ConfigurationError("The Discord adapter needs DISCORD_TOKEN (the bot token).")
        problems = discord_shard_problems(settings.discord_shard_count, settings.discord_shard_ids)
        if problems:
            raise ConfigurationError(problems[0])
        self._shard_count = settings.discord_shard_count
        self._shard_ids = settings.discord_shard_ids
        self._token = settings.discord_token
        self._guild_ids = settings.discord_guild_ids
        self._service = service
        self._guild_ready_timeout = guild_ready_timeout
        self.notifier = DiscordNotifier(media=service.media)
        self.client: VideobotClient | None = None
        self._connection: asyncio.Task[None] | None = None
        service.register_notifier(self.notifier)

    async def start(self) -> None:
        """Log in (a wrong token fails here) and connect the gateway in the background."""
        client = make_client(
            self._service,
            self.notifier.pending,
            guild_ids=self._guild_ids,
            shard_count=self._shard_count,
            shard_ids=self._shard_ids,
            guild_ready_timeout=self._guild_ready_timeout,
        )
        try:
            await client.login(self._token)
        except discord.LoginFailure:
            await client.close()
            raise ConfigurationError(
                "Discord rejected DISCORD_TOKEN; copy the token again from the Bot page of your "
                "application in the Discord Developer Portal."
            ) from None
        except BaseException:
            await client.close()
            raise
        if self._shard_count:
            shards = ",".join(map(str, self._shard_ids)) or f"0-{self._shard_count - 1}"
            log.info("discord: connecting shards %s of %d", shards, self._shard_count)
        self.client = client
        self.notifier.attach(client)
        self._connection = asyncio.create_task(self._connect(client), name="videobot-discord-gateway")

    async def _connect(self, client: VideobotClient) -> None:
        try:
            await client.connect(reconnect=True)
        except Exception:
            log.exception("the Discord gateway connection ended")

    async def wait_until_ready(self) -> None:
        """Until the gateway has delivered every guild (``guild_ready_timeout`` after the last)."""
        assert self.client is not None, "start() first"
        await self.client.wait_until_ready()

    async def stop(self) -> None:
        self.notifier.detach()
        if self.client is not None:
            await self.client.close()
        if self._connection is not None:
            await self._connection
        self.client = None
        self._connection = None


def build_adapter(settings: Settings, service: JobService, *, guild_ready_timeout: float = 2.0) -> DiscordAdapter:
    """The Discord adapter, its notifier registered with ``service``; ``start()`` connects it."""
    return DiscordAdapter(settings, service, guild_ready_timeout=guild_ready_timeout)
