"""videobot's core: what adapters and backends use. The public API is re-exported here.

Adapters build a ``VideoRequest`` (``parse_request`` / ``build_request``) and an ``Origin``,
hand them to ``JobService``, and implement ``Notifier``; backends implement ``Backend``. The job
entity and its states (``Job``, ``JobState``) and the admin page's read-only reports
(``JobReports``, ``JobFilter``) are re-exported from ``storage``, so adapters never import it.
"""

from bot.backends.base import Backend
from bot.errors import (
    BackendError,
    InvalidRequest,
    JobNotFound,
    LimitExceeded,
    NotAllowed,
    VideobotError,
)
from bot.grammar import HELP_TEXT, build_request, parse_request
from bot.models import (
    Clip,
    ClipInfo,
    GenerationSpec,
    ImageInput,
    Mode,
    Origin,
    Quality,
    Resolution,
    VideoRequest,
)
from bot.notifier import (
    DeliveryCheckpoint,
    Notifier,
    ProgressUpdate,
    Stage,
    StatusMessage,
)
from storage.reports import JobFilter, JobReports
from storage.tables import ACTIVE_STATES, Job, JobState, utcnow

__all__ = [
    "ACTIVE_STATES",
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
    "JobFilter",
    "JobNotFound",
    "JobReports",
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
    "utcnow",
]
