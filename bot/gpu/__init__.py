"""Local GPU generation: Wan through diffusers, in process or as a worker serving the provider API.

Needs the optional ``gpu`` extra (torch, diffusers, transformers, ...); the rest of videobot
never imports this package unless ``VIDEOBOT_BACKEND=diffusers`` or ``videobot worker`` asks
for it. Names load on first use, so ``import bot.gpu`` stays cheap and a missing extra is
reported with the install line instead of a bare ``ModuleNotFoundError``.

- ``DiffusersBackend``  the Backend port in the bot's process (``backend.py``)
- ``DiffusersGenerator`` the Generator port the provider server runs (``generator.py``)
- ``LoadOptions``, ``Offload``, ``load_wan``  loading and GPU options (``pipeline.py``)
- ``Preset``, ``plan_generation``  the request-to-model table (``specs.py``, torch-free)
- ``run_worker``, ``start_worker``  ``videobot worker`` (``worker.py``)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.gpu.backend import DiffusersBackend
    from bot.gpu.generator import DiffusersGenerator
    from bot.gpu.pipeline import LoadOptions, Offload, load_wan
    from bot.gpu.specs import Preset, plan_generation
    from bot.gpu.worker import run_worker, start_worker

_EXPORTS = {
    "DiffusersBackend": "bot.gpu.backend",
    "DiffusersGenerator": "bot.gpu.generator",
    "LoadOptions": "bot.gpu.pipeline",
    "Offload": "bot.gpu.pipeline",
    "load_wan": "bot.gpu.pipeline",
    "Preset": "bot.gpu.specs",
    "plan_generation": "bot.gpu.specs",
    "run_worker": "bot.gpu.worker",
    "start_worker": "bot.gpu.worker",
}
_EXTRA = {"torch", "diffusers", "transformers", "accelerate", "tokenizers", "ftfy", "peft", "psutil"}

__all__ = [
    "DiffusersBackend",
    "DiffusersGenerator",
    "LoadOptions",
    "Offload",
    "Preset",
    "load_wan",
    "plan_generation",
    "run_worker",
    "start_worker",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bot.gpu' has no attribute {name!r}")
    try:
        return getattr(import_module(module), name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in _EXTRA:
            raise ImportError(
                f"the local GPU backend needs the gpu extra: pip install 'videobot[gpu]' ({exc.name} is missing)"
            ) from exc
        raise
