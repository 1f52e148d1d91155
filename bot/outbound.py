"""Where videobot's own HTTP requests may go: public addresses, and the hosts an admin configured.

A callback URL comes from an API caller and a ``video_url`` (or a redirect) from a provider;
either could point the bot at ``127.0.0.1:6379``, ``169.254.169.254`` or a service on the LAN.
So every outbound request of ``ProviderClient`` (every backend) and of the webhook notifier goes
through ``GuardedTransport``, which, for each request and for every redirect hop (httpx sends
each hop through the transport):

- lets through hosts an admin configured: a backend's base URL (a self-hosted worker on the LAN
  is legitimate), the chat platforms' API URLs, and ``VIDEOBOT_ALLOWED_HOSTS`` (``host`` for any
  port, ``host:port`` for one);
- otherwise resolves the name and refuses it unless *every* address it resolves to is public
  (not loopback, private, link-local, CGNAT, multicast, reserved or unspecified), then connects
  to the address it checked (TLS still verifies the name), so a second lookup cannot rebind it;
- refuses any scheme but http and https.

A refusal raises ``BlockedDestination``; callers report it as the other side's fault.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = [
    "BlockedDestination",
    "GuardedTransport",
    "OutboundPolicy",
    "allow",
    "configure",
    "configured_hosts",
    "guarded_client",
    "host_rule",
]

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""Returns every address (as text) that a host name resolves to."""

_DEFAULT_PORTS = {"http": 80, "https": 443}


class BlockedDestination(httpx.RequestError):
    """An outbound request to an address videobot must not reach (or a scheme it does not speak)."""


@dataclass(frozen=True)
class HostRule:
    host: str
    port: int | None  # None: any port

    def matches(self, host: str, port: int) -> bool:
        return self.host == host and (self.port is None or self.port == port)


def host_rule(entry: str) -> HostRule:
    """``host``, ``host:port``, ``[v6]:port`` or a whole URL (its host and port) as a rule."""
    text = entry.strip()
    if "://" in text:
        url = httpx.URL(text)
        return HostRule(_normal(url.host), url.port or _DEFAULT_PORTS.get(url.scheme))
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
        return HostRule(_normal(host), int(port) if port.isdigit() else None)
    if text.count(":") == 1:
        host, port = text.split(":")
        if port.isdigit():
            return HostRule(_normal(host), int(port))
    return HostRule(_normal(text), None)


def _normal(host: str) -> str:
    host = host.strip().strip("[]").rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


async def _system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


_configured: list[HostRule] = []
_resolver: list[Resolver] = [_system_resolver]


def configure(hosts: Iterable[str] = (), *, resolver: Resolver | None = None) -> None:
    """Set the process's admin-configured hosts (``VIDEOBOT_ALLOWED_HOSTS``, chat API URLs) and,
    for tests, the name resolver. Called once by the composition root."""
    _configured[:] = [host_rule(h) for h in hosts if h.strip()]
    _resolver[:] = [resolver or _system_resolver]


def allow(*hosts: str) -> None:
    """Add admin-configured hosts to those already set."""
    _configured.extend(host_rule(h) for h in hosts if h.strip())


def configured_hosts() -> tuple[HostRule, ...]:
    return tuple(_configured)


def is_public(address: str) -> bool:
    """Whether an address is on the public internet (not loopback, private, link-local …)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class OutboundPolicy:
    """The rule for one client: the process's configured hosts plus ``hosts`` (a backend's URL)."""

    def __init__(self, hosts: Iterable[str] = ()) -> None:
        self._own = [host_rule(h) for h in hosts if h and h.strip()]

    def configured(self, host: str, port: int) -> bool:
        host = _normal(host)
        return any(rule.matches(host, port) for rule in (*self._own, *_configured))

    async def check(self, url: httpx.URL) -> str | None:
        """Refuse ``url`` with ``BlockedDestination`` unless it may be reached. Returns the
        checked address to connect to, or None for a configured host (connected as named)."""
        if url.scheme not in _DEFAULT_PORTS:
            raise BlockedDestination(f"the link uses the scheme {url.scheme!r}; only http and https are followed")
        host = url.host
        if not host:
            raise BlockedDestination("the link has no host")
        port = url.port or _DEFAULT_PORTS[url.scheme]
        if self.configured(host, port):
            return None
        try:
            literal = ipaddress.ip_address(_normal(host))
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                addresses = await _resolver[0](host, port)
            except (OSError, UnicodeError) as exc:
                raise BlockedDestination(f"the host {host} cannot be resolved") from exc
        if not addresses:
            raise BlockedDestination(f"the host {host} cannot be resolved")
        for address in addresses:
            if not is_public(address):
                raise BlockedDestination(
                    f"{host} is a loopback, private or link-local address, which videobot does not reach "
                    f"(an admin may list it in VIDEOBOT_ALLOWED_HOSTS)"
                )
        return addresses[0]


class GuardedTransport(httpx.AsyncBaseTransport):
    """Checks every request (so every redirect hop) against an ``OutboundPolicy`` before it
    reaches ``inner``; a checked public host is connected to at the address that was checked."""

    def __init__(self, inner: httpx.AsyncBaseTransport, policy: OutboundPolicy, *, pin: bool = True) -> None:
        self._inner = inner
        self.policy = policy
        self._pin = pin  # not through a proxy: its tunnel would check the certificate against the address

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            address = await self.policy.check(request.url)
        except BlockedDestination as blocked:
            blocked.request = request
            raise
        if self._pin and address is not None and _normal(request.url.host) != _normal(address):
            pinned = httpx.Request(
                request.method,
                request.url.copy_with(host=address),
                headers=request.headers,  # Host: keeps the name
                stream=request.stream,
                extensions={**request.extensions, "sni_hostname": request.url.host},
            )
            return await self._inner.handle_async_request(pinned)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def guarded_client(
    *, hosts: Iterable[str] = (), transport: httpx.AsyncBaseTransport | None = None, **options: Any
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose every request passes the guard; ``hosts`` are allowed
    besides the configured ones (a backend's own URL). The client is built as httpx builds it
    (so ``HTTPS_PROXY`` / ``NO_PROXY`` still apply), then each of its transports is wrapped."""
    policy = OutboundPolicy(hosts)
    client = httpx.AsyncClient(transport=transport, **options)
    client._transport = GuardedTransport(client._transport, policy)
    client._mounts = {
        pattern: None if mounted is None else GuardedTransport(mounted, policy, pin=False)
        for pattern, mounted in client._mounts.items()
    }
    return client
