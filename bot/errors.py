"""The errors videobot's callers handle, each carrying a message written for the end user.

    VideobotError
    ├── InvalidRequest      the request itself is wrong (bad option, empty prompt, not an image)
    ├── LimitExceeded       a quota, budget, cooldown or queue cap refuses it for now
    ├── NotAllowed          the person may not do this (another user's job, a closed channel)
    ├── JobNotFound         no such job
    ├── ConfigurationError  a setting is missing or wrong; the message names it
    ├── StoreUnavailable    the database refuses writes for now (read-only, disk full); nothing was saved
    └── BackendError        the generator failed; ``retryable`` says whether trying again may help

Adapters show ``str(error)`` to the person as it is: no traceback, no secret ever reaches it.
"""

from __future__ import annotations

from datetime import datetime


class VideobotError(Exception):
    """Base of every error whose message is meant for the person who asked."""

    @property
    def user_message(self) -> str:
        return str(self)


class InvalidRequest(VideobotError):
    """The request cannot be made as given; the message names the problem and the allowed values."""


class LimitExceeded(VideobotError):
    """A limit refuses the request for now; ``resets_at`` says when it may succeed."""

    def __init__(self, message: str, *, resets_at: datetime | None = None) -> None:
        super().__init__(message)
        self.resets_at = resets_at


class NotAllowed(VideobotError):
    """The person may not act on this job or in this place."""


class JobNotFound(VideobotError):
    """No job has that id."""


class ConfigurationError(VideobotError):
    """A setting is missing or wrong; the message names the setting, never its value."""


class StoreUnavailable(VideobotError):
    """The database cannot be written just now; nothing was stored, so nothing was charged.

    ``reason`` is the store's own words (for logs and ``/healthz``), never shown to the person.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(
            "Videos are temporarily unavailable: the bot cannot save jobs right now. "
            "Nothing was charged; please try again in a few minutes."
        )
        self.reason = reason


class BackendError(VideobotError):
    """The generation backend failed.

    ``retryable`` is True for transient faults (rate limits, 5xx, timeouts) where the same
    request may later succeed, False for a refusal of the request itself (4xx, a failed task).
    """

    def __init__(self, message: str, *, retryable: bool = False, status_code: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code
