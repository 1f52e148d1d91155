"""Acks first under load: while a request is being acked, the runner and the database thread
start no new background work, and they go on once it is answered. No timing is asserted: each
test holds the gate as long as it likes (``max_wait_s`` far beyond the test's timeout)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bot.foreground import Foreground
from bot.grammar import parse_request
from tests.conftest import webhook_origin

pytestmark = pytest.mark.timeout(60)

SMALL = '[defaults]\nresolutions = ["832x480"]\nuser_concurrent_jobs = 0\nuser_daily_jobs = 0\n'


async def _spin(times: int = 50) -> None:
    """Let every other task run ``times`` turns of the loop (and the database thread a moment)."""
    for _ in range(times):
        await asyncio.sleep(0.001)


def test_background_work_goes_on_at_once_when_nothing_is_being_acked() -> None:
    turn = Foreground().turn()
    with pytest.raises(StopIteration):  # finished without giving the loop a turn
        turn.send(None)


async def test_background_work_waits_while_an_ack_is_served_and_goes_on_after() -> None:
    gate = Foreground(quiet_s=0, max_wait_s=3600)
    with gate.serving():
        waiting = asyncio.create_task(gate.turn())
        await _spin()
        assert gate.holding and not waiting.done()
    await waiting
    assert not gate.holding


async def test_an_accepted_connection_holds_background_work_before_its_request_is_read() -> None:
    gate = Foreground(quiet_s=3600, max_wait_s=3600)
    gate.arrived()
    waiting = asyncio.create_task(gate.turn())
    await _spin()
    assert gate.holding and not waiting.done()
    waiting.cancel()


async def test_an_ack_served_on_another_threads_loop_holds_background_work_until_answered() -> None:
    gate = Foreground(quiet_s=0, max_wait_s=3600)
    served, answered = threading.Event(), threading.Event()
    loop = asyncio.get_running_loop()

    def serve() -> None:  # the Slack adapter's ack thread
        with gate.serving_from_thread(loop):
            served.set()
            answered.wait()

    ack_thread = threading.Thread(target=serve)
    ack_thread.start()
    await asyncio.to_thread(served.wait)
    waiting = asyncio.create_task(gate.turn())
    await _spin()
    assert gate.holding and not waiting.done()
    answered.set()
    await asyncio.to_thread(ack_thread.join)
    await waiting
    assert not gate.holding


def test_a_busy_spell_holds_background_work_for_max_wait_at_most() -> None:
    gate = Foreground(quiet_s=0, max_wait_s=0)
    with gate.serving():
        assert gate.busy and not gate.holding
        with pytest.raises(StopIteration):
            gate.turn().send(None)


async def test_the_runner_starts_no_step_while_an_ack_is_in_flight(make_core, receiver) -> None:
    core = await make_core(SMALL)
    gate = Foreground(quiet_s=0, max_wait_s=3600)
    core.service.foreground = core.service.db.foreground = gate

    with gate.serving():
        request = parse_request("a fox --duration 1 --resolution 832x480")
        job = await core.service.submit(request, webhook_origin(receiver))
        await _spin(200)
        assert (await core.service.status(job.id or 0)).state == "queued"
        assert {e["event"] for e in receiver.for_job(job.id)} <= {"accepted"}  # no progress: no step began

    await receiver.wait_for(job.id, "delivered", 30)
    for _ in range(200):
        if (await core.service.status(job.id or 0)).job_state.terminal:
            break
        await asyncio.sleep(0.05)
    assert (await core.service.status(job.id or 0)).state == "succeeded"


async def test_the_database_thread_answers_a_person_but_holds_background_queries(make_core) -> None:
    core = await make_core(SMALL, start=False)
    db = core.service.db
    db.foreground = gate = Foreground(quiet_s=0, max_wait_s=3600)
    done: list[str] = []

    with gate.serving():
        background = asyncio.create_task(db.run(done.append, "background"))
        await _spin(5)
        await db.interactive(done.append, "person")
        await _spin()
        assert done == ["person"] and not background.done()
    await background
    assert done == ["person", "background"]
