"""SlackNotifier against the fake Web API: where it posts, how it refuses, and delivering once."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import SlackNotifier
from bot.errors import NotAllowed
from bot.models import Clip, ClipInfo
from bot.notifier import ProgressUpdate, Stage
from storage.tables import Job
from tests.fakes.slack_api import BOT_TOKEN, TEAM_ID, FakeSlack

pytestmark = pytest.mark.timeout(30)

CHANNEL = "C0GENERAL"


class Checkpoint:
    """What the runner hands ``deliver``: a reference that survives a crash once saved."""

    def __init__(self, pending_ref: str | None = None) -> None:
        self.pending_ref = pending_ref
        self.saved: list[str] = []

    async def save(self, ref: str) -> None:
        self.saved.append(ref)
        self.pending_ref = ref


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    server = await FakeSlack().start()
    yield server
    await server.stop()


@pytest.fixture
def notifier(fake: FakeSlack) -> SlackNotifier:
    return SlackNotifier(AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url), stage_wait_s=0.2)


def make_job(**fields: object) -> Job:
    values: dict[str, object] = {
        "id": 7,
        "prompt": "a fox <!channel> in the snow",
        "duration_s": 8,
        "width": 1280,
        "height": 720,
        "seed": 42,
        "platform": "slack",
        "workspace_id": TEAM_ID,
        "channel_id": CHANNEL,
        "user_id": "U0ALICE",
    }
    values.update(fields)
    return Job(**values)  # type: ignore[arg-type]


def make_clip(tmp_path: Path) -> Clip:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 1000)
    info = ClipInfo(duration_s=8.0, width=1280, height=720, fps=16.0, frames=128, codec="h264", size_bytes=1012)
    return Clip(path=path, info=info, caption="“a fox” · 8 s · seed 42 · wan-2.6")


async def acknowledged(notifier: SlackNotifier, job: Job) -> Job:
    status = await notifier.acknowledge(job, 2)
    assert status is not None
    job.status_ref, job.thread_id = status.ref, status.thread_id
    return job


async def test_acknowledge_starts_a_thread_with_an_escaped_status_line(
    fake: FakeSlack, notifier: SlackNotifier
) -> None:
    status = await notifier.acknowledge(make_job(), 2)

    [post] = fake.calls_to("chat.postMessage")
    assert post.params["text"] == "<@U0ALICE> · a fox &lt;!channel&gt; in the snow · 8 s · 16:9 — queued, 2 ahead"
    assert status is not None and status.thread_id == status.ref == fake.messages[CHANNEL][0]["ts"]
    [cancel] = post.params["blocks"][1]["elements"]
    assert (cancel["action_id"], cancel["value"]) == ("videobot_cancel", "7")


async def test_acknowledge_inside_a_thread_stays_in_it(fake: FakeSlack, notifier: SlackNotifier) -> None:
    status = await notifier.acknowledge(make_job(thread_id="1690000000.000001"), 0)

    assert fake.calls_to("chat.postMessage")[0].params["thread_ts"] == "1690000000.000001"
    assert status is not None and status.thread_id == "1690000000.000001"


@pytest.mark.parametrize(
    ("error", "advice"),
    [
        ("not_in_channel", "/invite @videobot"),
        ("channel_not_found", "direct message"),
        ("is_archived", "archived"),
    ],
)
async def test_acknowledge_where_the_bot_cannot_post_raises_not_allowed(
    fake: FakeSlack, notifier: SlackNotifier, error: str, advice: str
) -> None:
    fake.fail("chat.postMessage", error)

    with pytest.raises(NotAllowed) as refused:
        await notifier.acknowledge(make_job(), 0)

    assert advice in str(refused.value) and error not in str(refused.value)


async def test_percent_updates_are_dropped_past_the_workspace_budget_but_stage_changes_wait(
    fake: FakeSlack,
) -> None:
    notifier = SlackNotifier(AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url), stage_wait_s=2.0)
    job = await acknowledged(notifier, make_job())
    for percent in range(40):
        await notifier.progress(job, ProgressUpdate(Stage.GENERATING, percent=percent))
    sent = len(fake.calls_to("chat.update"))

    assert sent == 10  # the burst; Slack's ~50/min refills slower than this loop runs
    started = time.monotonic()
    await notifier.progress(job, ProgressUpdate(Stage.UPLOADING))
    assert fake.calls_to("chat.update")[-1].params["text"].endswith("— uploading")
    assert 0.9 < time.monotonic() - started < 2.0  # one token refills in 60/50 s


async def test_deliver_uploads_into_the_thread_after_saving_the_file_id(
    fake: FakeSlack, notifier: SlackNotifier, tmp_path: Path
) -> None:
    job = await acknowledged(notifier, make_job())
    checkpoint = Checkpoint()

    file_id = await notifier.deliver(job, make_clip(tmp_path), checkpoint)

    assert checkpoint.saved == [file_id]
    [ticket] = fake.calls_to("files.getUploadURLExternal")
    assert ticket.params == {"filename": "videobot-7.mp4", "length": "1012"}
    [upload] = fake.calls_to("upload")
    assert upload.params["bytes"] == 1012 and upload.token is None  # the upload URL is pre-signed
    [complete] = fake.calls_to("files.completeUploadExternal")
    assert json.loads(complete.params["files"])[0]["id"] == file_id
    assert complete.params["thread_ts"] == job.thread_id
    assert complete.params["initial_comment"] == "<@U0ALICE> #7: “a fox” · 8 s · seed 42 · wan-2.6"
    assert fake.files[file_id].shares[CHANNEL][0]["thread_ts"] == job.thread_id
    assert fake.calls_to("chat.update")[-1].params["blocks"] == [
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": fake.calls_to("chat.update")[-1].params["text"] + "  `#7`"},
        }
    ]


async def test_retried_delivery_of_a_file_already_in_the_thread_posts_nothing_twice(
    fake: FakeSlack, notifier: SlackNotifier, tmp_path: Path
) -> None:
    job = await acknowledged(notifier, make_job())
    first = await notifier.deliver(job, make_clip(tmp_path), Checkpoint())
    calls_before = {m: len(fake.calls_to(m)) for m in ("files.getUploadURLExternal", "upload", "chat.postMessage")}

    again = await notifier.deliver(job, make_clip(tmp_path), Checkpoint(pending_ref=first))

    assert again == first
    assert {m: len(fake.calls_to(m)) for m in calls_before} == calls_before
    assert fake.calls_to("files.info")[-1].params["file"] == first


async def test_retried_delivery_whose_upload_never_completed_uploads_again(
    fake: FakeSlack, notifier: SlackNotifier, tmp_path: Path
) -> None:
    job = await acknowledged(notifier, make_job())
    fake.fail("files.completeUploadExternal", "internal_error")
    checkpoint = Checkpoint()
    with pytest.raises(SlackApiError, match="internal_error"):
        await notifier.deliver(job, make_clip(tmp_path), checkpoint)
    [interrupted] = checkpoint.saved
    fake._errors.clear()

    delivered = await notifier.deliver(job, make_clip(tmp_path), checkpoint)

    assert delivered != interrupted and checkpoint.saved == [interrupted, delivered]
    shared = [f for f in fake.files.values() if f.shares]
    assert [f.id for f in shared] == [delivered]
    assert len([c for c in fake.calls_to("chat.postMessage") if c.params.get("thread_ts")]) == 1


async def test_fail_says_why_in_the_thread_and_closes_the_status(fake: FakeSlack, notifier: SlackNotifier) -> None:
    job = await acknowledged(notifier, make_job())

    await notifier.fail(job, "The provider refused the prompt <script>.")

    reply = fake.calls_to("chat.postMessage")[-1]
    assert reply.params["thread_ts"] == job.thread_id
    assert reply.params["text"] == "<@U0ALICE> video #7 failed: The provider refused the prompt &lt;script&gt;."
    status = fake.calls_to("chat.update")[-1].params
    assert status["text"].endswith("— failed") and len(status["blocks"]) == 1


async def test_cancel_shown_on_the_status_removes_the_cancel_button(fake: FakeSlack, notifier: SlackNotifier) -> None:
    job = await acknowledged(notifier, make_job())

    await notifier.progress(job, ProgressUpdate(Stage.CANCELED))

    update = fake.calls_to("chat.update")[-1].params
    assert update["text"].endswith("— canceled") and [b["type"] for b in update["blocks"]] == ["section"]


async def test_a_rate_limited_call_is_retried_by_the_web_client_itself(fake: FakeSlack) -> None:
    from adapters.slack.app import web_client

    notifier = SlackNotifier(web_client(BOT_TOKEN, fake.api_url), stage_wait_s=0.2)
    fake.rate_limit("chat.postMessage", times=2)
    status = await notifier.acknowledge(make_job(), 0)
    assert status is not None
    assert len(fake.calls_to("chat.postMessage")) == 3  # two 429s, then the post


async def test_a_client_without_the_handler_surfaces_the_429(fake: FakeSlack, notifier: SlackNotifier) -> None:
    fake.rate_limit("chat.postMessage", times=1)
    with pytest.raises(SlackApiError):
        await notifier.acknowledge(make_job(), 0)
