"""StreamReader / StreamWriter: the socket fast path keeps trio's stream semantics.

How this works: real loopback TCP connections (`trio.open_tcp_stream` to a listener in
the test), so the fast path is the one under test: bytes arrive whole and in order in
both directions, a write larger than the socket buffers is finished by the stream's own
`send_all`, a reader that always finds data still lets other tasks run, a reset peer is a
`BrokenResourceError` and a socket closed here a `ClosedResourceError`, cancellation
reaches a reader that waits, and a non-socket stream is used through its own methods.
"""

from __future__ import annotations

import socket
import struct

import pytest
import trio
import trio.testing

from imap_proxy.net.sockio import FAIR_STREAK, StreamReader, StreamWriter, raw_socket


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
