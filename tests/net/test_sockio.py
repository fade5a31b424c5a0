"""StreamReader / StreamWriter: the socket fast path keeps trio's stream semantics.

How this works: real loopback TCP connections (`trio.open_tcp_stream` to a listener in
the test), so the fast path is the one under test: bytes arrive whole and in order in
both directions, a write larger than the socket buffers is finished by the stream's own
`send_all`, a reader that always finds data still lets other tasks run, a reset peer is a
`BrokenResourceError` and a socket closed here a `ClosedResourceError`, cancellation
reaches a reader that waits, and a non-socket stream is used through its own methods.
Busy polling: a reader whose last wait was short polls (yielding to other tasks) instead
of sleeping, one whose wait outlasted the window sleeps, a poll that outlasts its window
falls back to waiting, no more readers poll at once than the budget allows, a
cancelled poll gives its place back, and TLS over `SocketTransport` polls the same way. (Windows and delays differ by ten times or more, so
a slow machine changes no outcome.)
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
import trustme

from imap_proxy.net.sockio import (
    FAIR_STREAK,
    BusyPoll,
    SocketTransport,
    StreamReader,
    StreamWriter,
    raw_socket,
)


async def _connected_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    assert isinstance(server, trio.SocketStream)
    return client, server


async def _read_exactly(reader: StreamReader, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        chunk = await reader.receive_some(65536)
        assert chunk, "the peer closed early"
        got += chunk
    return bytes(got)


async def test_plain_sockets_take_the_fast_path_and_others_do_not() -> None:
    client, server = await _connected_pair()
    assert raw_socket(client) is not None
    memory, _ = trio.testing.memory_stream_pair()
    assert raw_socket(memory) is None
    await client.aclose()
    await server.aclose()


async def test_bytes_arrive_whole_and_in_order_both_ways() -> None:
    client, server = await _connected_pair()
    writer, reader = StreamWriter(client), StreamReader(server)
    back_writer, back_reader = StreamWriter(server), StreamReader(client)
    for round_number in range(200):
        line = b"a%d NOOP\r\n" % round_number
        await writer.send_all(line)
        assert await _read_exactly(reader, len(line)) == line
        answer = b"a%d OK done\r\n" % round_number
        await back_writer.send_all(answer)
        assert await _read_exactly(back_reader, len(answer)) == answer
    await client.aclose()
    await server.aclose()


async def test_a_write_larger_than_the_socket_buffers_is_finished_in_order() -> None:
    client, server = await _connected_pair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = bytes(range(256)) * 4_000  # 1 MB: far beyond what the kernel takes at once
    writer, reader = StreamWriter(client), StreamReader(server)
    received = b""

    async def read_all() -> None:
        nonlocal received
        received = await _read_exactly(reader, len(payload))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        await writer.send_all(payload)
    assert received == payload
    await client.aclose()
    await server.aclose()


async def test_a_reader_that_always_finds_data_lets_other_tasks_run() -> None:
    client, server = await _connected_pair()
    await client.send_all(b"x" * 50_000)  # fits the socket buffers: all there at once
    reader = StreamReader(server)
    others_ran = 0

    async def other_task() -> None:
        nonlocal others_ran
        while True:
            others_ran += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_task)
        await trio.lowlevel.checkpoint()
        before = others_ran
        for _ in range(FAIR_STREAK * 5):
            assert await reader.receive_some(1000)  # always there: never has to wait
        assert others_ran - before >= 4  # it yielded once every FAIR_STREAK reads
        nursery.cancel_scope.cancel()
    await client.aclose()
    await server.aclose()


async def test_a_reset_peer_is_a_broken_resource() -> None:
    client, server = await _connected_pair()
    # SO_LINGER 0: closing sends a reset instead of a FIN.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.aclose()
    reader = StreamReader(server)
    with pytest.raises(trio.BrokenResourceError):
        while await reader.receive_some(1000):
            pass
    writer = StreamWriter(server)
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(100):
            await writer.send_all(b"x" * 100_000)
    await server.aclose()


async def test_a_socket_closed_here_is_a_closed_resource() -> None:
    client, server = await _connected_pair()
    reader, writer = StreamReader(server), StreamWriter(server)
    await server.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await reader.receive_some(1000)
    with pytest.raises(trio.ClosedResourceError):
        await writer.send_all(b"x")
    await client.aclose()


async def test_a_waiting_reader_is_cancellable_and_reads_on_afterwards() -> None:
    client, server = await _connected_pair()
    reader = StreamReader(server)
    with trio.move_on_after(0.05) as scope:
        await reader.receive_some(1000)
    assert scope.cancelled_caught
    await client.send_all(b"later\r\n")
    assert await _read_exactly(reader, 7) == b"later\r\n"
    await client.aclose()
    assert await reader.receive_some(1000) == b""  # EOF
    await server.aclose()


async def test_other_streams_are_used_through_their_own_methods() -> None:
    left, right = trio.testing.memory_stream_pair()
    await StreamWriter(left).send_all(b"hello")
    assert await StreamReader(right).receive_some(100) == b"hello"


# --- busy polling -----------------------------------------------------------------------


async def _send_after(delay: float, stream: trio.SocketStream, data: bytes) -> None:
    await trio.sleep(delay)
    await stream.send_all(data)


class _Watch:
    """Counts scheduler passes while a reader waits, and the most readers seen polling."""

    def __init__(self, poll: BusyPoll) -> None:
        self.poll = poll
        self.passes = 0
        self.most_polling = 0

    async def run(self) -> None:
        while True:
            self.passes += 1
            self.most_polling = max(self.most_polling, self.poll.polling)
            await trio.lowlevel.checkpoint()


async def _read_while_watched(
    reader: StreamReader, watch: _Watch, send: trio.SocketStream, delay: float
) -> bytes:
    """One read, with `b"x"` sent after `delay`; the watch runs alongside."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run)
        nursery.start_soon(_send_after, delay, send, b"x")
        data = await reader.receive_some(100)
        nursery.cancel_scope.cancel()
    return data


@asynccontextmanager
async def _polling_reader(
    window: float, max_pollers: int = 2
) -> AsyncIterator[tuple[trio.SocketStream, BusyPoll, StreamReader]]:
    """A connected pair: the client end to send on, and a polling reader of the other."""
    client, server = await _connected_pair()
    poll = BusyPoll(window=window, max_pollers=max_pollers)
    try:
        yield client, poll, StreamReader(server, poll)
    finally:
        await client.aclose()
        await server.aclose()


def test_a_zero_window_means_no_polling() -> None:
    assert BusyPoll.from_microseconds(0, 2) is None
    poll = BusyPoll.from_microseconds(500, 2)
    assert poll is not None and poll.window == pytest.approx(0.0005)


async def test_a_reader_whose_last_wait_was_short_polls_instead_of_sleeping() -> None:
    async with _polling_reader(2.0) as (client, poll, reader):
        first = _Watch(poll)
        assert await _read_while_watched(reader, first, client, 0.01) == b"x"
        assert first.most_polling == 0  # nothing known about its waits yet: it slept
        second = _Watch(poll)
        assert await _read_while_watched(reader, second, client, 0.05) == b"x"
        assert second.most_polling == 1  # the last wait was short: it polled ...
        assert second.passes > first.passes  # ... a scheduler pass at a time, others running
        assert poll.polling == 0
        assert (poll.found, poll.timed_out) == (1, 0)


async def test_a_wait_longer_than_the_window_sends_the_reader_to_sleep() -> None:
    async with _polling_reader(0.05, max_pollers=1) as (client, poll, reader):
        assert await _read_while_watched(reader, _Watch(poll), client, 0.001) == b"x"  # short
        poll.polling = 1  # the budget is taken: the next read sleeps, and its wait is timed
        assert await _read_while_watched(reader, _Watch(poll), client, 0.5) == b"x"
        poll.polling = 0
        watch = _Watch(poll)
        assert await _read_while_watched(reader, watch, client, 0.001) == b"x"
        assert watch.most_polling == 0  # the long wait sent it to sleep


async def test_a_poll_that_outlasts_its_window_falls_back_to_waiting() -> None:
    async with _polling_reader(0.1) as (client, poll, reader):
        assert await _read_while_watched(reader, _Watch(poll), client, 0.001) == b"x"  # short
        timed_out = _Watch(poll)
        assert await _read_while_watched(reader, timed_out, client, 1.0) == b"x"  # still read
        assert timed_out.most_polling == 1
        assert (poll.found, poll.timed_out) == (0, 1)
        assert poll.seconds >= 0.1  # the whole window
        after = _Watch(poll)
        assert await _read_while_watched(reader, after, client, 0.001) == b"x"
        assert after.most_polling == 0  # the long wait sent it to sleep


async def test_no_more_readers_poll_at_once_than_the_budget_allows() -> None:
    pairs = [await _connected_pair() for _ in range(3)]
    poll = BusyPoll(window=2.0, max_pollers=1)
    readers = [StreamReader(server, poll) for _, server in pairs]
    watch = _Watch(poll)
    for reader, (client, _) in zip(readers, pairs, strict=True):  # each learns: waits are short
        assert await _read_while_watched(reader, _Watch(poll), client, 0.001) == b"x"
    got: list[bytes] = []

    async def read(reader: StreamReader) -> None:
        got.append(await reader.receive_some(100))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run)
        for reader in readers:
            nursery.start_soon(read, reader)
        await trio.sleep(0.05)
        for client, _ in pairs:
            await client.send_all(b"y")
        while len(got) < len(readers):
            await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    assert got == [b"y"] * 3
    assert watch.most_polling == 1
    for client, server in pairs:
        await client.aclose()
        await server.aclose()


async def test_a_cancelled_poll_gives_its_place_back() -> None:
    async with _polling_reader(5.0, max_pollers=1) as (client, poll, reader):
        assert await _read_while_watched(reader, _Watch(poll), client, 0.001) == b"x"
        with trio.move_on_after(0.05) as scope:
            await reader.receive_some(100)
        assert scope.cancelled_caught
        assert poll.polling == 0
        await client.send_all(b"z")
        assert await reader.receive_some(100) == b"z"


async def test_tls_over_a_socket_transport_relays_in_order_and_polls() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client, server = await _connected_pair()
    poll = BusyPoll(window=2.0, max_pollers=2)
    transport = SocketTransport.under_tls(server, poll)
    assert isinstance(transport, SocketTransport)
    assert SocketTransport.under_tls(trio.testing.memory_stream_pair()[0], poll) is not transport
    tls_server = trio.SSLStream(transport, server_ctx, server_side=True)
    tls_client = trio.SSLStream(client, client_ctx, server_hostname="127.0.0.1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tls_server.do_handshake)
        await tls_client.do_handshake()
    watches = []
    for number in range(3):
        watch = _Watch(poll)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch.run)
            line = b"t%d NOOP\r\n" % number
            nursery.start_soon(_send_tls_after, tls_client, line)
            assert await tls_server.receive_some(100) == line
            await tls_server.send_all(b"t%d OK\r\n" % number)
            nursery.cancel_scope.cancel()
        assert await tls_client.receive_some(100) == b"t%d OK\r\n" % number
        watches.append(watch)
    # The handshake's waits were short, so every read of the TLS layer's polled.
    assert [w.most_polling for w in watches] == [1, 1, 1]
    await tls_client.aclose()
    await tls_server.aclose()


async def _send_tls_after(stream: trio.SSLStream[trio.SocketStream], data: bytes) -> None:
    await trio.sleep(0.01)
    await stream.send_all(data)
