"""Logging set-up: one line per record, and every known secret masked wherever it appears.

Tokens can reach a log line by accident (an exception that echoes a URL, a library's debug
output); the filter masks them on every handler, so nothing downstream ever sees them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

MASK = "***"


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        text = record.exc_text or ""
        for secret in self._secrets:
            message = message.replace(secret, MASK)
            text = text.replace(secret, MASK)
        record.msg, record.args = message, ()
        record.exc_text = text or None
        return True


def configure_logging(level: str, secrets: Iterable[str]) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "apscheduler", "aiohttp.access", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
