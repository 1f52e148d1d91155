"""Who asked and where, from a Discord interaction or message; and the image they attached.

A thread counts as its parent channel for limits (``channel_id`` is the parent, ``thread_id``
the thread), so a channel's limits and allow-list also cover the threads opened in it.
"""

from __future__ import annotations

import asyncio
import time

import discord

from bot.errors import InvalidRequest
from bot.images import load_image
from bot.limits import LimitsConfig
from bot.models import ImageInput, Origin

PLATFORM = "discord"

SOURCE_INTERACTION = "interaction"
SOURCE_MENTION = "mention"


def _place(channel: object, fallback_id: int) -> tuple[str, str | None]:
    if isinstance(channel, discord.Thread):
        return str(channel.parent_id), str(channel.id)
    return str(getattr(channel, "id", fallback_id)), None


def _is_admin(limits: LimitsConfig, permissions: discord.Permissions) -> bool:
    """Manage Server makes an admin only where the limits file opts in; listed ids are checked by the core."""
    return limits.discord_manage_server_is_admin and permissions.manage_guild


def origin_from_interaction(interaction: discord.Interaction, limits: LimitsConfig) -> Origin:
    """The interaction's token and application id ride along, for editing the status within 15 minutes."""
    channel_id, thread_id = _place(interaction.channel, interaction.channel_id or 0)
    return Origin(
        platform=PLATFORM,
        workspace_id=str(interaction.guild_id),
        channel_id=channel_id,
        thread_id=thread_id,
        user_id=str(interaction.user.id),
        user_name=interaction.user.display_name,
        is_admin=_is_admin(limits, interaction.permissions),
        extra={
            "source": SOURCE_INTERACTION,
            "interaction_id": str(interaction.id),
            "interaction_token": interaction.token,
            "application_id": str(interaction.application_id),
            "interaction_at": f"{time.time():.3f}",
            "upload_limit": str(interaction.filesize_limit),
        },
    )


def origin_from_message(message: discord.Message, limits: LimitsConfig) -> Origin:
    channel_id, thread_id = _place(message.channel, message.channel.id)
    author = message.author
    permissions = author.guild_permissions if isinstance(author, discord.Member) else discord.Permissions.none()
    return Origin(
        platform=PLATFORM,
        workspace_id=str(message.guild.id if message.guild else 0),
        channel_id=channel_id,
        thread_id=thread_id,
        user_id=str(author.id),
        user_name=author.display_name,
        is_admin=_is_admin(limits, permissions),
        extra={"source": SOURCE_MENTION, "message_id": str(message.id)},
    )


def pick_attachment(attachments: list[discord.Attachment]) -> discord.Attachment | None:
    """The first image; failing that the first file of any kind, so a wrong file is refused, not ignored."""
    for attachment in attachments:
        if (attachment.content_type or "").startswith("image/"):
            return attachment
    return attachments[0] if attachments else None


def pick_keyframes(
    attachments: list[discord.Attachment],
) -> tuple[discord.Attachment | None, discord.Attachment | None]:
    """The start image and, when a second image is attached, the end image (in message order)."""
    first = pick_attachment(attachments)
    images = [a for a in attachments if (a.content_type or "").startswith("image/") and a is not first]
    return first, (images[0] if first is not None and images else None)


async def image_from_attachment(attachment: discord.Attachment, limits: LimitsConfig) -> ImageInput:
    """Download and check an attached image; an oversized file is refused before it is downloaded."""
    if attachment.size > limits.max_image_bytes:
        raise InvalidRequest(
            f"{attachment.filename} is {attachment.size / 2**20:.1f} MB; images may be at most "
            f"{limits.max_image_bytes / 2**20:.0f} MB."
        )
    try:
        data = await attachment.read()
    except discord.HTTPException as exc:
        raise InvalidRequest(f"I couldn't download {attachment.filename}; please attach it again.") from exc
    return await asyncio.to_thread(
        load_image, data, max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels
    )
