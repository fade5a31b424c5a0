"""Reading and writing a plain TCP stream without a scheduler pass per call.

How this works: trio's `SocketStream.receive_some` and `send_all` make every call look
as if it blocked. A call that succeeds at once still ends in a checkpoint (a whole pass of
the scheduler, with an `epoll_wait`), and a read that finds nothing first raises and
catches `BlockingIOError` before it waits. For a proxy that is the cost of every small
command: the client's command is read, sent upstream, the answer read and sent back, and
each of those four calls pays a pass. `StreamReader` and `StreamWriter` wrap one stream;
when it is a plain `trio.SocketStream` they call the socket itself:

* `send_all` tries one non-blocking `send`; when the kernel takes everything (the common
  case: a small answer, an empty socket buffer) it returns without yielding. Whatever is
  left goes through the stream's own `send_all`, which waits for room.
* `receive_some` tries one non-blocking `recv`. Data that is there is returned without a
  checkpoint, except that a reader that found data waiting `FAIR_STREAK` times running
  yields once, so a side that always has data (a large FETCH) cannot starve the others.
  When nothing is there it waits for the socket to become readable
  (`trio.lowlevel.wait_readable`, which is also where cancellation reaches it) and reads.

Errors are translated as trio's stream would: `BrokenResourceError` for a connection the
peer broke, `ClosedResourceError` for a socket closed here. A TLS stream, a PROXY-header
stream or any other stream is used through its own methods.
"""

from __future__ import annotations

import errno
import socket
from typing import Final

import trio

FAIR_STREAK: Final = 4  # reads that found data waiting, in a row, before one yield


def raw_socket(stream: trio.abc.AsyncResource) -> socket.socket | None:
    """The stdlib socket under a plain `trio.SocketStream`, else None."""
    if type(stream) is not trio.SocketStream:
        return None
    raw = getattr(stream.socket, "_sock", None)  # trio keeps the stdlib socket here
    return raw if isinstance(raw, socket.socket) else None


class StreamReader:
    """One stream's reads; see the module header."""

    __slots__ = ("_raw", "_streak", "stream")

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self._raw = raw_socket(stream)
        self._streak = 0

    async def receive_some(self, max_bytes: int) -> bytes:
        raw = self._raw
        if raw is None:
            return bytes(await self.stream.receive_some(max_bytes))
        while True:
            try:
                data = raw.recv(max_bytes)
            except BlockingIOError:
                self._streak = 0
                await _wait_readable(raw)
                continue
            except OSError as exc:
                raise _translated(raw, exc) from exc
            self._streak += 1
            if self._streak >= FAIR_STREAK:
                self._streak = 0
                await trio.lowlevel.checkpoint()
            return data


class StreamWriter:
    """One stream's writes; see the module header. The caller never overlaps two."""

    __slots__ = ("_raw", "stream")

    def __init__(self, stream: trio.abc.SendStream) -> None:
        self.stream = stream
        self._raw = raw_socket(stream)

    async def send_all(self, data: bytes) -> None:
        raw = self._raw
        if raw is None:
            await self.stream.send_all(data)
            return
        try:
            sent = raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise _translated(raw, exc) from exc
        if sent < len(data):
            await self.stream.send_all(memoryview(data)[sent:])


async def _wait_readable(raw: socket.socket) -> None:
    if raw.fileno() == -1:
        raise trio.ClosedResourceError("the socket was closed")
    try:
        await trio.lowlevel.wait_readable(raw)  # ClosedResourceError if closed meanwhile
    except OSError as exc:  # pragma: no cover - epoll refusing a live socket
        raise _translated(raw, exc) from exc


def _translated(raw: socket.socket, exc: OSError) -> Exception:
    if raw.fileno() == -1 or exc.errno == errno.EBADF:
        return trio.ClosedResourceError("the socket was closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")
