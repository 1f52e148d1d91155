"""The job buttons: Cancel on the status message, Reroll and Extend on the clip, Retry on a failure.

Each is a ``DynamicItem`` whose custom_id carries its action and job id
(``videobot:reroll:42``). One registration in ``setup_hook`` serves every job's buttons, and
because nothing but the custom_id is needed, buttons posted before a restart keep working.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any

import discord

from adapters.discord import render
from adapters.discord.interactions import answer_privately, bot_of, start_job
from bot import Job
from bot.models import Origin
from bot.service import JobService

CUSTOM_ID = re.compile(r"videobot:(?P<action>cancel|reroll|extend|retry):(?P<job_id>[0-9]+)")
EXTEND_SECONDS = 5

_LOOKS: dict[str, tuple[str, str, discord.ButtonStyle]] = {
    "cancel": ("Cancel", "✖️", discord.ButtonStyle.danger),
    "reroll": ("Reroll", "🎲", discord.ButtonStyle.secondary),
    "extend": (f"Extend +{EXTEND_SECONDS} s", "⏩", discord.ButtonStyle.secondary),
    "retry": ("Retry", "🔁", discord.ButtonStyle.primary),
}


class JobButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=CUSTOM_ID):
    def __init__(self, action: str, job_id: int) -> None:
        label, emoji, style = _LOOKS[action]
        super().__init__(
            discord.ui.Button(label=label, emoji=emoji, style=style, custom_id=f"videobot:{action}:{job_id}")
        )
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> JobButton:
        return cls(match["action"], _job_number(match["job_id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        service = bot_of(interaction).service
        job_id = self.job_id
        if self.action == "cancel":
            await answer_privately(interaction, lambda by: cancel_text(service, job_id, by))
            return
        starts: dict[str, Callable[[int, Origin], Awaitable[Job]]] = {
            "reroll": service.reroll,
            "retry": service.retry,
            "extend": functools.partial(service.extend, seconds=EXTEND_SECONDS),
        }
        start = starts[self.action]
        await start_job(interaction, lambda by: start(job_id, by))


async def cancel_text(service: JobService, job_id: int, by: Origin) -> str:
    return render.canceled_reply(await service.cancel(job_id, by))


def _view(job_id: int, *actions: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in actions:
        view.add_item(JobButton(action, job_id))
    return view


def status_view(job_id: int) -> discord.ui.View:
    return _view(job_id, "cancel")


def delivery_view(job_id: int) -> discord.ui.View:
    return _view(job_id, "reroll", "extend")


def failure_view(job_id: int) -> discord.ui.View:
    return _view(job_id, "retry")


def view_job_ids(message: discord.Message) -> set[int]:
    """The job ids that a message's videobot buttons belong to."""
    ids: set[int] = set()
    for row in message.components:
        for child in getattr(row, "children", []):
            match = CUSTOM_ID.fullmatch(getattr(child, "custom_id", None) or "")
            if match:
                ids.add(_job_number(match["job_id"]))
    return ids


def _job_number(digits: str) -> int:
    """The job id a custom_id carries; one too long for any job becomes 0, which the service
    answers as "no such job" instead of converting thousands of digits."""
    return int(digits) if len(digits) <= 19 else 0
