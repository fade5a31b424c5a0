"""IDLE keepalives from the `idle-keepalive` rule, on memory streams with a mock clock.

How this works: a fake upstream that accepts LOGIN, SELECT and IDLE and then says nothing
at all (a legacy server without its own keepalives); the client idles; pytest-trio's
`autojump_clock` makes minutes pass at once.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from imap_proxy.config import ProxyConfig, TimeoutsConfig
from imap_proxy.net.connection import ClientConnection
from imap_proxy.quirks.fingerprint import FingerprintSet
from imap_proxy.quirks.model import load_rules
from imap_proxy.quirks.store import QuirkSnapshot, RuleStore
from tests.net.fakes import LineClient, MemoryDialer, UpstreamScript


async def silent_idler(stream: trio.abc.Stream, script: UpstreamScript) -> None:
    upstream = LineClient(stream)
    await upstream.send(script.greeting)
    while line := await upstream.read_line():
        tag, _, rest = line.partition(b" ")
        verb = rest.split(b" ", 1)[0].strip().upper()
        if verb == b"IDLE":
            await upstream.send(b"+ idling\r\n")
        elif line.strip().upper() == b"DONE":
            await upstream.send(b"i OK IDLE terminated\r\n")
        else:
            await upstream.send(tag + b" OK done\r\n")


def connection_with(
    rule_ids: list[str], nursery: trio.Nursery
) -> tuple[ClientConnection, LineClient]:
    client_end, proxy_end = trio.testing.memory_stream_pair()
    dialer = MemoryDialer(nursery, UpstreamScript(), server=silent_idler)
    store = RuleStore(QuirkSnapshot(load_rules().only(rule_ids), FingerprintSet.packaged()))
    config = ProxyConfig(timeouts=TimeoutsConfig(idle=1800))
    connection = ClientConnection(proxy_end, config=config, dialer=dialer, rules=store)
    return connection, LineClient(client_end)


async def idle(client: LineClient) -> None:
    await client.read_line()
    await client.send(b"a LOGIN user secret\r\n")
    assert (await client.read_line()).startswith(b"a OK")
    await client.send(b"i IDLE\r\n")
    assert await client.read_line() == b"+ idling\r\n"


async def test_an_idling_client_hears_from_the_proxy_every_two_minutes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        connection, client = connection_with(["idle-keepalive"], nursery)
        nursery.start_soon(connection.run)
        await idle(client)
        started = trio.current_time()
        for number in range(1, 4):
            assert await client.read_line() == b"* OK Still here\r\n"
            assert trio.current_time() - started == pytest.approx(120 * number, abs=1)
        await client.send(b"DONE\r\n")
        assert await client.read_line() == b"i OK IDLE terminated\r\n"
        # Out of IDLE, nothing more: the next line is the idle timeout's BYE.
        done_at = trio.current_time()
        assert (await client.read_line()).startswith(b"* BYE Autologout")
        assert trio.current_time() - done_at == pytest.approx(1800, abs=1)


async def test_keepalives_are_no_activity_for_the_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        connection, client = connection_with(["idle-keepalive"], nursery)
        nursery.start_soon(connection.run)
        await idle(client)
        started = trio.current_time()
        lines = []
        while not (line := await client.read_line()).startswith(b"* BYE"):
            lines.append(line)
        assert trio.current_time() - started == pytest.approx(1800, abs=1)
        # at 120, 240, … 1680 s; at 1800 s the idle timeout comes first
        assert lines == [b"* OK Still here\r\n"] * 14
    assert connection.outcome == "timeout"


async def test_no_keepalive_without_the_rule(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        connection, client = connection_with([], nursery)
        nursery.start_soon(connection.run)
        await idle(client)
        started = trio.current_time()
        assert (await client.read_line()).startswith(b"* BYE Autologout")
        assert trio.current_time() - started == pytest.approx(1800, abs=1)
