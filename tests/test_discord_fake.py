"""The fake Discord speaks well enough for the unmodified discord.py client to live on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import discord
import pytest
from discord import app_commands

from tests.fakes.discord_server import DEFERRED_CHANNEL_MESSAGE, FakeDiscord, running_fake_discord


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with running_fake_discord() as server:
        yield server


class _PlainBot(discord.Client):
    """A minimal client with one slash command that only defers: what the fake must carry."""

    def __init__(self, guild_id: int) -> None:
        super().__init__(intents=discord.Intents(guilds=True, guild_messages=True), guild_ready_timeout=0.05)
        self.tree = app_commands.CommandTree(self)
        self.guild_id = guild_id
        self.deferred = asyncio.Event()

        @self.tree.command(name="ping", description="defer and then say pong")
        async def ping(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            self.deferred.set()
            await interaction.followup.send("pong")

    async def setup_hook(self) -> None:
        guild = discord.Object(self.guild_id)
        self.tree.copy_global_to(guild=guild)
        await self.tree.sync(guild=guild)


async def test_real_client_connects_syncs_and_defers_an_interaction(fake: FakeDiscord) -> None:
    guild = fake.add_guild()
    channel = fake.add_text_channel(guild)
    alice = fake.add_user("alice")
    fake.add_member(guild, alice)
    client = _PlainBot(guild.id)
    await client.login(fake.bot_token)
    task = asyncio.create_task(client.connect(reconnect=False))
    try:
        await asyncio.wait_for(client.wait_until_ready(), 5)
        assert client.user is not None and client.user.id == fake.bot.id
        cached = client.get_guild(guild.id)
        assert cached is not None and cached.get_channel(channel.id) is not None
        assert [c["name"] for c in fake.commands[str(guild.id)]] == ["ping"]

        interaction = await fake.slash_command(channel, alice, "ping")
        await asyncio.wait_for(interaction.responded.wait(), 3)
        assert interaction.response_type == DEFERRED_CHANNEL_MESSAGE
        await fake.wait_for(lambda: (fake.original_response(interaction) or {}).get("content") == "pong")
        assert all(call.status < 400 for call in fake.calls), [(c.method, c.path, c.status) for c in fake.calls]
        assert all(call.authorized for call in fake.calls if not call.path.startswith(("/interactions", "/webhooks")))
    finally:
        await client.close()
        await task


async def test_gateway_rejects_a_wrong_token(fake: FakeDiscord) -> None:
    fake.add_guild()
    client = discord.Client(intents=discord.Intents(guilds=True))
    with pytest.raises(discord.LoginFailure):
        await client.login("not-the-token")
    await client.close()


class _Listener(discord.Client):
    """Records every message the gateway delivers, as the bot sees it."""

    def __init__(self) -> None:
        super().__init__(intents=discord.Intents(guilds=True, guild_messages=True), guild_ready_timeout=0.05)
        self.seen: list[discord.Message] = []

    async def on_message(self, message: discord.Message) -> None:
        self.seen.append(message)


async def test_without_the_content_intent_only_mentions_arrive_with_their_text(fake: FakeDiscord) -> None:
    guild = fake.add_guild()
    channel = fake.add_text_channel(guild)
    alice = fake.add_user("alice")
    fake.add_member(guild, alice)
    client = _Listener()
    await client.login(fake.bot_token)
    task = asyncio.create_task(client.connect(reconnect=False))
    try:
        await asyncio.wait_for(client.wait_until_ready(), 5)
        await fake.post_user_message(channel, alice, "just chatting")
        await fake.post_user_message(channel, alice, f"{fake.mention()} a fox")
        async with asyncio.timeout(5):
            while len(client.seen) < 2:
                await asyncio.sleep(0.01)
        assert [m.content for m in client.seen] == ["", f"{fake.mention()} a fox"]
        assert client.user in client.seen[1].mentions
    finally:
        await client.close()
        await task


async def test_a_late_interaction_answer_is_refused_like_discord_does(fake: FakeDiscord) -> None:
    fake.callback_deadline_s = 0.0
    guild = fake.add_guild()
    channel = fake.add_text_channel(guild)
    interaction = await fake.slash_command(channel, fake.add_user("bob"), "video")
    client = discord.Client(intents=discord.Intents.none())
    await client.login(fake.bot_token)
    try:
        route = discord.http.Route(
            "POST", "/interactions/{id}/{token}/callback", id=interaction.id, token=interaction.token
        )
        with pytest.raises(discord.NotFound) as refused:
            await client.http.request(route, json={"type": 5})
        assert refused.value.code == 10062
    finally:
        await client.close()
