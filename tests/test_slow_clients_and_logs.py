"""Slow clients (issue 14.10) and forged log lines (issue 14.9, the logging half)."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from pathlib import Path

import pytest

from bot import serving
from bot.logs import OneLineFormatter, RedactSecrets, configure_logging, escape_controls

pytestmark = pytest.mark.timeout(60)


async def _closed_within(port: int, trickle: list[bytes], seconds: float) -> float:
    """Open a connection, send ``trickle`` one piece every 0.2 s (a slow-loris) and return how
    long the server kept the socket open; fail if it is still open after ``seconds``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        for piece in trickle:
            if reader.at_eof():
                break
            writer.write(piece)
            try:
                await writer.drain()
            except ConnectionError:
                break
            try:
                if await asyncio.wait_for(reader.read(4096), 0.2) == b"" or reader.at_eof():
                    break
            except TimeoutError:
                pass
            assert time.monotonic() - started < seconds, "the slow client is still connected"
        else:
            raise AssertionError("the trickle ended before the server closed the connection")
        await asyncio.wait_for(reader.read(), seconds)  # the rest of any answer, then EOF
    finally:
        writer.close()
    return time.monotonic() - started


def _header_trickle() -> list[bytes]:
    head = b"POST /slack/events HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 400
    return [bytes([b]) for b in head]


def _body_trickle(path: bytes) -> list[bytes]:
    head = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
    return [head] + [b"x"] * 5000


async def test_slack_http_mode_closes_a_slow_loris_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serving, "HEADER_TIMEOUT_S", 1.0)
    monkeypatch.setattr(serving, "BODY_TIMEOUT_S", 1.0)
    from tests.test_slack_e2e import running_bot

    async with running_bot(tmp_path) as slack:
        port = slack.adapter.port
        held = await _closed_within(port, _header_trickle(), 10)
        assert 0.8 <= held < 4, held  # headers never finished: closed at the header deadline
        held = await _closed_within(port, _body_trickle(b"/slack/events"), 10)
        assert 0.8 <= held < 4, held  # headers done, body trickled: closed at the body deadline
        # and the server still answers a normal request
        assert (await slack.command("help")).status == 200


async def test_the_job_api_and_health_port_close_slow_clients_too(
    make_core, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serving, "HEADER_TIMEOUT_S", 1.0)
    monkeypatch.setattr(serving, "BODY_TIMEOUT_S", 1.0)
    from adapters.webhook import job_routes

    core = await make_core(start=False)
    port = await core.serve_ops("127.0.0.1", 0, job_routes(core.service, "api-key-123456"))
    assert await _closed_within(port, _header_trickle(), 10) < 4
    assert await _closed_within(port, _body_trickle(b"/v1/jobs"), 10) < 4  # the streamed body too


# -- 14.9: log lines ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hostile",
    [
        "task-1\n2026-01-01 00:00:00 INFO bot.runner: job 9: delivered",
        "task-1\r2026-01-01 INFO forged",
        "a fox\u2028INFO forged",
        "\x1b[2J\x1b[31mred",
        "tab\there\x00nul\x85nel",
    ],
)
def test_task_ids_and_prompts_never_forge_a_log_line(hostile: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", ["sk-secret-123456"])
    try:
        logging.getLogger("bot.runner").info("job %s: submitted as task %s", 7, hostile)
        try:
            raise ValueError(f"provider said {hostile}")
        except ValueError:
            logging.getLogger("bot.runner").exception("job %s: %s", 7, hostile)
    finally:
        logging.getLogger().handlers.clear()
    err = capsys.readouterr().err
    lines = err.splitlines()
    records = [line for line in lines if not line.startswith("    ")]
    assert len(records) == 2, err  # one line per record; the traceback's lines are indented
    assert all(ch not in err for ch in ("\r", "\x1b", "\x00", "\u2028", "\x85"))
    assert "\\n" in err or "\\r" in err or "\\u2028" in err or "\\x1b" in err or "\\t" in err


def test_escape_controls_keeps_ordinary_text() -> None:
    assert escape_controls("un renard 🦊 dans la neige — “snow”") == "un renard 🦊 dans la neige — “snow”"
    assert escape_controls("a\nb\x1bc") == "a\\nb\\x1bc"


def test_secrets_are_still_masked_by_the_one_line_formatter() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter("%(message)s"))
    handler.addFilter(RedactSecrets(["sk-secret-123456"]))
    logger = logging.getLogger("test.onelines")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("key sk-secret-123456\nforged")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "key ***\\nforged\n"


