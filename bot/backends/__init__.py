"""Generation backends behind one port; ``build_backend`` picks one from the settings."""

from __future__ import annotations

from bot.backends.base import Backend

__all__ = ["Backend"]
