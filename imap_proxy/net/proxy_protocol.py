"""PROXY protocol on the wire: reading the header off an accepted socket, sending one upstream.

How this works: with `proxy_protocol.trusted` set, every listener expects each connection
to open with a PROXY v1 or v2 header (as HAProxy's `accept-proxy` and Dovecot's
`haproxy = yes` do). `ProxyProtocolPolicy.admit(stream, peer, local)` decides per
connection, before any IMAP byte is sent:

* a source address outside `trusted` is refused at once (it could claim any address);
* from a trusted source, the header is read within `header_timeout`, parsed by the sans-IO
  `imap_proxy.wire.proxy_header`, and its source address becomes the client's address
  (LOCAL/UNKNOWN headers keep the socket's address: a load balancer's health check);
* no header, a malformed one, or none within the timeout is refused.

A refusal is a `ProxyHeaderRefused(reason)`: the caller closes the socket without a
greeting and logs the reason. Bytes that arrive in the same read as the header (a TLS
ClientHello, say) are not lost: the stream is wrapped in a `PrefixedStream` that returns
them first.

Towards the upstream, `ProxyHeaderDialer` opens the TCP connection, writes a v2 header
naming the real client and the address it connected to, and only then starts TLS (for
`security: tls`), reusing `imap_proxy.net.upstream` for connecting, the handshake and the
translation of failures into `UpstreamUnavailable`.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import trio

from imap_proxy.config import ProxyProtocolConfig, UpstreamConfig, UpstreamSecurity
from imap_proxy.net.upstream import (
    UpstreamUnavailable,
    connect_upstream,
    describe_failure,
    start_upstream_tls,
)
from imap_proxy.wire.proxy_header import (
    ProxyHeader,
    ProxyHeaderError,
    encode_proxy_v2,
    parse_proxy_header,
)

READ_SIZE: Final = 4096

Address = tuple[str, int]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyHeaderRefused(Exception):
    """The connection must be closed without a greeting; `reason` says why (for the log)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AdmittedConnection:
    """A connection past the PROXY header: the stream to use and the real addresses."""

    stream: trio.abc.Stream
    peer: Address  # the real client (or the socket's peer for LOCAL/UNKNOWN)
    local: Address  # the address the client connected to
    header: ProxyHeader | None  # None when PROXY protocol is off


def normalize_address(address: str) -> str:
    """An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) as plain IPv4; others unchanged."""
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


def is_trusted(address: str, networks: Sequence[Network]) -> bool:
    """Whether `address` (a socket peer address) lies in one of `networks`."""
    try:
        parsed = ipaddress.ip_address(normalize_address(address))
    except ValueError:
        return False
    return any(parsed in network for network in networks)


class PrefixedStream(trio.abc.Stream):
    """A stream that first returns `prefix`, then whatever the wrapped stream receives."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            out, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return out
        return bytes(await self.stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def read_proxy_header(stream: trio.abc.Stream, timeout: float) -> tuple[ProxyHeader, bytes]:
    """The header at the start of `stream` and the bytes received after it.

    Raises `ProxyHeaderRefused` when the peer sends something else, closes first, or takes
    longer than `timeout`.
    """
    buffer = bytearray()
    with trio.move_on_after(timeout):
        while True:
            try:
                parsed = parse_proxy_header(bytes(buffer))
            except ProxyHeaderError as exc:
                raise ProxyHeaderRefused(f"malformed PROXY header: {exc.text}") from exc
            if isinstance(parsed, ProxyHeader):
                return parsed, bytes(buffer[parsed.length :])
            try:
                data = await stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise ProxyHeaderRefused(
                    f"connection lost before the PROXY header: {describe_failure(exc)}"
                ) from exc
            if not data:
                what = "no PROXY header" if not buffer else "incomplete PROXY header"
                raise ProxyHeaderRefused(f"{what}: connection closed")
            buffer += data
    raise ProxyHeaderRefused(f"no complete PROXY header within {timeout:g} s")


class ProxyProtocolPolicy:
    """What the configuration says about PROXY headers on the listeners."""

    def __init__(self, config: ProxyProtocolConfig) -> None:
        self.trusted: list[Network] = list(config.trusted)
        self.header_timeout = config.header_timeout
        self.send_upstream = config.send_upstream

    @property
    def enabled(self) -> bool:
        return bool(self.trusted)

    async def admit(
        self, stream: trio.abc.Stream, peer: Address, local: Address
    ) -> AdmittedConnection:
        """The connection with its real client address, or `ProxyHeaderRefused`."""
        if not self.enabled:
            return AdmittedConnection(stream, peer, local, None)
        if not is_trusted(peer[0], self.trusted):
            raise ProxyHeaderRefused("source address not in proxy_protocol.trusted")
        header, rest = await read_proxy_header(stream, self.header_timeout)
        if rest:
            stream = PrefixedStream(stream, rest)
        if header.source is None or header.destination is None:
            return AdmittedConnection(stream, peer, local, header)
        source = (normalize_address(header.source[0]), header.source[1])
        destination = (normalize_address(header.destination[0]), header.destination[1])
        return AdmittedConnection(stream, source, destination, header)


class ProxyHeaderDialer:
    """Dial the upstream, send a v2 PROXY header for this client, then start TLS if asked."""

    def __init__(
        self,
        upstream: UpstreamConfig,
        ssl_context: ssl.SSLContext | None,
        *,
        source: Address,
        destination: Address,
    ) -> None:
        self.config = upstream
        self.ssl_context = ssl_context
        self.header = encode_proxy_v2(_ip_or_none(source), _ip_or_none(destination))

    async def connect(self) -> trio.abc.Stream:
        plain = self.config.model_copy(update={"security": UpstreamSecurity.PLAIN})
        stream = await connect_upstream(plain)
        try:
            with trio.fail_after(self.config.connect_timeout):
                await stream.send_all(self.header)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            await trio.aclose_forcefully(stream)
            raise UpstreamUnavailable(describe_failure(exc)) from exc
        if self.config.security is UpstreamSecurity.TLS:
            try:
                return await start_upstream_tls(stream, self.config, self.ssl_context)
            except UpstreamUnavailable:
                await trio.aclose_forcefully(stream)
                raise
        return stream

    async def start_tls(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        return await start_upstream_tls(stream, self.config, self.ssl_context)


def _ip_or_none(address: Address) -> Address | None:
    """`address` if its host is an IP address (a v2 header can carry nothing else)."""
    try:
        ipaddress.ip_address(address[0])
    except ValueError:
        return None
    return address
