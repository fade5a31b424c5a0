"""Spare upstream connections (`upstream.spare_connections`): opened ahead, handed out
whole, never handed out dead, not kept without demand.

How this works: a `SpareConnections` around the real `UpstreamDialer` dials the scripted
fake upstream (tests/net/fakes.py) over TCP; the tests look at what the pool holds and at
how many connections the upstream saw. One test runs the whole proxy (`serve`) with
spares on and checks that a client is served by a spare, greeting and all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import trio
from pydantic import ValidationError

from imap_proxy.config import ProxyConfig, UpstreamConfig
from imap_proxy.net.server import ServerHandle, serve
from imap_proxy.net.spares import SpareConnections
from imap_proxy.net.upstream import UpstreamDialer, UpstreamUnavailable
from tests.net.fakes import (
    GREETING,
    LineClient,
    UpstreamScript,
    fake_imap_server,
    free_port_refusing,
)


def _pool(port: int, size: int = 2, max_age: float = 5.0) -> SpareConnections:
    return SpareConnections(
        UpstreamDialer(UpstreamConfig(address=f"127.0.0.1:{port}")), size, max_age
    )


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


async def test_spares_wait_greeted_and_are_handed_out_before_dialling() -> None:
    script = UpstreamScript()
    async with trio.open_nursery() as nursery:
        pool = _pool(await fake_imap_server(nursery, script))
        nursery.start_soon(pool.run)
        await trio.sleep(0.1)
        assert pool.ready == 0 and script.connections == 0  # no demand yet: nothing opened
        first = await pool.connect()  # dialled: the pool was empty
        await _until(lambda: pool.ready == 2 and script.connections == 3)
        second = await pool.connect()
        assert pool.handed_out == 1
        client = LineClient(second)
        assert await client.read_line() == GREETING  # waiting in the socket, unread
        await client.send(b"a1 NOOP\r\n")
        assert await client.read_line() == b"a1 OK NOOP completed\r\n"
        # Topped up again after the demand (the upstream may count it a moment later).
        await _until(lambda: pool.ready == 2 and script.connections == 4)
        for stream in (first, second):
            await stream.aclose()
        nursery.cancel_scope.cancel()
    assert pool.ready == 0  # closed with the pool


async def test_spares_expire_and_are_not_replaced_without_demand() -> None:
    script = UpstreamScript()
    async with trio.open_nursery() as nursery:
        pool = _pool(await fake_imap_server(nursery, script), size=2, max_age=0.3)
        nursery.start_soon(pool.run)
        await (await pool.connect()).aclose()
        await _until(lambda: pool.ready == 2)
        await _until(lambda: pool.ready == 0 and pool.discarded == 2)
        await trio.sleep(0.5)
        assert pool.ready == 0 and script.connections == 3  # none opened since
        nursery.cancel_scope.cancel()


async def test_a_spare_the_upstream_closed_is_never_handed_out() -> None:
    served = 0

    async def greet_then_close_the_first_two(stream: trio.SocketStream) -> None:
        nonlocal served
        served += 1
        await stream.send_all(GREETING)
        if served <= 3:  # the first (dialled) connection and the two spares
            await stream.aclose()
            return
        await stream.send_all(b"* OK still here\r\n")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, greet_then_close_the_first_two, 0, host="127.0.0.1")
        )
        pool = _pool(listeners[0].socket.getsockname()[1])
        nursery.start_soon(pool.run)
        await (await pool.connect()).aclose()
        await _until(lambda: pool.ready == 2)
        await trio.sleep(0.1)  # both spares closed by the upstream, greeting unread
        stream = await pool.connect()
        assert pool.discarded == 2
        client = LineClient(stream)
        assert await client.read_line() == GREETING
        # A live one: dialled, or a spare the refill opened while the dead ones were closed.
        assert await client.read_line() == b"* OK still here\r\n"
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_an_unreachable_upstream_fails_as_without_spares() -> None:
    pool = _pool(free_port_refusing())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.run)
        for _ in range(2):
            with pytest.raises(UpstreamUnavailable, match="connection refused"):
                await pool.connect()
        assert pool.ready == 0
        nursery.cancel_scope.cancel()


async def test_the_proxy_serves_a_client_from_a_spare() -> None:
    script = UpstreamScript()
    async with trio.open_nursery() as nursery:
        port = await fake_imap_server(nursery, script)
        config = ProxyConfig.model_validate(
            {
                "listen": ["127.0.0.1:0"],
                "upstream": {"address": f"127.0.0.1:{port}", "spare_connections": 1},
            }
        )
        handle: ServerHandle = await nursery.start(serve, config)
        for number in range(3):
            client = LineClient(await trio.open_tcp_stream("127.0.0.1", handle.port()))
            assert (await client.read_line()).startswith(b"* OK [CAPABILITY IMAP4rev1")
            await client.send(b"a1 LOGIN alice secret\r\n")
            assert (await client.read_line()).startswith(b"a1 OK")
            await client.send(b"a2 LOGOUT\r\n")
            assert await client.read_line() == b"* BYE logging out\r\n"
            assert await client.read_line() == b"a2 OK LOGOUT completed\r\n"
            await client.stream.aclose()
            # One spare is topped up after each client: clients 2 and 3 took one each.
            await _until(functools.partial(lambda n: script.connections == n + 2, number))
        handle.drain()
        with trio.fail_after(5):
            await handle.wait_stopped()
        nursery.cancel_scope.cancel()
    assert script.received.count(b"a1 LOGIN alice secret\r\n") == 3


def test_spares_cannot_be_combined_with_proxy_headers_upstream() -> None:
    with pytest.raises(ValidationError, match="spare_connections cannot be used"):
        ProxyConfig.model_validate(
            {
                "listen": ["127.0.0.1:0"],
                "upstream": {"spare_connections": 2},
                "proxy_protocol": {"trusted": ["127.0.0.1/32"], "send_upstream": True},
            }
        )
