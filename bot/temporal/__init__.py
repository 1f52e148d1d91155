"""The Temporal engine (``VIDEOBOT_ENGINE=temporal``): a workflow per job, steps as activities.

Needs the optional ``temporal`` extra (``temporalio``). Names load on first use, like
``bot.gpu``, so the embedded engine never imports the SDK.

- ``TemporalEngine``  the Dispatcher seam and serve's workers (``_engine.py``)
- ``JobWorkflow``, ``JobInput``, ``workflow_id``  the workflow (``_workflow.py``)
- ``JobSteps``  the provider and chat activities over the runner's steps (``_activities.py``)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.temporal._activities import JobSteps
    from bot.temporal._engine import TaskQueues, TemporalEngine, connect, fairness_key
    from bot.temporal._workflow import JobInput, JobWorkflow, workflow_id

_EXPORTS = {
    "JobSteps": "bot.temporal._activities",
    "TaskQueues": "bot.temporal._engine",
    "TemporalEngine": "bot.temporal._engine",
    "connect": "bot.temporal._engine",
    "fairness_key": "bot.temporal._engine",
    "JobInput": "bot.temporal._workflow",
    "JobWorkflow": "bot.temporal._workflow",
    "workflow_id": "bot.temporal._workflow",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bot.temporal' has no attribute {name!r}")
    try:
        return getattr(import_module(module), name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "temporalio":
            raise ImportError("VIDEOBOT_ENGINE=temporal needs the temporal extra: pip install 'videobot[temporal]'") from exc
        raise
