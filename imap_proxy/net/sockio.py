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

Busy polling (`BusyPoll`, `performance.busy_poll_us`): a process that sleeps in
`epoll_wait` between a request and its answer pays for waking up - on a virtual machine
the sleep alone roughly doubles what the next few hundred microseconds of Python cost.
So a reader that finds nothing may poll instead of sleeping: it yields (one scheduler
pass, in which every other connection is served) and tries `recv` again, for up to the
window, then waits as usual. Only readers whose last wait was shorter than the window
poll (the answer to a command just forwarded; a client's next command in a burst); a
wait that outlasted the window (an idle client, an IDLE) sends that reader to sleep at
once until a wait is short again, so each side wastes at most one window when it falls
quiet. At most `busy_pollers` readers poll at a time across the process, which bounds
the cost to one core while any poll lasts and to nothing once the process is idle.

A TLS stream over a plain socket gets both through `SocketTransport`, the transport the
proxy hands `trio.SSLStream`: it reads and writes the socket with a `StreamReader` and a
`StreamWriter`, so the TLS layer's reads (which it makes only when it needs more bytes)
poll like a plain connection's.

Errors are translated as trio's stream would: `BrokenResourceError` for a connection the
peer broke, `ClosedResourceError` for a socket closed here. A TLS stream, a PROXY-header
stream or any other stream is used through its own methods.
"""

from __future__ import annotations

import errno
import socket
import time
from typing import Final

import trio

FAIR_STREAK: Final = 4  # reads that found data waiting, in a row, before one yield
READ_DEFAULT: Final = 64 * 1024  # a transport read given no size


def raw_socket(stream: trio.abc.AsyncResource) -> socket.socket | None:
    """The stdlib socket under a plain `trio.SocketStream`, else None."""
    if type(stream) is not trio.SocketStream:
        return None
    raw = getattr(stream.socket, "_sock", None)  # trio keeps the stdlib socket here
    return raw if isinstance(raw, socket.socket) else None


class BusyPoll:
    """The process's budget for readers that poll instead of sleeping; see the header."""

    __slots__ = ("found", "max_pollers", "polling", "seconds", "timed_out", "window")

    def __init__(self, window: float, max_pollers: int) -> None:
        self.window = window  # seconds
        self.max_pollers = max_pollers
        self.polling = 0
        # What polling cost and bought, for the metrics: polls that found data, polls
        # whose window passed first, and the seconds spent polling.
        self.found = 0
        self.timed_out = 0
        self.seconds = 0.0

    @classmethod
    def from_microseconds(cls, window_us: int, max_pollers: int) -> BusyPoll | None:
        """None for a zero window: nothing polls."""
        return cls(window_us / 1e6, max_pollers) if window_us > 0 else None


class StreamReader:
    """One stream's reads; see the module header."""

    __slots__ = ("_busy_poll", "_quick", "_raw", "_streak", "stream")

    def __init__(self, stream: trio.abc.ReceiveStream, busy_poll: BusyPoll | None = None) -> None:
        self.stream = stream
        self._raw = raw_socket(stream)
        self._streak = 0
        self._busy_poll = busy_poll
        self._quick = False  # the last wait for data was shorter than the poll window

    async def receive_some(self, max_bytes: int) -> bytes:
        raw = self._raw
        if raw is None:
            return bytes(await self.stream.receive_some(max_bytes))
        while True:
            try:
                data = raw.recv(max_bytes)
            except BlockingIOError:
                self._streak = 0
                poll = self._busy_poll
                if poll is None:
                    await _wait_readable(raw)
                    continue
                started = time.perf_counter()
                if self._quick and poll.polling < poll.max_pollers:
                    polled = await self._poll(raw, max_bytes, poll)
                    if polled is not None:
                        return polled
                await _wait_readable(raw)
                # The whole wait, a poll included: when the window passed, this side
                # sleeps at once next time, until a wait is short again.
                self._quick = time.perf_counter() - started < poll.window
                continue
            except OSError as exc:
                raise _translated(raw, exc) from exc
            self._streak += 1
            if self._streak >= FAIR_STREAK:
                self._streak = 0
                await trio.lowlevel.checkpoint()
            return data

    @staticmethod
    async def _poll(raw: socket.socket, max_bytes: int, poll: BusyPoll) -> bytes | None:
        """`recv` once per scheduler pass until data comes or the window passes (None)."""
        poll.polling += 1
        started = time.perf_counter()
        until = started + poll.window
        try:
            while True:
                await trio.lowlevel.checkpoint()  # every other task runs; cancellation lands
                try:
                    data = raw.recv(max_bytes)
                except BlockingIOError:
                    if time.perf_counter() >= until:
                        poll.timed_out += 1
                        return None
                except OSError as exc:
                    raise _translated(raw, exc) from exc
                else:
                    poll.found += 1
                    return data
        finally:
            poll.polling -= 1
            poll.seconds += time.perf_counter() - started


class StreamWriter:
    """One stream's writes; see the module header. The caller never overlaps two."""

    __slots__ = ("_raw", "stream")

    def __init__(self, stream: trio.abc.SendStream) -> None:
        self.stream = stream
        self._raw = raw_socket(stream)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
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


class SocketTransport(trio.abc.HalfCloseableStream):
    """A plain `trio.SocketStream` read and written through `StreamReader` and
    `StreamWriter`: the transport under a `trio.SSLStream`, so TLS reads poll too."""

    def __init__(self, stream: trio.SocketStream, busy_poll: BusyPoll | None) -> None:
        self.transport_stream = stream
        self._reader = StreamReader(stream, busy_poll)
        self._writer = StreamWriter(stream)

    @classmethod
    def under_tls(cls, stream: trio.abc.Stream, busy_poll: BusyPoll | None) -> trio.abc.Stream:
        """What to wrap in TLS: a plain socket stream through this class, else itself."""
        return cls(stream, busy_poll) if type(stream) is trio.SocketStream else stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._reader.receive_some(max_bytes or READ_DEFAULT)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._writer.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport_stream.send_eof()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


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
