"""The Bolt listeners: each parses what Slack sent, acks, and hands the request to ``JobService``.

Slack gives an app 3 seconds to acknowledge, so nothing that can be slow (the database, a file
download, a Web API call) runs before ``ack()``; only parsing does, because a typo is answered
in the ack itself. After the ack every listener answers the person in the way that place allows:
``response_url`` for commands, shortcuts and buttons (it works even where the bot cannot post),
an ephemeral message for mentions, and a visible reply in the thread when an attachment is
refused, so whoever looks at the thread sees why nothing happened.

Slack delivers an event again when it thinks the first delivery failed (``X-Slack-Retry-Num``,
same ``event_id``); Bolt does not filter these. Every submit carries a ``dedup_key`` built from
Slack's own id of the request, and ``JobService`` turns a repeat into the job already made.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from adapters.slack import render
from adapters.slack.files import SlackFiles
from adapters.slack.pacing import AckFirst
from bot.errors import InvalidRequest, JobNotFound, LimitExceeded, VideobotError
from bot.grammar import parse_job_id, parse_request
from bot.models import ImageInput, Origin
from bot.service import JobService

log = logging.getLogger(__name__)

PLATFORM = "slack"
COMMAND = "/video"
Reply = Callable[[str], Awaitable[None]]

_MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")
_JOB_ID = re.compile(r"#?(\d+)")
_UNEXPECTED = "Something went wrong on videobot's side. Please try again; if it keeps happening, tell an admin."


def register(app: AsyncApp, service: JobService, files: SlackFiles) -> None:
    """Attach every videobot listener to ``app``."""
    pacing = AckFirst()
    app.middleware(pacing.note_arrival)

    @asynccontextmanager
    async def answering(origin: Origin, reply: Reply) -> AsyncIterator[None]:
        """The work after an ack: paced behind other acks, and whatever the service refuses
        turned into a reply for the person; never a traceback."""
        async with pacing.turn():
            try:
                yield
            except _Answered:
                pass
            except LimitExceeded as refusal:
                await reply(f"{refusal}\n\n{await service.usage_text(origin)}")
            except VideobotError as refusal:
                await reply(str(refusal))
            except Exception:
                log.exception("slack: unexpected error while handling a request")
                await reply(_UNEXPECTED)

    async def load_image(file: Mapping[str, Any], origin: Origin, client: AsyncWebClient) -> ImageInput:
        """Fetch the attachment; a refusal is said in the thread, then re-raised to stop the job."""
        limits = service.limits.current()
        try:
            return await files.load(file, max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels)
        except InvalidRequest as refusal:
            await _say_in_thread(client, origin, f"<@{origin.user_id}> {render.escape(str(refusal))}")
            raise _Answered() from refusal

    # -- /video -----------------------------------------------------------------------------

    @app.command(COMMAND)
    async def video_command(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond) -> None:
        text = (command.get("text") or "").strip()
        origin = _origin(
            command["team_id"],
            command["channel_id"],
            command["user_id"],
            command.get("user_name", ""),
            response_url=command.get("response_url", ""),
        )

        async def reply(message: str) -> None:
            await respond(text=message, response_type="ephemeral")

        word, _, rest = text.partition(" ")
        word, rest = word.lower(), rest.strip()
        if word in ("", "help") and not rest:
            await ack(text=service.help_text(origin))
            return
        if (word in ("status", "usage") and not rest) or (word in ("status", "cancel") and _JOB_ID.fullmatch(rest)):
            await ack()
            async with answering(origin, reply):
                await reply(await _subcommand(service, origin, word, rest))
            return
        try:
            request = parse_request(text)
        except InvalidRequest as refusal:
            await ack(text=str(refusal))
            return
        await ack()
        async with answering(origin, reply):
            await service.submit(request, origin, dedup_key=_dedup_key("command", command.get("trigger_id")))

    # -- @videobot mentions -----------------------------------------------------------------

    @app.event("app_mention")
    async def mention(event: dict[str, Any], body: dict[str, Any], client: AsyncWebClient) -> None:
        # Bolt acks events before this runs.
        channel, user = event["channel"], event.get("user", "")
        thread_ts = event.get("thread_ts") or event["ts"]
        origin = _origin(body.get("team_id") or event.get("team", ""), channel, user, "", thread_ts=thread_ts)
        text = _MENTION.sub("", event.get("text") or "").strip()

        async def reply(message: str) -> None:
            await _ephemeral(client, origin, message)

        async with answering(origin, reply):
            attached = event.get("files") or []
            if not attached and event.get("thread_ts"):
                attached = await files.thread_parent_files(channel, event["thread_ts"])
            if text.lower() in ("", "help") and not attached:
                await reply(service.help_text(origin))
                return
            request = parse_request(text)  # a mistake is answered before anything is downloaded
            file, end_file = files.keyframe_files(attached)
            if file is not None:
                image = await load_image(file, origin, client)
                end_image = await load_image(end_file, origin, client) if end_file is not None else None
                request = parse_request(text, image=image, end_image=end_image)
            await service.submit(request, origin, dedup_key=_dedup_key("event", body.get("event_id")))

    # -- "Animate with videobot" message shortcut and its modal -----------------------------

    @app.shortcut(render.ANIMATE_CALLBACK)
    async def animate_shortcut(
        ack: AsyncAck, shortcut: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond
    ) -> None:
        await ack()
        message = shortcut.get("message") or {}
        file, end_file = files.keyframe_files(message.get("files"))
        try:
            if file is None:
                raise InvalidRequest("That message has no image. Use the shortcut on a message with a picture in it.")
            files.check_declared(file, max_bytes=service.limits.current().max_image_bytes)
        except InvalidRequest as refusal:
            await respond(text=str(refusal), response_type="ephemeral")
            return
        context = render.AnimateContext(
            channel_id=shortcut["channel"]["id"],
            thread_ts=message.get("thread_ts") or message["ts"],
            file_id=str(file["id"]),
            response_url=shortcut.get("response_url", ""),
            end_file_id=str(end_file["id"]) if end_file is not None else "",
        )
        await client.views_open(trigger_id=shortcut["trigger_id"], view=render.animate_modal(context))

    @app.view(render.ANIMATE_VIEW)
    async def animate_submitted(
        ack: AsyncAck, body: dict[str, Any], view: dict[str, Any], client: AsyncWebClient
    ) -> None:
        text = render.animate_command_text(view["state"]["values"])
        try:
            parse_request(text)
        except InvalidRequest as refusal:
            await ack(response_action="errors", errors={"prompt": str(refusal)})
            return
        await ack()
        context = render.AnimateContext.loads(view["private_metadata"])
        user = body["user"]
        origin = _origin(
            user.get("team_id") or body["team"]["id"],
            context.channel_id,
            user["id"],
            user.get("username") or user.get("name", ""),
            thread_ts=context.thread_ts,
            response_url=context.response_url,
        )

        async def reply(message: str) -> None:
            if not await _to_response_url(context.response_url, message):
                await _ephemeral(client, origin, message)

        async with answering(origin, reply):
            image = await load_image({"id": context.file_id}, origin, client)
            end_image = await load_image({"id": context.end_file_id}, origin, client) if context.end_file_id else None
            request = parse_request(text, image=image, end_image=end_image)
            await service.submit(request, origin, dedup_key=_dedup_key("view", view.get("id")))

    # -- buttons: Cancel on the status message, Reroll and Extend under the clip ------------

    async def pressed(
        ack: AsyncAck,
        body: dict[str, Any],
        action: dict[str, Any],
        respond: AsyncRespond,
        act: Callable[[int, Origin], Awaitable[Any]],
    ) -> None:
        await ack()
        message = body.get("message") or {}
        user = body["user"]
        by = _origin(
            user.get("team_id") or body["team"]["id"],
            body["channel"]["id"],
            user["id"],
            user.get("username") or user.get("name", ""),
            thread_ts=message.get("thread_ts") or message.get("ts"),
            response_url=body.get("response_url", ""),
        )

        async def reply(text: str) -> None:
            await respond(text=text, response_type="ephemeral", replace_original=False)

        async with answering(by, reply):
            await act(parse_job_id(action.get("value")), by)

    @app.action(render.CANCEL_ACTION)
    async def cancel_pressed(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond
    ) -> None:
        await pressed(ack, body, action, respond, service.cancel)

    @app.action(render.REROLL_ACTION)
    async def reroll_pressed(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond
    ) -> None:
        await pressed(ack, body, action, respond, service.reroll)

    @app.action(render.EXTEND_ACTION)
    async def extend_pressed(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond
    ) -> None:
        async def extend(job_id: int, by: Origin) -> Any:
            return await service.extend(job_id, by, seconds=render.EXTEND_SECONDS)

        await pressed(ack, body, action, respond, extend)


class _Answered(Exception):
    """The person has already been told why; stop handling this request."""


def _dedup_key(kind: str, slack_id: str | None) -> str | None:
    """Slack's own id for one request (a command's trigger, an event, a submitted modal)."""
    return f"slack:{kind}:{slack_id}" if slack_id else None


def _origin(
    team_id: str, channel_id: str, user_id: str, user_name: str, *, thread_ts: str | None = None, response_url: str = ""
) -> Origin:
    # A response_url is valid for 30 minutes, so it may be stored with the job (no lasting secret).
    extra = {"response_url": response_url} if response_url else {}
    return Origin(
        platform=PLATFORM,
        workspace_id=team_id,
        channel_id=channel_id,
        user_id=user_id,
        user_name=user_name,
        thread_id=thread_ts,
        extra=extra,
    )


async def _subcommand(service: JobService, origin: Origin, word: str, rest: str) -> str:
    """``/video status [id]``, ``/video cancel <id>``, ``/video usage``."""
    match = _JOB_ID.fullmatch(rest)
    if word == "usage":
        return await service.usage_text(origin)
    if word == "cancel" and match:
        job = await service.cancel(parse_job_id(match.group(1)), origin)
        return f"Canceled video #{job.id}."
    if match:
        job = await service.status(parse_job_id(match.group(1)))
        if (job.platform, job.workspace_id) != (origin.platform, origin.workspace_id):
            raise JobNotFound(f"There is no job #{job.id}.")  # another workspace's jobs stay private
        return render.job_line(job)
    return render.job_list(await service.active_jobs(origin))


async def _ephemeral(client: AsyncWebClient, origin: Origin, text: str) -> None:
    try:
        await client.chat_postEphemeral(
            channel=origin.channel_id, user=origin.user_id, thread_ts=origin.thread_id, text=text
        )
    except SlackApiError as error:
        log.warning("slack: could not answer %s (%s)", origin.user_id, error.response.get("error"))


async def _to_response_url(url: str, text: str) -> bool:
    """Answer through a ``response_url``; False when there is none or Slack refused it."""
    if not url:
        return False
    response = await AsyncWebhookClient(url).send(text=text, response_type="ephemeral", replace_original=False)
    return response.status_code == 200


async def _say_in_thread(client: AsyncWebClient, origin: Origin, text: str) -> None:
    """A visible reply in the request's thread; privately to the person if the bot can't post there."""
    try:
        await client.chat_postMessage(channel=origin.channel_id, thread_ts=origin.thread_id, text=text)
    except SlackApiError:
        if not await _to_response_url(origin.extra.get("response_url", ""), text):
            await _ephemeral(client, origin, text)
