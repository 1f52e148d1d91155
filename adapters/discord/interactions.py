"""The two shapes every videobot interaction takes: starting a job, or answering privately.

Both acknowledge first: Discord drops an interaction not answered within 3 seconds, and an image
download or a busy database can take longer than that. Refusals are ephemeral, so only the
person who asked sees them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

import discord

from adapters.discord import render
from adapters.discord.origins import origin_from_interaction
from bot import Job
from bot.errors import LimitExceeded, VideobotError
from bot.models import Origin

if TYPE_CHECKING:
    from adapters.discord.client import VideobotClient

log = logging.getLogger(__name__)


def bot_of(interaction: discord.Interaction) -> VideobotClient:
    return cast("VideobotClient", interaction.client)


async def refusal_text(bot: VideobotClient, origin: Origin, error: VideobotError) -> str:
    """The error's own words; a quota refusal adds the person's usage (the reset time is in both)."""
    usage = await bot.service.usage_text(origin) if isinstance(error, LimitExceeded) else None
    return render.refusal(str(error), usage)


async def start_job(interaction: discord.Interaction, create: Callable[[Origin], Awaitable[Job]]) -> Job | None:
    """Defer publicly, then make the job; its status message replaces the "thinking…" response.

    A refusal removes the public placeholder and answers ephemerally instead: a deferred
    response keeps the visibility it was deferred with, so it cannot itself turn private.
    """
    await interaction.response.defer(thinking=True)
    bot = bot_of(interaction)
    origin = origin_from_interaction(interaction, bot.service.limits.current())
    try:
        with bot.pending.track(interaction):
            job = await create(origin)
    except VideobotError as error:
        text = await refusal_text(bot, origin, error)
        with contextlib.suppress(discord.HTTPException):
            await interaction.delete_original_response()
        await interaction.followup.send(text, ephemeral=True)
        return None
    if job.status_ref is None:
        # the status message could not be made (a platform hiccup); the job runs regardless
        await interaction.edit_original_response(content=render.accepted(job))
    return job


async def answer_privately(interaction: discord.Interaction, produce: Callable[[Origin], Awaitable[str]]) -> None:
    """Defer ephemerally, then show ``produce``'s text, or the refusal, to the asker alone."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    bot = bot_of(interaction)
    origin = origin_from_interaction(interaction, bot.service.limits.current())
    try:
        text = await produce(origin)
    except VideobotError as error:
        text = await refusal_text(bot, origin, error)
    await interaction.edit_original_response(content=render.shorten_message(text))
