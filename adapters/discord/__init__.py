"""The Discord platform: slash commands, mentions, job threads and buttons, on discord.py.

``build_adapter(settings, service)`` registers the ``DiscordNotifier`` with the core and returns
the adapter; ``await adapter.start()`` logs in and connects, ``await adapter.stop()`` leaves.

    client.py        the discord.py client (intents, command sync) and the adapter around it
    commands.py      /video with typed options; /video-status, -cancel, -usage, -help
    mentions.py      "@videobot a fox running --duration 8" with an optional image
    views.py         Cancel / Reroll / Extend / Retry buttons that survive restarts
    interactions.py  defer first, then start a job or answer privately
    origins.py       who asked and where; the attached image
    notifier.py      status message, progress edits, delivery within the upload limit
    render.py        the words of every message
"""

from adapters.discord.client import DiscordAdapter, VideobotClient, build_adapter
from adapters.discord.notifier import DiscordNotifier

__all__ = ["DiscordAdapter", "DiscordNotifier", "VideobotClient", "build_adapter"]
