"""Connecting to the upstream IMAP server, with every failure turned into one exception.

How this works: `connect_upstream()` opens a TCP connection (a numeric address directly,
a host name with trio's happy-eyeballs `open_tcp_stream`; TCP_NODELAY on) within
`connect_timeout`, and for `security: tls` wraps it in a `trio.SSLStream` and completes
the handshake within the same deadline, with SNI and the certificate checked against
`server_name` or the host. `start_upstream_tls()` does the same handshake on an existing
stream, for STARTTLS (the session decides when).

Whatever goes wrong - refused, unreachable, DNS, timeout, certificate, handshake, EOF - is
translated here, once, into `UpstreamUnavailable(reason)`; the reason is a short fixed
phrase that is safe to put in a `* BYE [UNAVAILABLE]` line (no host names, no paths).
`UpstreamDialer` bundles the configuration with its SSL context, built once per server;
the connection layer depends only on the small `Dialer` protocol, so tests can dial
memory streams.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from typing import Protocol

import trio

from imap_proxy.config import UpstreamConfig, UpstreamSecurity
from imap_proxy.net.tls import upstream_server_name, upstream_ssl_context


class UpstreamUnavailable(Exception):
    """The upstream cannot be reached or secured; `reason` is fit to show a client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Dialer(Protocol):
    """What a client connection needs to reach the upstream."""

    async def connect(self) -> trio.abc.Stream: ...

    async def start_tls(self, stream: trio.abc.Stream) -> trio.abc.Stream: ...


def _all_causes(exc: BaseException) -> list[BaseException]:
    """The exception and, for trio's "all attempts failed" OSError, each attempt's error."""
    found: list[BaseException] = [exc]
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        found.extend(cause.exceptions)
    elif cause is not None:
        found.append(cause)
    return found


def describe_failure(exc: BaseException) -> str:
    """A short, client-safe phrase for why connecting or the handshake failed."""
    causes = _all_causes(exc)
    if any(isinstance(c, ssl.SSLCertVerificationError) for c in causes):
        return "certificate verify failed"
    if any(isinstance(c, ssl.SSLError) for c in causes):
        return "TLS handshake failed"
    if any(isinstance(c, trio.TooSlowError | TimeoutError) for c in causes):
        return "timed out"
    if any(isinstance(c, socket.gaierror) for c in causes):
        return "host name not resolved"
    if causes[1:] and all(isinstance(c, ConnectionRefusedError) for c in causes[1:]):
        return "connection refused"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if any(isinstance(c, ConnectionResetError) for c in causes):
        return "connection reset"
    if any(isinstance(c, trio.BrokenResourceError | trio.ClosedResourceError) for c in causes):
        return "connection closed"
    return "connection failed"


def _set_nodelay(stream: trio.abc.Stream) -> None:
    if isinstance(stream, trio.SocketStream):
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)


async def _open_tcp(host: str, port: int) -> trio.SocketStream:
    """A TCP connection: a numeric address is dialled directly (one socket, no resolver,
    no happy-eyeballs nursery: a login's cheapest connect); a name goes through trio's
    `open_tcp_stream`, which tries each address it resolves to."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return await trio.open_tcp_stream(host, port)
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def _handshake(
    stream: trio.abc.Stream, context: ssl.SSLContext, server_name: str
) -> trio.SSLStream[trio.abc.Stream]:
    ssl_stream = trio.SSLStream(stream, context, server_hostname=server_name)
    await ssl_stream.do_handshake()
    return ssl_stream


async def connect_upstream(
    up: UpstreamConfig, ssl_ctx: ssl.SSLContext | None = None
) -> trio.abc.Stream:
    """A connected (and, for `security: tls`, handshaken) stream to the upstream.

    Raises `UpstreamUnavailable` for every failure, including `connect_timeout` expiring.
    """
    host, port = up.host_port
    stream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(up.connect_timeout):
            stream = await _open_tcp(host, port)
            _set_nodelay(stream)
            if up.security is UpstreamSecurity.TLS:
                context = ssl_ctx if ssl_ctx is not None else upstream_ssl_context(up)
                stream = await _handshake(stream, context, upstream_server_name(up))
    except (OSError, ssl.SSLError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise UpstreamUnavailable(describe_failure(exc)) from exc
    return stream


async def start_upstream_tls(
    stream: trio.abc.Stream, up: UpstreamConfig, ssl_ctx: ssl.SSLContext | None = None
) -> trio.abc.Stream:
    """STARTTLS towards the upstream: handshake on `stream` within `connect_timeout`."""
    context = ssl_ctx if ssl_ctx is not None else upstream_ssl_context(up)
    try:
        with trio.fail_after(up.connect_timeout):
            return await _handshake(stream, context, upstream_server_name(up))
    except (
        OSError,
        ssl.SSLError,
        trio.TooSlowError,
        trio.BrokenResourceError,
        trio.ClosedResourceError,
    ) as exc:
        raise UpstreamUnavailable(describe_failure(exc)) from exc


class UpstreamDialer:
    """The configured upstream with its SSL context (built once, shared by connections)."""

    def __init__(self, up: UpstreamConfig, ssl_ctx: ssl.SSLContext | None = None) -> None:
        self.config = up
        if ssl_ctx is None and up.security is not UpstreamSecurity.PLAIN:
            ssl_ctx = upstream_ssl_context(up)
        self.ssl_context = ssl_ctx

    async def connect(self) -> trio.abc.Stream:
        return await connect_upstream(self.config, self.ssl_context)

    async def start_tls(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        return await start_upstream_tls(stream, self.config, self.ssl_context)
