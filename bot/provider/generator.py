"""The Generator port behind our own provider-API server (``bot.provider.server``).

The simulator and the GPU worker are the same REST service (the provider contract: submit,
poll, download) over different generators: one draws synthetic clips, the other runs the model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from bot.models import GenerationSpec

ProgressCallback = Callable[[float], None]
"""Called with a fraction in [0, 1] as generation advances; safe to call from any thread."""


class Generator(Protocol):
    name: str

    def validate(self, spec: GenerationSpec) -> None:
        """Raise ``InvalidRequest`` (answered as HTTP 400) for parameters the model cannot do."""
        ...

    async def generate(
        self,
        spec: GenerationSpec,
        dest: Path,
        on_progress: ProgressCallback,
        cancel: asyncio.Event,
    ) -> None:
        """Write an mp4 to ``dest``. Stop early (raising ``asyncio.CancelledError``) once
        ``cancel`` is set; raise ``BackendError`` for a failed generation."""
        ...

    def health(self) -> dict[str, Any]:
        """What the health endpoint reports about this generator (model, device, memory)."""
        ...
