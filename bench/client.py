"""Minimal IMAP clients for load generation: one blocking, one asyncio.

How this works: both speak just enough IMAP to drive a server or proxy hard and cheaply.
A command is sent as one write; responses are read line by line, and a line ending in a
literal announcement `{n}` is followed by exactly n octets, which the blocking client
reads into one reusable buffer (so the client's own cost per FETCHed byte stays small and
equal for every target). `command()` returns when the tagged response arrives and raises
`ImapError` on anything but OK. Sockets get TCP_NODELAY, as real clients do.
Every read has a timeout, so no workload can hang: a stuck target is an error, not a wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import socket
import typing
from dataclasses import dataclass, field
from typing import Final

LITERAL_AT_END: Final = re.compile(rb"\{(\d+)\+?\}\r\n\Z")
READ_BUFFER: Final = 1 << 20
EXISTS_RE: Final = re.compile(rb"^\* (\d+) EXISTS", re.IGNORECASE)


class ImapError(Exception):
    """The server answered NO/BAD/BYE, closed the connection, or broke the protocol."""


@dataclass(slots=True)
class Reply:
    """What one command produced: the tagged line, untagged lines, literal totals."""

    tagged: bytes
    untagged: list[bytes] = field(default_factory=list)
    literal_octets: int = 0
    literals: int = 0

    def exists(self) -> int | None:
        for line in self.untagged:
            found = EXISTS_RE.match(line)
            if found:
                return int(found.group(1))
        return None


def check_tagged(tag: bytes, line: bytes, what: str) -> None:
    status = line[len(tag) + 1 :].split(b" ", 1)[0].upper()
    if status != b"OK":
        raise ImapError(f"{what}: {line[:200].decode('ascii', 'replace').strip()}")


class BlockingImap:
    """A blocking IMAP connection (greeting read on connect)."""

    def __init__(self, host: str, port: int, *, timeout: float = 60.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._file = typing.cast(io.BufferedReader, self.sock.makefile("rb", buffering=READ_BUFFER))
        self._literal_buffer = bytearray(READ_BUFFER)
        self._counter = 0
        self.greeting = self._readline()
        if not self.greeting.startswith(b"* OK"):
            raise ImapError(f"greeting: {self.greeting[:200]!r}")

    def _readline(self) -> bytes:
        line = self._file.readline()
        if not line.endswith(b"\n"):
            raise ImapError("connection closed by the server")
        return line

    def _skip_literal(self, size: int) -> None:
        """Read `size` octets into the reusable buffer (content not kept)."""
        if size > len(self._literal_buffer):
            self._literal_buffer = bytearray(size)
        view = memoryview(self._literal_buffer)[:size]
        while view:
            got = self._file.readinto(view)
            if not got:
                raise ImapError("connection closed inside a literal")
            view = view[got:]

    def next_tag(self) -> bytes:
        self._counter += 1
        return b"b%d" % self._counter

    def read_reply(self, tag: bytes, what: str, *, keep_untagged: bool = True) -> Reply:
        reply = Reply(b"")
        while True:
            line = self._readline()
            while True:
                found = LITERAL_AT_END.search(line)
                if found is None:
                    break
                size = int(found.group(1))
                self._skip_literal(size)
                reply.literal_octets += size
                reply.literals += 1
                line = self._readline()  # the rest of the message, after the literal
            if line.startswith(tag + b" "):
                check_tagged(tag, line, what)
                reply.tagged = line
                return reply
            if line.startswith(b"* BYE") and what.upper() != "LOGOUT":
                raise ImapError(f"{what}: {line[:200]!r}")
            if keep_untagged:
                reply.untagged.append(line)

    def command(self, text: str, *, keep_untagged: bool = True) -> Reply:
        tag = self.next_tag()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        return self.read_reply(tag, text.split(" ", 1)[0], keep_untagged=keep_untagged)

    def login(self, user: str, password: str) -> Reply:
        return self.command(f'LOGIN "{user}" "{password}"')

    def append(self, mailbox: str, message: bytes, flags: str = "") -> Reply:
        """APPEND with a synchronizing literal (works whatever the server advertises)."""
        tag = self.next_tag()
        flag_part = f" ({flags})" if flags else ""
        self.sock.sendall(tag + f' APPEND "{mailbox}"{flag_part} {{{len(message)}}}\r\n'.encode())
        line = self._readline()
        if not line.startswith(b"+"):
            raise ImapError(f"APPEND refused: {line[:200]!r}")
        self.sock.sendall(message + b"\r\n")
        return self.read_reply(tag, "APPEND")

    def logout(self) -> None:
        with contextlib.suppress(ImapError, OSError):
            self.command("LOGOUT")
        self.close()

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self.sock.close()


class AsyncImap:
    """An asyncio IMAP connection; every read is bounded by `timeout`."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self._counter = 0

    @classmethod
    async def connect(cls, host: str, port: int, *, timeout: float = 60.0) -> AsyncImap:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=READ_BUFFER), timeout
        )
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = cls(reader, writer, timeout)
        greeting = await connection.readline()
        if not greeting.startswith(b"* OK"):
            writer.close()
            raise ImapError(f"greeting: {greeting[:200]!r}")
        return connection

    async def readline(self) -> bytes:
        line = await asyncio.wait_for(self.reader.readline(), self.timeout)
        if not line.endswith(b"\n"):
            raise ImapError("connection closed by the server")
        return line

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), self.timeout)

    def next_tag(self) -> bytes:
        self._counter += 1
        return b"a%d" % self._counter

    async def read_reply(self, tag: bytes, what: str) -> Reply:
        reply = Reply(b"")
        while True:
            line = await self.readline()
            while True:
                found = LITERAL_AT_END.search(line)
                if found is None:
                    break
                size = int(found.group(1))
                await asyncio.wait_for(self.reader.readexactly(size), self.timeout)
                reply.literal_octets += size
                reply.literals += 1
                line = await self.readline()
            if line.startswith(tag + b" "):
                check_tagged(tag, line, what)
                reply.tagged = line
                return reply
            if line.startswith(b"* BYE") and what.upper() != "LOGOUT":
                raise ImapError(f"{what}: {line[:200]!r}")
            reply.untagged.append(line)

    async def command(self, text: str) -> Reply:
        tag = self.next_tag()
        await self.send(tag + b" " + text.encode() + b"\r\n")
        return await self.read_reply(tag, text.split(" ", 1)[0])

    async def append(self, mailbox: str, message: bytes, flags: str = "") -> Reply:
        tag = self.next_tag()
        flag_part = f" ({flags})" if flags else ""
        await self.send(tag + f' APPEND "{mailbox}"{flag_part} {{{len(message)}}}\r\n'.encode())
        line = await self.readline()
        if not line.startswith(b"+"):
            raise ImapError(f"APPEND refused: {line[:200]!r}")
        await self.send(message + b"\r\n")
        return await self.read_reply(tag, "APPEND")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 5)


def make_message(number: int, size: int, label: str) -> bytes:
    """A text/plain RFC 5322 message of about `size` octets (CRLF line ends)."""
    header = (
        f"From: bench@example.org\r\nTo: bench@example.org\r\n"
        f"Subject: bench {label} {number}\r\nMessage-ID: <bench-{label}-{number}@example.org>\r\n"
        f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    line = f"{number:08d} abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n"
    body_size = max(2, size - len(header))
    body = (line.encode() * (body_size // len(line) + 1))[: body_size - 2] + b"\r\n"
    return header + body
