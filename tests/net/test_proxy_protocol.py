"""PROXY protocol on real loopback sockets: `serve()` behind a "load balancer" (the test).

How this works: the proxy runs with `proxy_protocol.trusted` set and a scripted fake
upstream (tests/net/fakes.py); test clients play the load balancer by writing a v1 or v2
header before anything else. What is checked is what an operator relies on: the claimed
client address (from a trusted source) is the one in the logs, in the observer events
that feed metrics, in the connection limits and in the ID `x-originating-ip` sent
upstream; an untrusted source, a missing, late or malformed header is closed without a
greeting and the reason logged, without dialling the upstream; client bytes that arrive
with the header (a TLS ClientHello) are not lost; and with `send_upstream` the upstream
receives a v2 header naming the client. Logs are captured with structlog's
`capture_logs`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from imap_proxy.config import (
    IdConfig,
    LimitsConfig,
    ProxyConfig,
    ProxyProtocolConfig,
    TLSConfig,
    UpstreamConfig,
)
from imap_proxy.net.connection import LISTENER_TLS, ConnectionEvent, ConnectionOpened
from imap_proxy.net.proxy_protocol import (
    PrefixedStream,
    ProxyHeaderRefused,
    is_trusted,
    normalize_address,
    read_proxy_header,
)
from imap_proxy.net.server import ServerHandle, serve
from imap_proxy.wire.proxy_header import (
    ProxyHeader,
    encode_proxy_v1,
    encode_proxy_v2,
    parse_proxy_header,
)
from tests.net.fakes import LineClient, UpstreamScript, fake_imap_server
from tests.support.tls import TlsFiles

CLIENT = ("203.0.113.7", 51234)  # documentation range: only a header can claim it
BALANCER_TARGET = ("198.51.100.10", 143)


def config_for(upstream_port: int, **proxy_protocol: Any) -> ProxyConfig:
    settings = {"trusted": ["127.0.0.0/8"], "header_timeout": 2.0} | proxy_protocol
    return ProxyConfig(
        listen=["127.0.0.1:0"],
        upstream=UpstreamConfig(address=f"127.0.0.1:{upstream_port}"),
        id=IdConfig(forward_originating=True),
        proxy_protocol=ProxyProtocolConfig.model_validate(settings),
    )


async def open_client(handle: ServerHandle, header: bytes = b"", listener: str = "imap") -> Any:
    stream = await trio.open_tcp_stream("127.0.0.1", handle.port(listener))
    if header:
        await stream.send_all(header)
    return LineClient(stream)


async def stop(handle: ServerHandle, nursery: trio.Nursery) -> None:
    handle.drain()
    with trio.fail_after(5):
        await handle.wait_stopped()
    nursery.cancel_scope.cancel()


def events_named(
    logs: Sequence[Mapping[str, Any]], name: str, **fields: Any
) -> list[Mapping[str, Any]]:
    """Log entries of one event (capture_logs is process-wide: narrow it with `fields`)."""
    return [e for e in logs if e["event"] == name and fields.items() <= e.items()]


def local_port(client: LineClient) -> int:
    stream = client.stream
    assert isinstance(stream, trio.SocketStream)
    port: int = stream.socket.getsockname()[1]
    return port


# ---------------------------------------------------------------- trusted headers


@pytest.mark.parametrize("version", [1, 2])
async def test_header_from_trusted_source_sets_the_client_address_everywhere(
    version: int,
) -> None:
    header = (
        encode_proxy_v1(CLIENT, BALANCER_TARGET)
        if version == 1
        else encode_proxy_v2(CLIENT, BALANCER_TARGET)
    )
    script = UpstreamScript()
    observed: list[ConnectionEvent] = []
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            port = await fake_imap_server(nursery, script)
            handle: ServerHandle = await nursery.start(
                functools.partial(serve, config_for(port), observer=observed.append)
            )
            client = await open_client(handle, header)
            assert (await client.read_line()).startswith(b"* OK")
            await client.send(b'a1 ID ("name" "Thunderbird" "x-originating-ip" "6.6.6.6")\r\n')
            assert (await client.read_line()).startswith(b"a1 OK")
            await client.send(b"a2 LOGOUT\r\n")
            assert await client.read_line() == b"* BYE logging out\r\n"
            await client.read_until_eof()
            await stop(handle, nursery)

    # The ID sent upstream names the real client (and not what the client claimed).
    [id_line] = [line for line in script.received if b" ID " in line]
    assert b'"x-originating-ip" "203.0.113.7"' in id_line
    assert b'"x-originating-port" "51234"' in id_line
    assert b"6.6.6.6" not in id_line
    # Logs: the real client, and the balancer it came through.
    [opened] = events_named(logs, "connection opened", peer="203.0.113.7")
    assert opened["peer_port"] == 51234
    assert opened["proxied_by"] == "127.0.0.1"
    [closed] = events_named(logs, "connection closed", peer="203.0.113.7")
    assert closed["peer_port"] == 51234
    # The observer (metrics) sees it too.
    [event] = [e for e in observed if isinstance(e, ConnectionOpened)]
    assert (event.peer_address, event.peer_port) == CLIENT


async def test_local_header_keeps_the_socket_address() -> None:
    script = UpstreamScript()
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            port = await fake_imap_server(nursery, script)
            handle: ServerHandle = await nursery.start(serve, config_for(port))
            client = await open_client(handle, encode_proxy_v2(None, None))
            port = local_port(client)
            assert (await client.read_line()).startswith(b"* OK")
            await client.stream.aclose()
            with trio.fail_after(5):
                await handle.wait_all_gone()
            await stop(handle, nursery)
    [opened] = events_named(logs, "connection opened", peer_port=port)
    assert opened["peer"] == "127.0.0.1"


async def test_limits_count_the_real_client_address() -> None:
    script = UpstreamScript()
    async with trio.open_nursery() as nursery:
        port = await fake_imap_server(nursery, script)
        config = config_for(port).model_copy(
            update={"limits": LimitsConfig(max_connections=10, max_connections_per_ip=1)}
        )
        handle: ServerHandle = await nursery.start(serve, config)
        # Two clients through one balancer address: each is admitted once.
        first = await open_client(handle, encode_proxy_v2(CLIENT, BALANCER_TARGET))
        other = await open_client(handle, encode_proxy_v2(("192.0.2.55", 1), BALANCER_TARGET))
        assert (await first.read_line()).startswith(b"* OK")
        assert (await other.read_line()).startswith(b"* OK")
        again = await open_client(handle, encode_proxy_v2((CLIENT[0], 2), BALANCER_TARGET))
        assert await again.read_until_eof() == b"* BYE [UNAVAILABLE] Too many connections\r\n"
        for client in (first, other):
            await client.stream.aclose()
        await stop(handle, nursery)
    assert script.connections == 2


async def test_implicit_tls_client_hello_sent_with_the_header_is_not_lost(
    tls_files: TlsFiles,
) -> None:
    """The balancer forwards header and ClientHello in one segment; the handshake works."""
    script = UpstreamScript()
    async with trio.open_nursery() as nursery:
        port = await fake_imap_server(nursery, script)
        config = config_for(port).model_copy(
            update={
                "listen_tls": ["127.0.0.1:0"],
                "tls": TLSConfig(cert=tls_files.cert_file, key=tls_files.key_file),
            }
        )
        handle: ServerHandle = await nursery.start(serve, config)
        raw = await trio.open_tcp_stream("127.0.0.1", handle.port(LISTENER_TLS))
        joined = _HeaderInFirstWrite(raw, encode_proxy_v1(CLIENT, BALANCER_TARGET))
        tls = trio.SSLStream(joined, tls_files.client_context(), server_hostname="localhost")
        client = LineClient(tls)
        assert (await client.read_line()).startswith(b"* OK")
        assert joined.first_write_size > len(joined.header)  # really one write
        await client.send(b"a1 LOGOUT\r\n")
        assert await client.read_line() == b"* BYE logging out\r\n"
        await trio.aclose_forcefully(tls)
        await stop(handle, nursery)


class _HeaderInFirstWrite(trio.abc.Stream):
    def __init__(self, stream: trio.abc.Stream, header: bytes) -> None:
        self.stream = stream
        self.header = header
        self.first_write_size = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not self.first_write_size:
            data = self.header + bytes(data)
            self.first_write_size = len(data)
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.stream.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self.stream.aclose()


# ----------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("trusted", "header", "reason"),
    [
        # From outside the trusted ranges even a well-formed header is refused.
        (["10.0.0.0/8"], encode_proxy_v2(CLIENT, BALANCER_TARGET), "source address not in"),
        (["10.0.0.0/8", "::1/128"], b"", "source address not in"),
        # A trusted source that speaks IMAP (or anything else) instead of a header.
        (["127.0.0.1/32"], b"a001 LOGIN alice secret\r\n", "malformed PROXY header"),
        (["127.0.0.1/32"], b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "malformed PROXY header"),
        # A trusted source that says nothing (a client that waits for the greeting).
        (["127.0.0.1/32"], b"", "no complete PROXY header within"),
        (["127.0.0.1/32"], b"PROXY TCP4 1.2", "no complete PROXY header within"),
    ],
)
async def test_refused_without_greeting_and_logged(
    trusted: list[str], header: bytes, reason: str
) -> None:
    script = UpstreamScript()
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            port = await fake_imap_server(nursery, script)
            config = config_for(port, trusted=trusted, header_timeout=0.3)
            handle: ServerHandle = await nursery.start(serve, config)
            client = await open_client(handle, header)
            port = local_port(client)
            with trio.fail_after(10):
                assert await client.read_until_eof() == b""
            await stop(handle, nursery)
    assert script.connections == 0  # the upstream was never dialled
    [refused] = events_named(logs, "connection refused: PROXY protocol", peer_port=port)
    assert refused["reason"].startswith(reason), refused
    assert refused["peer"] == "127.0.0.1"
    assert refused["log_level"] == "warning"
    assert not events_named(logs, "connection opened", peer_port=port)


async def test_without_trusted_ranges_a_header_is_just_bad_imap() -> None:
    """PROXY protocol off: nobody can claim an address; the line reaches the session."""
    script = UpstreamScript()
    observed: list[ConnectionEvent] = []
    async with trio.open_nursery() as nursery:
        port = await fake_imap_server(nursery, script)
        handle: ServerHandle = await nursery.start(
            functools.partial(serve, config_for(port, trusted=[]), observer=observed.append)
        )
        client = await open_client(handle)
        assert (await client.read_line()).startswith(b"* OK")
        await client.send(encode_proxy_v1(CLIENT, BALANCER_TARGET))
        await client.send(b"a1 LOGOUT\r\n")
        assert await client.read_line() != b""
        await trio.aclose_forcefully(client.stream)
        await stop(handle, nursery)
    [event] = [e for e in observed if isinstance(e, ConnectionOpened)]
    assert event.peer_address == "127.0.0.1"


# ------------------------------------------------------------------ send_upstream


async def test_send_upstream_writes_a_v2_header_before_anything_else() -> None:
    seen: list[tuple[ProxyHeader, bytes]] = []

    async def header_reading_upstream(stream: trio.SocketStream) -> None:
        header, rest = await read_proxy_header(stream, timeout=5)
        seen.append((header, rest))
        await stream.send_all(b"* OK [CAPABILITY IMAP4rev1 ID] behind a header\r\n")
        line = LineClient(PrefixedStream(stream, rest))
        command = await line.read_line()
        await stream.send_all(command.split(b" ")[0] + b" OK done\r\n")
        await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, header_reading_upstream, 0, host="127.0.0.1")
        )
        upstream_port = listeners[0].socket.getsockname()[1]
        config = config_for(upstream_port, send_upstream=True)
        handle: ServerHandle = await nursery.start(serve, config)
        client = await open_client(handle, encode_proxy_v1(CLIENT, BALANCER_TARGET))
        assert (await client.read_line()).startswith(b"* OK")
        await client.send(b"a1 NOOP\r\n")
        assert await client.read_line() == b"a1 OK done\r\n"
        await trio.aclose_forcefully(client.stream)
        await stop(handle, nursery)
    [(header, rest)] = seen
    assert header.version == 2
    assert header.source == CLIENT
    assert header.destination == BALANCER_TARGET
    assert rest == b""


# ------------------------------------------------------------------ small helpers


async def test_read_proxy_header_keeps_the_bytes_after_it() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    await theirs.send_all(encode_proxy_v2(CLIENT, BALANCER_TARGET) + b"a1 NOOP\r\n")
    header, rest = await read_proxy_header(ours, timeout=1)
    assert header.source == CLIENT
    assert rest == b"a1 NOOP\r\n"
    prefixed = PrefixedStream(ours, rest)
    assert await prefixed.receive_some(3) == b"a1 "
    await theirs.send_all(b"more")
    assert await prefixed.receive_some() == b"NOOP\r\n"
    assert await prefixed.receive_some() == b"more"


async def test_read_proxy_header_refuses_eof() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    await theirs.send_all(b"PROXY TCP4")
    await theirs.aclose()
    with pytest.raises(ProxyHeaderRefused, match="incomplete PROXY header"):
        await read_proxy_header(ours, timeout=1)


def test_trust_checks_normalize_mapped_addresses() -> None:
    from ipaddress import ip_network

    networks = [ip_network("10.0.0.0/8"), ip_network("2001:db8::/32")]
    assert is_trusted("10.1.2.3", networks)
    assert is_trusted("::ffff:10.1.2.3", networks)
    assert is_trusted("2001:db8::5", networks)
    assert not is_trusted("11.0.0.1", networks)
    assert not is_trusted("unknown", networks)
    assert normalize_address("::ffff:192.0.2.1") == "192.0.2.1"
    assert parse_proxy_header(encode_proxy_v2(("::ffff:192.0.2.1", 1), ("::1", 2)))
