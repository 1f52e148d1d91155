"""Logging set-up: one line per record, and every known secret masked wherever it appears.

Tokens can reach a log line by accident (an exception that echoes a URL, a library's debug
output); the filter masks them on every handler, so nothing downstream ever sees them.

A message is one line whatever it carries: task ids from a provider and prompts from people may
hold newlines, carriage returns or terminal escapes, which would forge log lines or rewrite a
terminal. ``escape_controls`` writes every control character as an escape (``\\n``, ``\\x1b``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

MASK = "***"

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` on one line: each control character written as an escape."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), m.group().encode("unicode_escape").decode("ascii")), text)


class OneLineFormatter(logging.Formatter):
    """Formats the message with its control characters escaped; a traceback keeps its lines,
    each indented, so no line of it can pass for a record of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        original = record.exc_text
        if record.exc_info and not original:
            original = self.formatException(record.exc_info)
        if original:
            record.exc_text = "\n".join("    " + escape_controls(line) for line in original.splitlines())
        try:
            return super().format(record)
        finally:
            record.exc_text = original


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
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "apscheduler", "aiohttp.access", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
