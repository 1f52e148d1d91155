"""Reading shared images from Slack: the bot token goes to Slack's hosts only, and anything
that is not an image, or too large, is refused with a reason."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest
from PIL import Image
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.files import SlackFiles
from bot.errors import InvalidRequest
from tests.fakes.slack_api import BOT_TOKEN, FakeSlack

pytestmark = pytest.mark.timeout(30)
LIMITS = {"max_bytes": 1024 * 1024, "max_pixels": 4_000_000}


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    server = await FakeSlack().start()
    yield server
    await server.stop()


@pytest.fixture
def files(fake: FakeSlack) -> SlackFiles:
    return SlackFiles(AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url))


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(out, format="JPEG")
    return out.getvalue()


async def test_image_is_downloaded_with_the_bot_token(fake: FakeSlack, files: SlackFiles) -> None:
    shared = fake.add_file("photo.jpg", jpeg(320, 240), "image/jpeg")

    image = await files.load(shared, **LIMITS)

    assert (image.width, image.height, image.mime) == (320, 240, "image/jpeg")
    [download] = fake.calls_to("download")
    assert download.token == BOT_TOKEN


async def test_a_file_given_only_by_id_is_looked_up_first(fake: FakeSlack, files: SlackFiles) -> None:
    shared = fake.add_file("photo.jpg", jpeg(64, 64), "image/jpeg")

    await files.load({"id": shared["id"], "file_access": "check_file_info"}, **LIMITS)

    assert [c.method for c in fake.calls] == ["files.info", "download"]


async def test_declared_non_image_is_refused_without_downloading(fake: FakeSlack, files: SlackFiles) -> None:
    shared = fake.add_file("report.pdf", b"%PDF-1.7 ...", "application/pdf")

    with pytest.raises(InvalidRequest, match=r"report.pdf is not an image \(application/pdf\)"):
        await files.load(shared, **LIMITS)
    assert not fake.calls_to("download")


async def test_text_labelled_as_an_image_is_refused_by_its_bytes(fake: FakeSlack, files: SlackFiles) -> None:
    shared = fake.add_file("cat.png", b"hello, this is a text file", "image/png")

    with pytest.raises(InvalidRequest, match="not an image \\(it looks like a text file\\)"):
        await files.load(shared, **LIMITS)


async def test_oversize_file_is_refused_by_its_declared_size(fake: FakeSlack, files: SlackFiles) -> None:
    shared = fake.add_file("huge.jpg", jpeg(64, 64) + b"\x00" * (2 * 1024 * 1024), "image/jpeg")

    with pytest.raises(InvalidRequest, match="huge.jpg is 2 MB; the limit is 1 MB"):
        await files.load(shared, **LIMITS)
    assert not fake.calls_to("download")


async def test_download_stops_at_the_limit_when_the_declared_size_is_wrong(fake: FakeSlack, files: SlackFiles) -> None:
    shared = fake.add_file("liar.jpg", jpeg(64, 64) + b"\x00" * (2 * 1024 * 1024), "image/jpeg")

    with pytest.raises(InvalidRequest, match="over the 1 MB limit"):
        await files.load({**shared, "size": 1000}, **LIMITS)


async def test_the_token_is_never_sent_to_a_host_that_is_not_slack(fake: FakeSlack, files: SlackFiles) -> None:
    elsewhere = {
        "id": "F1",
        "name": "x.png",
        "mimetype": "image/png",
        "size": 10,
        "url_private": "https://attacker.example/files/x.png",
    }
    lookalike = {**elsewhere, "url_private": "https://files.slack.com.attacker.example/x.png"}
    plain_http = {**elsewhere, "url_private": "http://files.slack.com/x.png"}

    for file in (elsewhere, lookalike, plain_http):
        with pytest.raises(InvalidRequest, match="isn't stored in Slack"):
            await files.load(file, **LIMITS)
    assert fake.calls == []


async def test_wrong_token_gets_slacks_sign_in_page_which_is_refused(fake: FakeSlack) -> None:
    shared = fake.add_file("photo.jpg", jpeg(64, 64), "image/jpeg")
    stranger = SlackFiles(AsyncWebClient(token="xoxb-someone-else", base_url=fake.api_url))

    with pytest.raises(InvalidRequest, match="looks like a web page"):
        await stranger.load(shared, **LIMITS)
