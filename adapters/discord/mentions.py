"""``@videobot a fox running --duration 8``: a mention (with an optional image) starts a job.

Two images make a keyframed clip: the first attached is where it starts, the second where it ends.

Discord delivers the content of messages that mention the bot even without the privileged
message-content intent, so the bot never asks for it. The job's thread opens on the person's
message. Refusals are replies (a mention has no private channel back), and if the bot cannot
post in the channel at all, a direct message.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import discord

from adapters.discord import render
from adapters.discord.interactions import refusal_text
from adapters.discord.origins import image_from_attachment, origin_from_message, pick_keyframes
from bot.errors import VideobotError
from bot.grammar import parse_request

if TYPE_CHECKING:
    from adapters.discord.client import VideobotClient

log = logging.getLogger(__name__)


def request_text(content: str, bot_id: int) -> str | None:
    """The message without the bot's mention; None if the bot was not mentioned by name.

    A reply to the bot also lists it in ``mentions`` without the ``<@id>`` in the text: that is
    a conversation, not a request, so only a written mention counts.
    """
    pattern = re.compile(rf"<@!?{bot_id}>")
    if not pattern.search(content):
        return None
    return " ".join(pattern.sub(" ", content).split())


async def handle_mention(bot: VideobotClient, message: discord.Message) -> None:
    if message.author.bot or message.guild is None or bot.user is None:
        return
    text = request_text(message.content, bot.user.id)
    if text is None:
        return
    limits = bot.service.limits.current()
    if text.lower() in ("", "help") and not message.attachments:
        await _reply(message, render.help_text(bot.service.help_text(origin_from_message(message, limits))))
        return
    origin = origin_from_message(message, limits)
    try:
        parse_request(text)  # a mistake is answered before anything is downloaded
        start, end = pick_keyframes(message.attachments)
        image = await image_from_attachment(start, limits) if start is not None else None
        end_image = await image_from_attachment(end, limits) if end is not None else None
        request = parse_request(text, image=image, end_image=end_image)
        await bot.service.submit(request, origin, dedup_key=f"discord:message:{message.id}")
    except VideobotError as error:
        await _reply(message, await refusal_text(bot, origin, error))


async def _reply(message: discord.Message, text: str) -> None:
    try:
        await message.reply(text, mention_author=False, allowed_mentions=discord.AllowedMentions.none())
        return
    except discord.Forbidden:
        log.info("cannot reply in channel %s; telling the person directly", message.channel.id)
    try:
        await message.author.send(text)
    except discord.HTTPException:
        log.warning("could not tell user %s why their request was refused", message.author.id)
