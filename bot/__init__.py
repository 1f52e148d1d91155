"""videobot's core: what adapters and backends use. The public API is re-exported here.

Adapters build a ``VideoRequest`` (``parse_request`` / ``build_request``) and an ``Origin``,
hand them to ``JobService``, and implement ``Notifier``; backends implement ``Backend``. The job
entity and its states (``Job``, ``JobState``) are re-exported from ``storage``, so adapters never
import it themselves.
"""

from bot.backends.base import Backend
from bot.errors import BackendError, InvalidRequest, JobNotFound, LimitExceeded, NotAllowed, VideobotError
from bot.grammar import HELP_TEXT, build_request, parse_request
from bot.models import Clip, ClipInfo, GenerationSpec, ImageInput, Mode, Origin, Quality, Resolution, VideoRequest
from bot.notifier import DeliveryCheckpoint, Notifier, ProgressUpdate, Stage, StatusMessage
from storage.tables import Job, JobState

__all__ = [
    "HELP_TEXT",
    "Backend",
    "BackendError",
    "Clip",
    "ClipInfo",
    "DeliveryCheckpoint",
    "GenerationSpec",
    "ImageInput",
    "InvalidRequest",
    "Job",
    "JobNotFound",
    "JobState",
    "LimitExceeded",
    "Mode",
    "NotAllowed",
    "Notifier",
    "Origin",
    "ProgressUpdate",
    "Quality",
    "Resolution",
    "Stage",
    "StatusMessage",
    "VideoRequest",
    "VideobotError",
    "build_request",
    "parse_request",
]
