"""Test doubles for the net layer: a scripted IMAP upstream, a line client, dialers.

How this works: `serve_fake_imap(stream)` speaks just enough IMAP on any trio stream to
stand in for an upstream: a greeting with capabilities, then one tagged answer per
command line (NOOP, CAPABILITY, LOGIN, STARTTLS with a real TLS upgrade, LOGOUT, SLOW
answered after 0.3 s, HANG never answered, and a generic OK for the rest); it records
what it received. `fake_imap_server()` runs it as a TCP server on a free port.
`LineClient` reads CRLF lines from a stream. `MemoryDialer` hands the connection one end
of an in-memory stream pair and runs the fake upstream on the other end, so connection
tests need no sockets at all.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
import trio.testing

from imap_proxy.net.upstream import UpstreamUnavailable

CAPABILITIES = b"IMAP4rev1 LITERAL+ ID STARTTLS"
GREETING = b"* OK [CAPABILITY " + CAPABILITIES + b"] fake upstream ready\r\n"


@dataclass(slots=True)
class UpstreamScript:
    """What the fake upstream says first, what it received, how it behaves."""

    greeting: bytes = GREETING
    received: list[bytes] = field(default_factory=list)
    tls_context: ssl.SSLContext | None = None  # enables STARTTLS
    read: bool = True  # False: never read after the greeting (a stuck server)
    connections: int = 0


class LineClient:
    """Reads CRLF-terminated lines from a stream, with a buffer."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def read_line(self) -> bytes:
        """One line, CRLF included; b"" at EOF with nothing buffered."""
        while b"\r\n" not in self._buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                rest = bytes(self._buffer)
                self._buffer.clear()
                return rest
            self._buffer += data
        index = self._buffer.index(b"\r\n") + 2
        line = bytes(self._buffer[:index])
        del self._buffer[:index]
        return line

    async def read_until_eof(self) -> bytes:
        """Everything up to EOF (or a reset); then the stream is closed."""
        out = bytes(self._buffer)
        self._buffer.clear()
        try:
            while data := await self.stream.receive_some(65536):
                out += data
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(self.stream)
        return out

    def take_buffered(self) -> bytes:
        out = bytes(self._buffer)
        self._buffer.clear()
        return out


async def serve_fake_imap(stream: trio.abc.Stream, script: UpstreamScript) -> None:
    """Play the upstream on `stream` until the peer goes away or LOGOUT."""
    script.connections += 1
    client = LineClient(stream)
    try:
        await client.send(script.greeting)
        if not script.read:
            await trio.sleep_forever()
        while True:
            line = await client.read_line()
            if not line:
                return
            script.received.append(line)
            words = line.rstrip(b"\r\n").split(b" ")
            tag = words[0]
            verb = words[1].upper() if len(words) > 1 else b""
            if verb == b"LOGOUT":
                await client.send(b"* BYE logging out\r\n" + tag + b" OK LOGOUT completed\r\n")
                return
            if verb == b"CAPABILITY":
                await client.send(b"* CAPABILITY " + CAPABILITIES + b"\r\n" + tag + b" OK done\r\n")
            elif verb == b"HANG":
                continue  # never answered
            elif verb == b"SLOW":
                await trio.sleep(0.3)
                await client.send(tag + b" OK SLOW completed\r\n")
            elif verb == b"LOGIN":
                await client.send(tag + b" OK [CAPABILITY " + CAPABILITIES + b"] Logged in\r\n")
            elif verb == b"STARTTLS" and script.tls_context is not None:
                await client.send(tag + b" OK Begin TLS negotiation now\r\n")
                tls = trio.SSLStream(stream, script.tls_context, server_side=True)
                await tls.do_handshake()
                client = LineClient(tls)
                stream = tls
            else:
                await client.send(tag + b" OK " + verb + b" completed\r\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
        return
    finally:
        await trio.aclose_forcefully(stream)


async def fake_imap_server(
    nursery: trio.Nursery, script: UpstreamScript, tls_context: ssl.SSLContext | None = None
) -> int:
    """A fake upstream on 127.0.0.1 (implicit TLS when `tls_context`); returns its port."""

    async def handler(stream: trio.SocketStream) -> None:
        if tls_context is None:
            await serve_fake_imap(stream, script)
            return
        tls = trio.SSLStream(stream, tls_context, server_side=True)
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, ssl.SSLError):
            await trio.aclose_forcefully(tls)
            return
        await serve_fake_imap(tls, script)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


def free_port_refusing() -> int:
    """A loopback port with nothing listening (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


StreamPair = Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]


class MemoryDialer:
    """Dials an in-memory upstream: the fake IMAP server runs on the far end."""

    def __init__(
        self,
        nursery: trio.Nursery,
        script: UpstreamScript,
        *,
        pair: StreamPair = trio.testing.memory_stream_pair,
        fail_with: str | None = None,
        server: Callable[[trio.abc.Stream, UpstreamScript], Awaitable[None]] = serve_fake_imap,
    ) -> None:
        self.nursery = nursery
        self.script = script
        self.pair = pair
        self.fail_with = fail_with
        self.server = server
        self.dialled = 0

    async def connect(self) -> trio.abc.Stream:
        self.dialled += 1
        if self.fail_with is not None:
            raise UpstreamUnavailable(self.fail_with)
        ours, theirs = self.pair()
        self.nursery.start_soon(self.server, theirs, self.script)
        return ours

    async def start_tls(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        raise UpstreamUnavailable("TLS handshake failed")
