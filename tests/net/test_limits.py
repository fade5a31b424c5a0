"""ConnectionLimiter bookkeeping and QueuedWriter ordering, coalescing and backpressure.

How this works: the writer is tested on trio's in-memory streams: `memory_stream_pair`
(writes never block) to see what was written and in how many writes, and
`lockstep_stream_pair` (a write blocks until the reader takes it) to hold the writer up
and watch the queue grow past the high-water mark and relief arrive.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from imap_proxy.net.limits import INLINE_FLUSH_MAX, ConnectionLimiter, QueuedWriter


class CountingStream(trio.abc.SendStream):
    """Records every send_all call (to count writes); can be made to fail."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.fail = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        if self.fail:
            raise trio.BrokenResourceError("peer gone")
        self.writes.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def test_limiter_counts_total_and_per_address() -> None:
    limiter = ConnectionLimiter(max_total=3, max_per_address=2)
    assert limiter.try_acquire("a")
    assert limiter.try_acquire("a")
    assert not limiter.try_acquire("a")  # per address
    assert limiter.try_acquire("b")
    assert not limiter.try_acquire("c")  # total
    assert limiter.total == 3 and limiter.count_for("a") == 2
    limiter.release("a")
    assert limiter.try_acquire("c")
    limiter.release("c")
    limiter.release("b")
    limiter.release("a")
    assert limiter.total == 0 and limiter.count_for("a") == 0
    with pytest.raises(RuntimeError):
        limiter.release("a")


def test_limiter_without_per_address_limit() -> None:
    limiter = ConnectionLimiter(max_total=5, max_per_address=0)
    assert all(limiter.try_acquire("same") for _ in range(5))
    assert not limiter.try_acquire("other")


async def test_writer_coalesces_a_batch_into_one_write_and_keeps_order() -> None:
    stream = CountingStream()
    writer = QueuedWriter(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        writer.send(b"* 1 EXISTS\r\n")
        writer.send(b"")
        writer.send(b"* 1 RECENT\r\n")
        writer.send(b"a OK done\r\n")
        await writer.wait_idle()
        writer.send(b"b OK\r\n")
        writer.close()
    assert stream.writes == [b"* 1 EXISTS\r\n* 1 RECENT\r\na OK done\r\n", b"b OK\r\n"]
    assert writer.bytes_written == sum(map(len, stream.writes))
    assert writer.writes == 2
    assert writer.stopped


async def test_writer_splits_at_max_write() -> None:
    stream = CountingStream()
    writer = QueuedWriter(stream, max_write=10)
    for part in (b"aaaa", b"bbbb", b"cccc", b"d"):
        writer.send(part)
    writer.close()
    await writer.run()
    assert stream.writes == [b"aaaabbbb", b"ccccd"]


async def test_steps_run_after_what_was_queued_before_them() -> None:
    stream = CountingStream()
    writer = QueuedWriter(stream)
    seen_at_step: list[list[bytes]] = []

    async def step() -> None:
        seen_at_step.append(list(stream.writes))
        writer.stream = CountingStream()  # as a TLS switch replaces the stream

    writer.send(b"before\r\n")
    writer.then(step)
    writer.send(b"after\r\n")
    writer.close()
    await writer.run()
    assert seen_at_step == [[b"before\r\n"]]
    assert stream.writes == [b"before\r\n"]
    assert isinstance(writer.stream, CountingStream)
    assert writer.stream.writes == [b"after\r\n"]


async def test_high_water_and_relief() -> None:
    sender, receiver = trio.testing.lockstep_stream_pair()
    reliefs: list[int] = []
    writer = QueuedWriter(sender, high_water=10, on_relief=lambda: reliefs.append(1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        writer.send(b"0123456789")
        assert not writer.above_high_water
        writer.send(b"abcdef")
        assert writer.above_high_water and writer.queued_bytes == 16
        await trio.testing.wait_all_tasks_blocked()
        # The writer is blocked in send_all: nothing is written, nothing relieved.
        assert writer.queued_bytes == 16 and reliefs == []
        received = b""
        while len(received) < 16:
            received += await receiver.receive_some(100)
        await writer.wait_idle()
        assert received == b"0123456789abcdef"
        assert writer.queued_bytes == 0 and not writer.above_high_water
        assert reliefs == [1]
        writer.close()


async def test_a_failing_stream_stops_the_writer_and_drops_later_sends() -> None:
    stream = CountingStream()
    stream.fail = True
    writer = QueuedWriter(stream)
    writer.send(b"lost\r\n")
    with pytest.raises(trio.BrokenResourceError):
        await writer.run()
    assert writer.stopped and writer.idle
    writer.send(b"dropped\r\n")
    assert writer.queued_bytes == len(b"lost\r\n")  # nothing new was queued
    await writer.wait_idle()  # returns at once: nothing will ever be written


async def test_close_writes_what_is_queued_then_returns() -> None:
    sender, receiver = trio.testing.memory_stream_pair()
    writer = QueuedWriter(sender)
    writer.send(b"last words\r\n")
    writer.close()
    writer.send(b"too late\r\n")
    with trio.fail_after(1):
        await writer.run()
    assert await receiver.receive_some(100) == b"last words\r\n"


class GatedStream(CountingStream):
    """A stream whose writes wait for `gate` to open, to hold a write "under way"."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.writing = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writing.set()
        await self.gate.wait()
        await super().send_all(data)


async def test_flush_writes_from_the_calling_task_without_waking_the_writer() -> None:
    stream = CountingStream()
    writer = QueuedWriter(stream)
    writer.send(b"a OK\r\n", wake=False)
    writer.send(b"b OK\r\n", wake=False)
    assert not writer.idle
    await writer.flush()  # no run() task exists: this task wrote it
    assert stream.writes == [b"a OK\r\nb OK\r\n"]
    assert writer.idle and writer.queued_bytes == 0 and writer.bytes_written == 12


async def test_flush_leaves_bulk_data_and_steps_to_the_writer_task() -> None:
    stream = CountingStream()
    writer = QueuedWriter(stream)
    ran: list[str] = []

    async def step() -> None:
        ran.append("step")

    writer.send(b"x" * (INLINE_FLUSH_MAX + 1), wake=False)
    await writer.flush()
    assert stream.writes == []  # too large to write inline
    writer.then(step)
    writer.send(b"after\r\n", wake=False)
    await writer.flush()
    assert stream.writes == [] and ran == []
    writer.close()
    await writer.run()
    assert [len(w) for w in stream.writes] == [INLINE_FLUSH_MAX + 1, 7] and ran == ["step"]


async def test_flush_during_a_write_under_way_defers_and_keeps_order() -> None:
    stream = GatedStream()
    writer = QueuedWriter(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        writer.send(b"first\r\n")
        await stream.writing.wait()  # run() is inside send_all
        writer.send(b"second\r\n", wake=False)
        await writer.flush()  # must not write beside run(): it leaves it queued
        assert stream.writes == []
        stream.gate.set()
        await writer.wait_idle()
        writer.close()
    assert stream.writes == [b"first\r\n", b"second\r\n"]


async def test_flush_propagates_stream_errors() -> None:
    stream = CountingStream()
    stream.fail = True
    writer = QueuedWriter(stream)
    writer.send(b"a OK\r\n", wake=False)
    with pytest.raises(trio.BrokenResourceError):
        await writer.flush()
