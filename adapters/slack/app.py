"""Building and running the Slack side of videobot: the Bolt ``AsyncApp`` and its connection.

Two ways to hear from Slack, chosen by settings:

- Socket Mode (``SLACK_APP_TOKEN`` set, the default the README walks through): the bot dials
  out to Slack over a websocket, so it needs no public URL, certificate or open port.
- HTTP mode (no app token): Slack POSTs every request (commands, events, interactivity) to
  ``/slack/events`` on ``SLACK_PORT``, each signed with ``SLACK_SIGNING_SECRET``; for installs
  behind a load balancer. Bolt checks the signature and timestamp of every request.

Every Web API call, Socket Mode's ``apps.connections.open`` included, goes to
``SLACK_API_URL``: Slack's by default, another host for GovSlack, a fake one in the tests.

Each request, from the moment its connection is accepted (HTTP mode) or it reaches Bolt (Socket
Mode) until its ack is sent, is served in the core's ``Foreground``: the runner starts no new
step meanwhile, so a runner busy with hundreds of jobs does not delay acks.

In HTTP mode the server and Bolt run on an ``AckLoop`` (their own event loop and thread), with a
Web API client of their own, and reach the core through a ``CoreBridge``: an ack never waits
for a turn of the core's loop. Socket Mode stays on the core's loop: its acks go back over one
websocket the SDK owns, and moving that client to another thread is left for when it is needed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.ack_loop import AckLoop, CoreBridge, finish_tasks
from adapters.slack.files import SlackFiles
from adapters.slack.listeners import register
from adapters.slack.notifier import SlackNotifier
from bot.errors import ConfigurationError
from bot.foreground import Foreground
from bot.service import JobService
from bot.serving import guard_app, runner_options
from bot.settings import Settings

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
RATE_LIMIT_RETRIES = 3
"""How many times one Web API call is repeated after a 429, each after its ``Retry-After``."""


def web_client(token: str, base_url: str) -> AsyncWebClient:
    """The Web API client every Slack call goes through.

    A 429 (``chat.update`` past ~50/min, say) is retried by slack_sdk's own rate-limit handler
    after the ``Retry-After`` Slack sent, so one busy minute does not fail a delivery or burn a
    retry of the runner's generic delivery backoff.
    """
    client = AsyncWebClient(token=token, base_url=base_url)
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES))
    return client


class SlackSetupError(ConfigurationError):
    """The Slack settings are missing or Slack refused them; the message names which setting
    (never its value), so it can be shown or logged as it is."""


class SlackAdapter:
    """The running Slack connection. ``start()`` returns once Slack can reach the bot."""

    name = "slack"

    def __init__(self, settings: Settings, service: JobService, *, connect_timeout_s: float = 30.0) -> None:
        if not settings.slack_bot_token:
            raise SlackSetupError("SLACK_BOT_TOKEN is not set.")
        if not settings.slack_app_token and not settings.slack_signing_secret:
            raise SlackSetupError("Set SLACK_APP_TOKEN for Socket Mode, or SLACK_SIGNING_SECRET for HTTP mode.")
        self._connect_timeout_s = connect_timeout_s
        self.socket_mode = bool(settings.slack_app_token)
        self._settings = settings
        self._foreground = service.foreground
        self.client = web_client(settings.slack_bot_token, settings.slack_api_url)
        self.notifier = SlackNotifier(self.client)
        # HTTP mode: the listeners run on the ack loop, with a client whose session lives there.
        self._acks = None if self.socket_mode else AckLoop()
        self._bridge = None if self.socket_mode else CoreBridge(service)
        self._ack_client = (
            self.client if self.socket_mode else web_client(settings.slack_bot_token, settings.slack_api_url)
        )
        self._core_loop: asyncio.AbstractEventLoop | None = None
        self.app = AsyncApp(
            client=self._ack_client,
            signing_secret=settings.slack_signing_secret,
            # Socket Mode requests arrive over an authenticated websocket and carry no signature.
            request_verification_enabled=not self.socket_mode,
            logger=logging.getLogger("adapters.slack.bolt"),
        )
        register(self.app, cast(JobService, self._bridge or service), SlackFiles(self._ack_client))
        self._socket: AsyncSocketModeHandler | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ack_session: aiohttp.ClientSession | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Check the bot token, then connect (Socket Mode) or listen (HTTP mode).

        Raises ``SlackSetupError`` rather than retrying forever when Slack refuses a token.
        """
        # One pooled session for every Web API call, instead of a connection per call.
        self._session = aiohttp.ClientSession()
        self.client.session = self._session
        try:
            await self.client.auth_test()
        except SlackApiError as error:
            await self.stop()
            raise SlackSetupError(f"Slack refused SLACK_BOT_TOKEN ({error.response.get('error')}).") from None
        if self.socket_mode:
            await self._connect_socket()
            return
        assert self._acks is not None and self._bridge is not None
        self._core_loop = asyncio.get_running_loop()
        self._bridge.attach(self._core_loop)
        self._acks.start()
        try:
            await self._acks.call(self._listen())
        except BaseException:
            await self.stop()
            raise
        log.info("slack: listening for Slack requests on port %s at %s", self.port, EVENTS_PATH)

    async def _listen(self) -> None:
        """On the ack loop: the listeners' Web API session, and the server."""
        self._ack_session = aiohttp.ClientSession()
        self._ack_client.session = self._ack_session
        web_app = guard_app(web.Application())
        web_app.router.add_post(EVENTS_PATH, self._handle)
        self._runner = _ArrivalsRunner(self._foreground, web_app, access_log=None, **runner_options())
        await self._runner.setup()
        # A burst of Slack requests must queue, not be dropped: a dropped SYN costs a second.
        site = web.TCPSite(self._runner, self._settings.http_host, self._settings.slack_port, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _connect_socket(self) -> None:
        # The SDK retries a refused app token forever; give up after a while and say why.
        self._socket = _AckFirstSocketModeHandler(
            self._foreground, self.app, self._settings.slack_app_token, web_client=self.client
        )
        try:
            await asyncio.wait_for(self._socket.connect_async(), self._connect_timeout_s)
        except TimeoutError:
            await self.stop()
            raise SlackSetupError(
                "Could not open a Socket Mode connection. Check SLACK_APP_TOKEN (an app-level token with "
                "the connections:write scope) and that Socket Mode is turned on for the app."
            ) from None
        log.info("slack: connected in Socket Mode")

    async def stop(self) -> None:
        if self._socket is not None:
            await self._socket.close_async()
            self._socket = None
        if self._acks is not None and self._acks.running:
            await self._acks.call(self._close_server())
            await self._acks.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _close_server(self) -> None:
        """On the ack loop: stop listening, then close the listeners' session."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await finish_tasks()  # work that follows an ack may still be calling the Web API
        if self._ack_session is not None:
            await self._ack_session.close()
            self._ack_session = None

    async def _handle(self, request: web.Request) -> web.Response:
        assert self._core_loop is not None
        with self._foreground.serving_from_thread(self._core_loop):
            response = await self.app.async_dispatch(await to_bolt_request(request))
            return await to_aiohttp_response(response)


class _ArrivalsRunner(web.AppRunner):
    """An ``AppRunner`` whose sites tell the ``Foreground`` of each connection as it is accepted:
    on a busy loop a request takes a while from there to its handler, time in which the runner
    would otherwise start more work ahead of it."""

    def __init__(self, foreground: Foreground, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._foreground = foreground

    @property
    def server(self) -> Callable[[], RequestHandler[web.Request]] | None:  # type: ignore[override]
        server = super().server
        if server is None:
            return None

        def accepted() -> RequestHandler[web.Request]:
            self._foreground.arrived()
            return server()

        return accepted


class _AckFirstSocketModeHandler(AsyncSocketModeHandler):
    """Socket Mode's handler, serving each request (dispatch and the ack sent back over the
    websocket) in the core's ``Foreground``, as the HTTP handler does."""

    def __init__(self, foreground: Foreground, *args: Any, **kwargs: Any) -> None:
        self._foreground = foreground
        super().__init__(*args, **kwargs)

    async def handle(self, client: SocketModeClient, req: SocketModeRequest) -> None:
        with self._foreground.serving():
            await super().handle(client, req)


def build_adapter(settings: Settings, service: JobService) -> SlackAdapter:
    """The composition root's entry: build the adapter and let the core notify through it."""
    adapter = SlackAdapter(settings, service)
    service.register_notifier(adapter.notifier)
    return adapter
