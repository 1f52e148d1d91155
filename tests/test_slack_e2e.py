"""videobot in Slack, end to end: the real Bolt ``AsyncApp`` on loopback, requests signed as
Slack signs them, the Web API faked by ``tests.fakes.slack_api``, and the real core running the
simulator backend, which makes real mp4s.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from adapters.slack import SlackAdapter, SlackSetupError, build_adapter
from bot.app import Core
from bot.media import probe
from bot.settings import Settings
from storage.tables import Job, JobState
from tests.conftest import this_database
from tests.fakes.slack_api import (
    APP_TOKEN,
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    block_action,
    form_body,
    interactive_body,
    mention_event,
    message_shortcut,
    sign,
    slash_command,
    view_submission,
)

pytestmark = pytest.mark.timeout(60)

FAST = "--duration 1 --resolution 832x480"
GENERAL = "C0GENERAL"
LIMITS = """
[defaults]
user_concurrent_jobs = 4
user_daily_jobs = 20
"""


@dataclass
class Answer:
    status: int
    body: str
    seconds: float


@dataclass
class SlackBot:
    """The bot under test and the fake Slack around it, with what Slack would send it."""

    fake: FakeSlack
    core: Core
    adapter: SlackAdapter
    http: aiohttp.ClientSession

    async def send(self, body: str, content_type: str, *, headers: dict[str, str] | None = None) -> Answer:
        url = f"http://127.0.0.1:{self.adapter.port}/slack/events"
        started = time.perf_counter()
        async with self.http.post(
            url, data=body.encode(), headers={"Content-Type": content_type, **(headers or sign(body))}
        ) as response:
            text = await response.text()
        return Answer(response.status, text, time.perf_counter() - started)

    async def command(self, text: str, **fields: str) -> Answer:
        fields.setdefault("response_url", self.fake.response_url("cmd"))
        return await self.send(form_body(slash_command(text, **fields)), "application/x-www-form-urlencoded")

    async def event(self, payload: dict[str, Any], *, retry: int | None = None) -> Answer:
        body = json.dumps(payload)
        headers = sign(body)
        if retry is not None:
            headers |= {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
        return await self.send(body, "application/json", headers=headers)

    async def interact(self, payload: dict[str, Any]) -> Answer:
        return await self.send(interactive_body(payload), "application/x-www-form-urlencoded")

    async def jobs(self) -> list[Job]:
        db = self.core.service.db
        return sorted(await db.run(db.repo.recent, 100), key=lambda j: j.id or 0)

    async def wait_jobs(self, count: int) -> list[Job]:
        deadline = time.monotonic() + 10
        while len(jobs := await self.jobs()) < count:
            assert time.monotonic() < deadline, f"expected {count} jobs, have {len(jobs)}"
            await asyncio.sleep(0.02)
        return jobs

    async def finished(self, job_id: int) -> Job:
        deadline = time.monotonic() + 30
        while not (job := await self.core.service.status(job_id)).job_state.terminal:
            assert time.monotonic() < deadline, f"job {job_id} still {job.state}"
            await asyncio.sleep(0.05)
        return job

    def responses(self, hook: str = "cmd") -> list[str]:
        return [c.params.get("text", "") for c in self.fake.calls_to("response") if c.params["hook"] == hook]


@asynccontextmanager
async def running_bot(tmp_path: Path, *, socket_mode: bool = False, limits: str = LIMITS) -> AsyncIterator[SlackBot]:
    fake = await FakeSlack().start()
    (tmp_path / "videobot.toml").write_text(limits)
    settings = Settings(
        backend="simulator",
        data_dir=tmp_path / "data",
        database_url=this_database(),
        limits_path=tmp_path / "videobot.toml",
        poll_interval_s=0.1,
        progress_interval_s=0.1,
        http_host="127.0.0.1",
        slack_bot_token=BOT_TOKEN,
        slack_app_token=APP_TOKEN if socket_mode else "",
        slack_signing_secret="" if socket_mode else SIGNING_SECRET,
        slack_port=0,
        slack_api_url=fake.api_url,
    )
    core = await Core.create(settings)
    adapter = build_adapter(settings, core.service)
    await core.start()
    await adapter.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield SlackBot(fake, core, adapter, http)
    finally:
        await adapter.stop()
        await core.stop()
        await fake.stop()


@pytest.fixture
async def slack(tmp_path: Path) -> AsyncIterator[SlackBot]:
    async with running_bot(tmp_path) as bot:
        yield bot


def png(width: int = 64, height: int = 36) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 20)).save(out, format="PNG")
    return out.getvalue()


def texts(calls: list[Any]) -> list[str]:
    return [c.params.get("text", "") for c in calls]


# -- /video ---------------------------------------------------------------------------------------


async def test_the_core_holds_its_background_work_while_a_command_is_being_acked(slack: SlackBot) -> None:
    holding: list[bool] = []

    async def look(next: Any) -> Any:  # a Bolt middleware, run on the way to the ack
        holding.append(slack.core.service.foreground.holding)
        return await next()

    slack.adapter.app.middleware(look)
    answer = await slack.command(f"a red fox running through snow {FAST}")

    assert answer.status == 200 and holding == [True]


async def test_a_command_is_acked_while_the_cores_event_loop_is_blocked(slack: SlackBot) -> None:
    await slack.command("help")  # Bolt checks the bot token (auth.test) on its first request only
    body = form_body(slash_command(f"a red fox running through snow {FAST}"))
    url = f"http://127.0.0.1:{slack.adapter.port}/slack/events"
    statuses: list[int] = []
    acked = threading.Event()

    def post() -> None:  # from another thread: the core's loop is blocked meanwhile
        headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(body)}
        with urllib.request.urlopen(urllib.request.Request(url, body.encode(), headers), timeout=30) as response:
            statuses.append(response.status)
        acked.set()

    client = threading.Thread(target=post)
    client.start()
    acked_while_blocked = acked.wait(timeout=30)  # blocks the core's loop, as a heavy burst of work would
    client.join()

    assert acked_while_blocked and statuses == [200]
    [job] = await slack.wait_jobs(1)  # the submit that follows the ack ran once the loop was free
    assert job.prompt == "a red fox running through snow"


async def test_video_command_posts_clip_into_thread(slack: SlackBot, tmp_path: Path) -> None:
    answer = await slack.command(f"a red fox running through snow {FAST}")

    assert answer.status == 200 and answer.seconds < 3
    [job] = await slack.wait_jobs(1)
    job = await slack.finished(job.id or 0)
    assert job.job_state is JobState.SUCCEEDED

    [status] = slack.fake.calls_to("chat.postMessage")[:1]
    assert status.params["channel"] == GENERAL and "thread_ts" not in status.params
    assert status.params["text"].startswith("<@U0ALICE> · a red fox running through snow · 1 s · 832x480 — queued")
    status_ts = job.status_ref
    assert job.thread_id == status_ts

    edits = [c for c in slack.fake.calls_to("chat.update") if c.params["ts"] == status_ts]
    states = [t.split(" — ", 1)[1] for t in texts(edits)]
    assert any(s.startswith("generating") for s in states)
    assert "uploading" in states
    assert states[-1] == "done, the clip is in the thread"

    methods = [c.method for c in slack.fake.calls]
    upload_steps = [m for m in methods if m in ("files.getUploadURLExternal", "upload", "files.completeUploadExternal")]
    assert upload_steps == ["files.getUploadURLExternal", "upload", "files.completeUploadExternal"]
    [complete] = slack.fake.calls_to("files.completeUploadExternal")
    assert complete.params["channel_id"] == GENERAL and complete.params["thread_ts"] == status_ts
    comment = complete.params["initial_comment"]
    assert "a red fox running through snow" in comment and "1 s" in comment
    assert f"seed {job.seed}" in comment and "simulator" in comment
    assert job.delivered_ref == json.loads(complete.params["files"])[0]["id"]

    clip = tmp_path / "posted.mp4"
    clip.write_bytes(slack.fake.files[job.delivered_ref or ""].content)
    info = probe(clip)
    assert (info.width, info.height) == (832, 480) and 0.8 <= info.duration_s <= 1.2 and info.frames > 0

    buttons = [c for c in slack.fake.calls_to("chat.postMessage") if c.params.get("thread_ts") == status_ts]
    actions = [e["action_id"] for b in buttons[-1].params["blocks"] for e in b.get("elements", [])]
    assert actions == ["videobot_reroll", "videobot_extend"]


async def test_option_mistake_is_answered_in_the_ack_and_makes_no_job(slack: SlackBot) -> None:
    answer = await slack.command("a fox --fps 30")

    assert answer.status == 200
    assert "--fps must be 16 or 24" in answer.body
    await asyncio.sleep(0.2)
    assert await slack.jobs() == [] and not slack.fake.calls_to("chat.postMessage")


async def test_subcommands_help_status_usage_cancel(slack: SlackBot) -> None:
    help_answer = await slack.command("help")
    assert "--duration" in help_answer.body and "--aspect" in help_answer.body

    await slack.command("status")
    await slack.command("usage")
    await slack.command("cancel 99")
    replies = await slack.fake.wait_for(lambda: len(slack.responses()) >= 3 and slack.responses())
    assert "No videos in progress." in replies
    assert any(r.startswith("Your usage: 0 videos today of 20") for r in replies)
    assert "There is no job #99." in replies
    assert await slack.jobs() == []


async def test_status_lists_the_running_job(slack: SlackBot) -> None:
    await slack.command("a slow dawn [sim:hang] --duration 1 --resolution 832x480")
    [job] = await slack.wait_jobs(1)
    await slack.command("status")

    [reply] = await slack.fake.wait_for(lambda: slack.responses())
    assert reply.startswith("Videos in progress:") and f"#{job.id} · a slow dawn" in reply


async def test_quota_refusal_says_usage_and_reset(tmp_path: Path) -> None:
    limits = "[defaults]\nuser_daily_jobs = 1\nuser_concurrent_jobs = 4\n"
    async with running_bot(tmp_path, limits=limits) as slack:
        await slack.command(f"first {FAST}")
        [job] = await slack.wait_jobs(1)
        await slack.finished(job.id or 0)
        answer = await slack.command(f"second {FAST}")

        assert answer.status == 200
        [reply] = await slack.fake.wait_for(lambda: slack.responses())
        assert "You've used 1 of your 1 videos for today" in reply and "resets" in reply
        assert "Your usage: 1 videos today of 1" in reply
        assert len(await slack.jobs()) == 1


async def test_bot_outside_the_channel_explains_how_to_invite_and_leaves_no_job_running(slack: SlackBot) -> None:
    slack.fake.fail("chat.postMessage", "not_in_channel", channel="C0PRIVATE")

    await slack.command(f"a fox {FAST}", channel="C0PRIVATE")

    [reply] = await slack.fake.wait_for(lambda: slack.responses())
    assert "/invite @videobot" in reply
    [job] = await slack.jobs()
    assert job.job_state is JobState.FAILED and not job.counts_toward_quota
    assert "Traceback" not in reply and BOT_TOKEN not in reply


# -- request verification and retries -------------------------------------------------------------


async def test_forged_signature_is_refused_and_makes_no_job(slack: SlackBot) -> None:
    body = form_body(slash_command(f"a fox {FAST}"))

    forged = await slack.send(body, "application/x-www-form-urlencoded", headers=sign(body, secret="not-the-secret"))
    stale = await slack.send(
        body, "application/x-www-form-urlencoded", headers=sign(body, timestamp=int(time.time()) - 10 * 60)
    )
    tampered_headers = sign(body)
    tampered = await slack.send(
        body.replace("fox", "cat"), "application/x-www-form-urlencoded", headers=tampered_headers
    )

    assert (forged.status, stale.status, tampered.status) == (401, 401, 401)
    await asyncio.sleep(0.2)
    assert await slack.jobs() == []
    assert not slack.fake.calls_to("chat.postMessage")


async def test_retried_event_makes_one_job(slack: SlackBot) -> None:
    event = mention_event(f"a heron taking off {FAST}", event_id="Ev0RETRY")

    first = await slack.event(event)
    await slack.wait_jobs(1)
    retries = await asyncio.gather(slack.event(event, retry=1), slack.event(event, retry=2))

    assert first.status == 200 and all(r.status == 200 for r in retries)
    await asyncio.sleep(0.3)
    [job] = await slack.jobs()
    assert job.dedup_key == "slack:event:Ev0RETRY"
    assert len([c for c in slack.fake.calls_to("chat.postMessage") if "queued" in c.params.get("text", "")]) == 1


# -- image to video -------------------------------------------------------------------------------


async def test_mention_with_image_makes_image_to_video_job_in_its_thread(slack: SlackBot) -> None:
    photo = slack.fake.add_file("harbour.png", png(), "image/png")
    event = mention_event(f"the boats start rocking {FAST}", files=[photo], ts="1699999999.000100")

    assert (await slack.event(event)).status == 200
    [job] = await slack.wait_jobs(1)
    job = await slack.finished(job.id or 0)

    assert job.mode == "i2v" and job.image_path and Path(job.image_path).exists()
    assert job.thread_id == "1699999999.000100" and job.job_state is JobState.SUCCEEDED
    [download] = slack.fake.calls_to("download")
    assert download.token == BOT_TOKEN
    [complete] = slack.fake.calls_to("files.completeUploadExternal")
    assert complete.params["thread_ts"] == "1699999999.000100"


async def test_mention_in_a_thread_animates_the_parent_messages_image(slack: SlackBot) -> None:
    photo = slack.fake.add_file("cat.png", png(36, 64), "image/png")
    parent = slack.fake.add_message(GENERAL, {"user": "U0BOB", "text": "my cat", "files": [photo]})
    event = mention_event("make it blink --duration 1", thread_ts=parent["ts"], ts="1700000099.000001")

    await slack.event(event)
    [job] = await slack.wait_jobs(1)

    assert job.mode == "i2v" and job.thread_id == parent["ts"]
    assert (job.width, job.height) == (720, 1280)  # a portrait photo stays portrait
    assert slack.fake.calls_to("conversations.replies")[0].params["ts"] == parent["ts"]


async def test_text_file_as_the_image_is_refused_in_the_thread(slack: SlackBot) -> None:
    notes = slack.fake.add_file("notes.txt", b"just some notes", "text/plain")
    disguised = slack.fake.add_file("cat.png", b"this is not a picture at all", "image/png")

    await slack.event(mention_event("animate", files=[notes], ts="1699999999.000201", event_id="Ev1"))
    await slack.event(mention_event("animate", files=[disguised], ts="1699999999.000202", event_id="Ev2"))

    replies = await slack.fake.wait_for(
        lambda: len(slack.fake.calls_to("chat.postMessage")) >= 2 and slack.fake.calls_to("chat.postMessage")
    )
    by_thread = {c.params["thread_ts"]: c.params["text"] for c in replies}
    assert by_thread["1699999999.000201"] == (
        "<@U0ALICE> notes.txt is not an image (text/plain). Attach a PNG, JPEG, WebP, GIF or BMP."
    )
    assert "not an image (it looks like a text file)" in by_thread["1699999999.000202"]
    assert [c.params["file_id"] for c in slack.fake.calls_to("download")] == [disguised["id"]]
    assert await slack.jobs() == []


async def test_shortcut_opens_modal_and_its_submission_makes_a_job(slack: SlackBot) -> None:
    photo = slack.fake.add_file("sunset.png", png(), "image/png")
    message = slack.fake.add_message(GENERAL, {"user": "U0BOB", "text": "sunset!", "files": [photo]})

    answer = await slack.interact(message_shortcut(message, response_url=slack.fake.response_url("shortcut")))
    assert answer.status == 200 and answer.seconds < 3
    [opened] = await slack.fake.wait_for(lambda: slack.fake.calls_to("views.open"))
    assert opened.params["trigger_id"] == "trigger-shortcut"
    view = opened.params["view"]
    assert [b["block_id"] for b in view["blocks"]] == ["prompt", "duration", "aspect"]

    values: dict[str, dict[str, Any]] = {
        "prompt": {"value": {"type": "plain_text_input", "value": "waves roll in"}},
        "duration": {"value": {"type": "static_select", "selected_option": {"value": "5"}}},
        "aspect": {"value": {"type": "static_select", "selected_option": {"value": "image"}}},
    }
    submitted = await slack.interact(view_submission(view, values))
    assert submitted.status == 200 and submitted.body == ""

    [job] = await slack.wait_jobs(1)
    assert job.mode == "i2v" and job.prompt == "waves roll in" and job.duration_s == 5
    assert job.thread_id == message["ts"] and job.dedup_key == "slack:view:V0MODAL"
    assert [c.params["file"] for c in slack.fake.calls_to("files.info")] == [photo["id"]]


async def test_modal_prompt_mistake_is_shown_on_the_form(slack: SlackBot) -> None:
    values: dict[str, dict[str, Any]] = {
        "prompt": {"value": {"type": "plain_text_input", "value": "   "}},
        "duration": {"value": {"type": "static_select", "selected_option": {"value": "5"}}},
        "aspect": {"value": {"type": "static_select", "selected_option": {"value": "16:9"}}},
    }
    view = {"type": "modal", "callback_id": "videobot_animate_view", "private_metadata": "{}"}

    answer = await slack.interact(view_submission(view, values))

    body = json.loads(answer.body)
    assert body["response_action"] == "errors" and "Describe the video" in body["errors"]["prompt"]
    assert await slack.jobs() == []


# -- buttons --------------------------------------------------------------------------------------


async def test_reroll_and_extend_buttons_make_follow_up_jobs_in_the_thread(slack: SlackBot) -> None:
    await slack.command(f"a lighthouse at night {FAST}")
    [job] = await slack.wait_jobs(1)
    job = await slack.finished(job.id or 0)
    under_clip = {"message_ts": "1700000000.999999", "response_url": slack.fake.response_url("buttons")}

    await slack.interact(block_action("videobot_reroll", str(job.id), user="U0BOB", **under_clip))
    await slack.interact(block_action("videobot_extend", str(job.id), **under_clip))
    _, reroll, extend = await slack.wait_jobs(3)

    assert (reroll.kind, reroll.parent_id, reroll.user_id, reroll.prompt) == ("reroll", job.id, "U0BOB", job.prompt)
    assert reroll.seed != job.seed
    assert (extend.kind, extend.parent_id, extend.mode, extend.duration_s) == ("extend", job.id, "i2v", 5)
    for follow_up in (reroll, extend):
        follow_up = await slack.finished(follow_up.id or 0)
        assert follow_up.job_state is JobState.SUCCEEDED
    assert slack.responses("buttons") == []


async def test_cancel_button_is_refused_to_another_user_and_works_for_the_owner(slack: SlackBot) -> None:
    await slack.command("a long take [sim:hang] --duration 1 --resolution 832x480")
    [job] = await slack.wait_jobs(1)
    await slack.fake.wait_for(lambda: any("generating" in t for t in texts(slack.fake.calls_to("chat.update"))))
    hook = {"response_url": slack.fake.response_url("buttons")}

    await slack.interact(block_action("videobot_cancel", str(job.id), user="U0BOB", **hook))
    [refusal] = await slack.fake.wait_for(lambda: slack.responses("buttons"))
    assert refusal == f"Job #{job.id} belongs to someone else; only they or an admin can change it."
    assert not (await slack.core.service.status(job.id or 0)).job_state.terminal

    await slack.interact(block_action("videobot_cancel", str(job.id), **hook))
    job = await slack.finished(job.id or 0)
    assert job.job_state is JobState.CANCELED
    last = await slack.fake.wait_for(
        lambda: [t for t in texts(slack.fake.calls_to("chat.update")) if t.endswith("canceled")]
    )
    assert last and len(slack.responses("buttons")) == 1


# -- Socket Mode ----------------------------------------------------------------------------------


async def test_socket_mode_acks_the_envelope_and_runs_the_job(tmp_path: Path) -> None:
    async with running_bot(tmp_path, socket_mode=True) as slack:
        await slack.fake.wait_for_socket()
        [opened] = slack.fake.calls_to("apps.connections.open")
        assert opened.token == APP_TOKEN

        command = slash_command(f"a kite over the dunes {FAST}", response_url=slack.fake.response_url())
        await slack.fake.push(
            {"envelope_id": "env-cmd", "type": "slash_commands", "payload": command, "accepts_response_payload": True}
        )
        event = mention_event(f"a paper boat {FAST}", event_id="Ev0SOCKET")
        for attempt in (0, 1):  # Slack redelivers an event it thinks was missed
            await slack.fake.push(
                {
                    "envelope_id": f"env-ev{attempt}",
                    "type": "events_api",
                    "payload": event,
                    "accepts_response_payload": False,
                    "retry_attempt": attempt,
                    "retry_reason": "timeout",
                }
            )

        await slack.fake.wait_for(lambda: all(slack.fake.socket_ack(e) for e in ("env-cmd", "env-ev0", "env-ev1")))
        first, second = await slack.wait_jobs(2)
        await asyncio.sleep(0.2)
        assert len(await slack.jobs()) == 2
        for job in (first, second):
            assert (await slack.finished(job.id or 0)).job_state is JobState.SUCCEEDED
        assert len(slack.fake.calls_to("files.completeUploadExternal")) == 2


async def test_mention_without_a_prompt_asks_for_one_before_downloading(slack: SlackBot) -> None:
    photo = slack.fake.add_file("harbour.png", png(), "image/png")

    await slack.event(mention_event("--duration 3", files=[photo]))

    [answer] = await slack.fake.wait_for(lambda: slack.fake.calls_to("chat.postEphemeral"))
    assert answer.params["text"].startswith("Describe the video you want")
    assert answer.params["user"] == "U0ALICE"
    assert not slack.fake.calls_to("download") and await slack.jobs() == []


async def test_slack_url_verification_is_answered(slack: SlackBot) -> None:
    body = json.dumps({"type": "url_verification", "challenge": "c-123", "token": "legacy"})

    answer = await slack.event(json.loads(body))

    assert answer.status == 200 and json.loads(answer.body) == {"challenge": "c-123"}


# -- setup mistakes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "named"),
    [
        ({"slack_bot_token": "xoxb-revoked", "slack_signing_secret": SIGNING_SECRET}, "SLACK_BOT_TOKEN"),
        ({"slack_bot_token": BOT_TOKEN, "slack_app_token": "xapp-revoked"}, "SLACK_APP_TOKEN"),
    ],
)
async def test_a_refused_token_stops_startup_with_a_message_naming_the_setting(
    tmp_path: Path, tokens: dict[str, str], named: str
) -> None:
    fake = await FakeSlack().start()
    settings = Settings(
        data_dir=tmp_path,
        database_url=this_database(),
        limits_path=tmp_path / "none.toml",
        http_host="127.0.0.1",
        slack_port=0,
        slack_api_url=fake.api_url,
        **tokens,
    )
    core = await Core.create(settings)
    adapter = SlackAdapter(settings, core.service, connect_timeout_s=0.5)
    try:
        with pytest.raises(SlackSetupError) as refused:
            await adapter.start()
        assert named in str(refused.value) and "revoked" not in str(refused.value)
    finally:
        await core.stop()
        await fake.stop()
