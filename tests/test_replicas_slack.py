"""Slack across replicas: two `videobot serve` processes on one PostgreSQL database and one
Temporal dev server (``VIDEOBOT_ENGINE=temporal``), both in HTTP mode behind what a load
balancer would do, both talking to the fake Slack in this process, sharing one provider (the
simulator, its own process) and one data folder (the media volume replicas share).

- The same command or event reaching both (a platform retry, a duplicated delivery) makes one
  job, one status message and one clip.
- Cancel, Reroll and Extend pressed on a replica other than the one that took the command work.
- A replica killed with SIGKILL while it delivers: the other finishes the delivery (the chat
  activity is retried on its worker of ``<prefix>-chat``) and the clip is in the thread once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from bot.grammar import parse_request
from bot.images import load_image
from storage.engine import make_engine
from storage.repository import JobRepository
from storage.tables import Job, JobState
from tests.conftest import start_serve, subprocess_env, webhook_origin
from tests.fakes.slack_api import (
    APP_TOKEN,
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    block_action,
    form_body,
    interactive_body,
    mention_event,
    sign,
    slash_command,
)
from tests.temporal_server import temporal_address  # noqa: F401  (fixture)
from tests.test_crash_recovery import _free_port, _provider_tasks, simulator  # noqa: F401  (fixture)
from tests.test_images import TEAL, encode

pytestmark = pytest.mark.timeout(180)

OTHER_BOT_TOKEN = "xoxb-test-bot-token-2"
"""Replica b's token (the fake takes both): a call's token says which process made it."""
FAST = "--duration 1 --resolution 832x480"
GENERAL = "C0GENERAL"
LIMITS = '[defaults]\nresolutions = ["832x480"]\nuser_concurrent_jobs = 0\nuser_daily_jobs = 0\n'
FORM = "application/x-www-form-urlencoded"


class Replica:
    """One `videobot serve` process in Slack HTTP mode."""

    def __init__(self, name: str, tmp_path: Path, env: dict[str, str], token: str) -> None:
        self.name = name
        self.token = token
        self.slack_port = _free_port()
        self.ops_port = _free_port()
        self.env = {**env, "SLACK_BOT_TOKEN": token, "SLACK_PORT": str(self.slack_port),
                    "VIDEOBOT_HTTP_PORT": str(self.ops_port)}  # fmt: skip
        self.log = tmp_path / f"serve-{name}.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await start_serve(self.env, self.log, f"http://127.0.0.1:{self.ops_port}/healthz")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()

    async def send(self, body: str, content_type: str, headers: dict[str, str] | None = None) -> int:
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(
                f"http://127.0.0.1:{self.slack_port}/slack/events",
                content=body.encode(),
                headers={"Content-Type": content_type, **sign(body), **(headers or {})},
            )
        return answer.status_code


@dataclass
class Cluster:
    fake: FakeSlack
    a: Replica
    b: Replica
    repo: JobRepository
    simulator: str

    async def jobs(self) -> list[Job]:
        return sorted(await asyncio.to_thread(self.repo.recent, 100), key=lambda j: j.id or 0)

    async def wait_jobs(self, check: Callable[[list[Job]], bool], timeout: float = 60) -> list[Job]:
        deadline = time.monotonic() + timeout
        while not check(jobs := await self.jobs()):
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {r.name}\n{r.log.read_text()[-3000:]}" for r in (self.a, self.b))
                raise AssertionError(f"jobs now: {[(j.id, j.kind, j.state, j.error) for j in jobs]}\n{logs}")
            await asyncio.sleep(0.1)
        return jobs

    async def finished(self, count: int) -> list[Job]:
        return await self.wait_jobs(lambda jobs: len(jobs) >= count and all(j.job_state.terminal for j in jobs))

    def thread(self, job: Job) -> list[dict[str, Any]]:
        return self.fake.thread(job.channel_id, job.thread_id or "")

    def clips_in_thread(self, job: Job) -> list[dict[str, Any]]:
        """The bot's messages carrying this job's clip (its comment names the job) in its thread."""
        return [m for m in self.thread(job) if m.get("files") and f"#{job.id}:" in m.get("text", "")]


@pytest.fixture
async def cluster(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    postgres_url: str,
    temporal_address: str,  # noqa: F811
    simulator: str,  # noqa: F811
) -> AsyncIterator[Cluster]:
    """Two replicas in HTTP mode, or in Socket Mode when parametrized with "socket"."""
    socket_mode = getattr(request, "param", "http") == "socket"
    fake = await FakeSlack(bot_tokens=(BOT_TOKEN, OTHER_BOT_TOKEN)).start()
    (tmp_path / "videobot.toml").write_text(LIMITS)
    env = subprocess_env(
        tmp_path,  # one data folder: the media volume replicas share
        VIDEOBOT_LOG_LEVEL="INFO", VIDEOBOT_PROGRESS_INTERVAL="0.5", VIDEOBOT_HTTP_HOST="127.0.0.1",
        DATABASE_URL=postgres_url, VIDEOBOT_ENGINE="temporal", TEMPORAL_ADDRESS=temporal_address,
        TEMPORAL_TASK_QUEUE_PREFIX="replicas", TEMPORAL_HEARTBEAT_TIMEOUT="2",
        VIDEOBOT_BACKEND="http", WAN_API_BASE_URL=simulator,
        SLACK_SIGNING_SECRET=SIGNING_SECRET, SLACK_API_URL=fake.api_url,
    )  # fmt: skip
    if socket_mode:
        env["SLACK_APP_TOKEN"] = APP_TOKEN
    a, b = Replica("a", tmp_path, env, BOT_TOKEN), Replica("b", tmp_path, env, OTHER_BOT_TOKEN)
    engine = make_engine(postgres_url)
    try:
        await asyncio.gather(a.start(), b.start())
        yield Cluster(fake, a, b, JobRepository(engine), simulator)
    finally:
        await asyncio.gather(a.stop(), b.stop())
        engine.dispose()
        await fake.stop()


def _status_posts(fake: FakeSlack) -> list[Any]:
    return [c for c in fake.calls_to("chat.postMessage") if "— queued" in c.params.get("text", "")]


async def test_the_same_command_and_event_reaching_two_replicas_make_one_job_each_and_one_clip(
    cluster: Cluster,
) -> None:
    fake = cluster.fake
    command = form_body(slash_command(f"a heron taking off {FAST}", response_url=fake.response_url("cmd"),
                                      trigger_id="trigger-twice"))  # fmt: skip
    event = mention_event(f"a paper boat {FAST}", event_id="Ev0TWICE", ts="1699999999.000777")
    body = json.dumps(event)
    retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}

    answers = await asyncio.gather(
        cluster.a.send(command, FORM),
        cluster.b.send(command, FORM, retry),
        cluster.a.send(body, "application/json"),
        cluster.b.send(body, "application/json", retry),
    )

    assert answers == [200, 200, 200, 200]
    await _one_job_and_one_clip_each(cluster, ["slack:command:trigger-twice", "slack:event:Ev0TWICE"])


@pytest.mark.parametrize("cluster", ["socket"], indirect=True)
async def test_in_socket_mode_an_envelope_redelivered_to_the_other_replica_makes_no_second_job(
    cluster: Cluster,
) -> None:
    fake = cluster.fake
    await fake.wait_for(lambda: fake.sockets == 2)  # one connection each
    command = slash_command(f"a kite over the dunes {FAST}", response_url=fake.response_url("cmd"),
                            trigger_id="trigger-socket")  # fmt: skip
    event = mention_event(f"a paper boat {FAST}", event_id="Ev0SOCKET", ts="1699999999.000888")

    for connection in (0, 1):  # Slack hands an envelope to one connection, its redelivery maybe to another
        await fake.push({"envelope_id": f"env-cmd{connection}", "type": "slash_commands", "payload": command,
                         "accepts_response_payload": True}, to=connection)  # fmt: skip
        await fake.push({"envelope_id": f"env-ev{connection}", "type": "events_api", "payload": event,
                         "accepts_response_payload": False, "retry_attempt": connection,
                         "retry_reason": "timeout"}, to=connection)  # fmt: skip

    envelopes = ("env-cmd0", "env-cmd1", "env-ev0", "env-ev1")
    await fake.wait_for(lambda: all(fake.socket_ack(e) for e in envelopes))
    await _one_job_and_one_clip_each(cluster, ["slack:command:trigger-socket", "slack:event:Ev0SOCKET"])


async def _one_job_and_one_clip_each(cluster: Cluster, dedup_keys: list[str]) -> None:
    fake = cluster.fake
    await cluster.finished(len(dedup_keys))
    await asyncio.sleep(1.0)  # a second job would have been stored by now
    jobs = await cluster.jobs()
    assert sorted(j.dedup_key or "" for j in jobs) == sorted(dedup_keys)
    assert {j.job_state for j in jobs} == {JobState.SUCCEEDED}
    assert len(_status_posts(fake)) == len(dedup_keys)  # one status message a job
    assert len(fake.calls_to("files.completeUploadExternal")) == len(dedup_keys)
    for job in jobs:
        assert len(cluster.clips_in_thread(job)) == 1
    assert not fake.calls_to("response")  # nobody was told anything went wrong
    assert len(await _provider_tasks(cluster.simulator)) == len(dedup_keys)  # nothing made twice


async def test_cancel_reroll_and_extend_work_from_the_replica_that_did_not_take_the_command(
    cluster: Cluster,
) -> None:
    fake = cluster.fake
    hook = {"response_url": fake.response_url("buttons")}
    await cluster.a.send(form_body(slash_command(f"a long take [sim:hang] {FAST}")), FORM)
    [slow] = await cluster.wait_jobs(lambda jobs: len(jobs) == 1 and jobs[0].state == "running")

    await cluster.b.send(interactive_body(block_action("videobot_cancel", str(slow.id), **hook)), FORM)

    [slow] = await cluster.finished(1)
    assert slow.job_state is JobState.CANCELED
    await fake.wait_for(lambda: any(
        c.params.get("ts") == slow.status_ref and c.params.get("text", "").endswith("canceled")
        for c in fake.calls_to("chat.update")
    ))  # fmt: skip

    await cluster.a.send(form_body(slash_command(f"a lighthouse at night {FAST}")), FORM)
    _, clip = await cluster.finished(2)
    assert clip.job_state is JobState.SUCCEEDED
    under_clip = {"message_ts": "1700000000.999999", **hook}
    reroll_pressed = block_action("videobot_reroll", str(clip.id), user="U0BOB", **under_clip)
    await cluster.b.send(interactive_body(reroll_pressed), FORM)
    await cluster.b.send(interactive_body(block_action("videobot_extend", str(clip.id), **under_clip)), FORM)

    jobs = await cluster.finished(4)
    reroll, extend = jobs[2:]
    assert {(j.kind, j.parent_id, j.state) for j in (reroll, extend)} == {
        ("reroll", clip.id, "succeeded"), ("extend", clip.id, "succeeded"),
    }  # fmt: skip
    assert fake.calls_to("response") == []  # no refusal
    for job in (clip, reroll, extend):  # the clip, its reroll and its extension, once each, in their threads
        [posted] = cluster.clips_in_thread(job)
        assert posted["files"][0]["id"] == job.delivered_ref


async def test_a_replica_killed_mid_delivery_leaves_it_to_the_other_and_the_clip_is_posted_once(
    cluster: Cluster,
) -> None:
    fake = cluster.fake
    fake.stall("files.completeUploadExternal")  # Slack shares the file; the answer never arrives

    await cluster.a.send(form_body(slash_command(f"a fox in fresh snow {FAST}")), FORM)
    [held] = await fake.wait_for(lambda: fake.stalled, timeout=60)
    delivering, other = (cluster.a, cluster.b) if held.token == cluster.a.token else (cluster.b, cluster.a)
    delivering.kill()
    await delivering.process.wait()  # type: ignore[union-attr]

    [job] = await cluster.finished(1)
    assert job.job_state is JobState.SUCCEEDED, job.error
    [clip] = cluster.clips_in_thread(job)
    assert job.delivered_ref == clip["files"][0]["id"]
    assert len(fake.calls_to("files.getUploadURLExternal")) == 1  # not uploaded again
    assert len(fake.calls_to("files.completeUploadExternal")) == 1
    checked = [c for c in fake.calls_to("files.info") if c.params.get("file") == job.delivered_ref]
    assert checked and all(c.token == other.token for c in checked)  # the survivor asked Slack first
    buttons = [m for m in cluster.thread(job) if "videobot_reroll" in str(m.get("blocks"))]
    assert len(buttons) == 1
    assert any(c.token == other.token and c.params.get("ts") == job.status_ref
               and c.params.get("text", "").endswith("done, the clip is in the thread")
               for c in fake.calls_to("chat.update"))  # fmt: skip


async def test_one_image_stored_at_once_by_many_requests_on_one_media_folder_refuses_none(
    make_core: Any, receiver: Any
) -> None:
    """Two replicas handling one event both store its image in the shared media folder at the same
    moment; each write goes through a temporary file of its own, so neither is refused."""
    core = await make_core(LIMITS, start=False)
    image = await asyncio.to_thread(load_image, encode(Image.new("RGB", (1600, 900), TEAL), "PNG"),
                                    max_bytes=50_000_000, max_pixels=50_000_000)  # fmt: skip
    request = parse_request(f"the sea {FAST}", image=image)
    for attempt in range(5):
        for stored in (core.settings.media_dir / "images").glob("*"):
            stored.unlink()
        jobs = await asyncio.gather(*(
            core.service.submit(request, webhook_origin(receiver, user=f"u{attempt}-{n}")) for n in range(8)
        ))  # fmt: skip
        assert len({job.image_path for job in jobs}) == 1
    assert [p.name for p in (core.settings.media_dir / "images").iterdir()] == [Path(jobs[0].image_path or "").name]
