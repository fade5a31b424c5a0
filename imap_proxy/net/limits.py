"""Bounding resources: how many connections are admitted, and how much output is queued.

How this works:

* `ConnectionLimiter` counts open connections, in total and per client address.
  `try_acquire(address)` admits a connection (and counts it) or refuses it;
  `release(address)` forgets it. It is plain bookkeeping, with no I/O.

* `QueuedWriter` owns the sending half of one stream. Producers call `send(data)` (never
  blocks) and `then(action)` (an async step to run once everything queued before it is
  written - a TLS handshake, say); one task runs `run()`, which writes the queue in order.
  Consecutive byte chunks are joined into one `send_all` (up to `max_write` octets), so a
  batch of small responses becomes one write. `queued_bytes` counts what is queued and not
  yet written; a producer that must not outrun the peer checks `above_high_water` and
  waits until `on_relief` is called (the queue fell to the high-water mark or below).
  `close()` lets `run()` return once the queue is empty; `wait_idle()` waits for that
  point without closing. Once closed or stopped, the writer drops what it is given (the
  peer is gone or going; there is no one left to tell).

  Given `spawn` (a nursery's `start_soon`), the writer runs no task of its own while it
  has nothing to write: a task is started when work is queued and ends when the queue is
  empty, so an idle connection costs no writer task (some 3 KB each). Its stream errors
  of the kinds in `errors` go to `on_error`; any other exception propagates as a bug.

  The fast path: a producer that is itself a task (a connection's reader) may queue with
  `send(data, wake=False)` and then `await flush()`, which writes the queue from that
  task when no write is under way and what is queued is small. A request/response round
  trip then costs no task switch to the writer; anything larger, a TLS step at the head
  of the queue, or a write already under way is left to `run()`, which is woken. Only
  `run()` and `flush()` write, each only while the other is not (one flag), so two tasks
  never call `send_all` on the stream at once. Stream errors propagate out of both: the caller
  translates them, once, for its side.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable

import trio

from imap_proxy.net.sockio import StreamWriter

DEFAULT_HIGH_WATER = 1024 * 1024
DEFAULT_MAX_WRITE = 1024 * 1024
# `flush()` writes from the producer's task only up to this much; bulk data (message
# bodies) goes through the writer task, so reading the next chunk overlaps this write.
INLINE_FLUSH_MAX = 16 * 1024

Action = Callable[[], Awaitable[None]]
Spawn = Callable[[Action], None]  # starts a task, e.g. a nursery's start_soon


class ConnectionLimiter:
    """Admission control: `max_total` connections, `max_per_address` per client (0: no limit)."""

    def __init__(self, max_total: int, max_per_address: int = 0) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._total = 0
        self._per_address: dict[str, int] = {}

    @property
    def total(self) -> int:
        return self._total

    def count_for(self, address: str) -> int:
        return self._per_address.get(address, 0)

    def try_acquire(self, address: str) -> bool:
        """Count a new connection from `address`, or return False when it is over a limit."""
        if self._total >= self.max_total:
            return False
        current = self._per_address.get(address, 0)
        if self.max_per_address and current >= self.max_per_address:
            return False
        self._total += 1
        self._per_address[address] = current + 1
        return True

    def release(self, address: str) -> None:
        current = self._per_address.get(address, 0)
        if current <= 0:
            raise RuntimeError(f"release() without try_acquire() for {address!r}")
        self._total -= 1
        if current == 1:
            del self._per_address[address]
        else:
            self._per_address[address] = current - 1


class QueuedWriter:
    """The one writer of a stream: an unbounded ordered queue of bytes and async steps."""

    def __init__(
        self,
        stream: trio.abc.SendStream,
        *,
        high_water: int = DEFAULT_HIGH_WATER,
        max_write: int = DEFAULT_MAX_WRITE,
        on_relief: Callable[[], None] | None = None,
        spawn: Spawn | None = None,
        errors: tuple[type[Exception], ...] = (),
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self._io = StreamWriter(stream)
        self.high_water = high_water
        self.max_write = max_write
        self._on_relief = on_relief
        self._spawn = spawn  # None: the owner runs run(); else a task is started on demand
        self._errors = errors
        self._on_error = on_error
        self._task_running = False
        self._queue: deque[bytes | Action] = deque()
        self._queued_bytes = 0
        self._in_progress = False  # a write (or step) is under way, by run() or flush()
        self._closed = False
        self._stopped = False
        self._relief_owed = False
        self._wakeup = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self.bytes_written = 0
        self.writes = 0
        self.last_write_at = -math.inf  # trio time when the last write completed

    @property
    def stream(self) -> trio.abc.SendStream:
        return self._io.stream

    @stream.setter
    def stream(self, stream: trio.abc.SendStream) -> None:
        """Replaced by a TLS step (`then`) when the stream is wrapped."""
        self._io = StreamWriter(stream)

    # --- producer side ---------------------------------------------------------------

    @property
    def queued_bytes(self) -> int:
        """Octets handed to `send()` and not yet written (including the write under way)."""
        return self._queued_bytes

    @property
    def above_high_water(self) -> bool:
        return self._queued_bytes > self.high_water

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stopped(self) -> bool:
        """`run()` has returned or failed; nothing more will be written."""
        return self._stopped

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being written (or nothing ever will be)."""
        return self._stopped or (not self._queue and not self._in_progress)

    def send(self, data: bytes, *, wake: bool = True) -> None:
        """Queue `data`; with `wake=False` the caller promises to `await flush()` next."""
        if self._closed or self._stopped or not data:
            return
        self._queue.append(data)
        self._queued_bytes += len(data)
        if self.above_high_water:
            self._relief_owed = True
        if wake:
            self._poke()
        elif self._idle.is_set():
            self._idle = trio.Event()

    async def flush(self) -> None:
        """Write what is queued from the calling task if that is cheap, else wake `run()`.

        Stream errors propagate to the caller, as they would out of `run()`.
        """
        if not self._queue:
            return
        if (
            self._stopped
            or self._queued_bytes > INLINE_FLUSH_MAX
            or not isinstance(self._queue[0], bytes)
            or self._in_progress
        ):
            self._poke()
            return
        self._in_progress = True
        try:
            while self._queue and isinstance(self._queue[0], bytes):
                await self._write_chunk()
        except BaseException:
            self._finish()  # the stream is broken (or torn down): nothing more is written
            raise
        finally:
            self._in_progress = False
        if self._queue or self._closed:
            self._poke()  # a step to run, or run() to let return
        else:
            self._idle.set()

    def then(self, action: Action) -> None:
        """Run `action` after everything queued so far is written, before anything later."""
        if self._closed or self._stopped:
            return
        self._queue.append(action)
        self._poke()

    def close(self) -> None:
        """Accept nothing more; `run()` returns when what is queued has been written."""
        self._closed = True
        self._wakeup.set()
        if self._spawn is not None and not self._task_running and not self._in_progress:
            # (A flush() under way pokes when it ends, and the task started then finishes.)
            if self._queue:
                self._start_task()
            else:
                self._finish()

    async def wait_idle(self) -> None:
        """Wait until everything queued so far (and anything added meanwhile) is written."""
        while not self.idle:
            await self._idle.wait()

    def _poke(self) -> None:
        if self._idle.is_set():
            self._idle = trio.Event()
        self._wakeup.set()
        if self._spawn is not None and not self._task_running:
            self._start_task()

    def _start_task(self) -> None:
        if self._stopped or self._spawn is None:
            return
        self._task_running = True
        try:
            self._spawn(self._drain)
        except RuntimeError:  # the owner's nursery has closed: nothing more is written
            self._task_running = False
            self._finish()

    # --- the writing task ------------------------------------------------------------

    def _take_chunk(self) -> bytes:
        """Pop consecutive byte items, joined, up to `max_write` octets (at least one item)."""
        first = self._queue.popleft()
        assert isinstance(first, bytes)
        if not self._queue or not isinstance(self._queue[0], bytes):
            return first
        parts = [first]
        size = len(first)
        while self._queue:
            head = self._queue[0]
            if not isinstance(head, bytes) or size + len(head) > self.max_write:
                break
            parts.append(head)
            size += len(head)
            self._queue.popleft()
        return b"".join(parts)

    async def run(self) -> None:
        """Write the queue in order until `close()` and empty. Stream errors propagate."""
        try:
            await self._write_until_closed()
        finally:
            self._finish()

    async def _drain(self) -> None:
        """The on-demand task (with `spawn`): write until the queue is empty, then end."""
        try:
            await self._write_until_closed(until_empty=True)
        except self._errors as exc:
            self._finish()
            if self._on_error is not None:
                self._on_error(exc)
        finally:
            self._task_running = False
        if self._closed and not self._queue:
            self._finish()

    def _finish(self) -> None:
        self._stopped = True
        self._idle.set()
        if self._relief_owed and self._on_relief:
            self._relief_owed = False
            self._on_relief()

    async def _write_until_closed(self, *, until_empty: bool = False) -> None:
        while True:
            if not self._queue or self._in_progress:
                # Nothing to do, or a flush() is writing: it pokes when it leaves work.
                if not self._queue:
                    self._idle.set()
                    if self._closed or until_empty:
                        return
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            head = self._queue[0]
            self._in_progress = True
            try:
                if isinstance(head, bytes):
                    await self._write_chunk()
                else:
                    self._queue.popleft()
                    await head()
            finally:
                self._in_progress = False

    async def _write_chunk(self) -> None:
        """Write the next chunk; the caller has set `_in_progress`."""
        chunk = self._take_chunk()
        await self._io.send_all(chunk)
        self._queued_bytes -= len(chunk)
        self.bytes_written += len(chunk)
        self.writes += 1
        self.last_write_at = trio.current_time()
        if self._relief_owed and not self.above_high_water:
            self._relief_owed = False
            if self._on_relief:
                self._on_relief()
