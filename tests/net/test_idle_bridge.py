"""The IDLE bridge on memory streams with a mock clock: the I/O layer's ticks.

How this works: a fake upstream that logs every line it gets, times each IDLE it runs
(an IDLE over 29 minutes is what RFC 2177 lets a server end) and, without IDLE, answers
NOOP with new mail now and then. pytest-trio's `autojump_clock` makes hours pass at once;
the client idles through them.
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

WITH_IDLE = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE AUTH=PLAIN] ready\r\n"
WITHOUT_IDLE = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] ready\r\n"


class FakeServer:
    def __init__(self, *, done_delay: float = 0.0, refuse_reidle: bool = False) -> None:
        self.done_delay = done_delay  # seconds before the tagged answer to a DONE
        self.refuse_reidle = refuse_reidle  # NO to every IDLE after the first
        self.lines: list[bytes] = []
        self.idle_lengths: list[float] = []
        self.noops: list[float] = []

    async def serve(self, stream: trio.abc.Stream, script: UpstreamScript) -> None:
        upstream = LineClient(stream)
        await upstream.send(script.greeting)
        idle_tag, idle_since = b"", 0.0
        while line := await upstream.read_line():
            self.lines.append(line)
            tag, _, rest = line.partition(b" ")
            verb = rest.split(b" ", 1)[0].strip().upper()
            if verb == b"IDLE" and self.refuse_reidle and self.idle_lengths:
                await upstream.send(tag + b" NO [LIMIT] No more IDLE for you\r\n")
            elif verb == b"IDLE":
                idle_tag, idle_since = tag, trio.current_time()
                await upstream.send(b"+ idling\r\n")
            elif line.strip().upper() == b"DONE":
                self.idle_lengths.append(trio.current_time() - idle_since)
                await trio.sleep(self.done_delay)
                await upstream.send(b"* 3 EXISTS\r\n" if self.done_delay else b"")
                await upstream.send(idle_tag + b" OK Idle completed\r\n")
            elif verb == b"NOOP":
                self.noops.append(trio.current_time())
                if len(self.noops) == 3:
                    await upstream.send(b"* 3 EXISTS\r\n* 1 RECENT\r\n")
                await upstream.send(tag + b" OK NOOP completed\r\n")
            else:
                await upstream.send(tag + b" OK done\r\n")


def connection_with(
    rule_ids: list[str], greeting: bytes, server: FakeServer, nursery: trio.Nursery
) -> tuple[ClientConnection, LineClient]:
    client_end, proxy_end = trio.testing.memory_stream_pair()
    dialer = MemoryDialer(nursery, UpstreamScript(greeting=greeting), server=server.serve)
    store = RuleStore(QuirkSnapshot(load_rules().only(rule_ids), FingerprintSet.packaged()))
    config = ProxyConfig(timeouts=TimeoutsConfig(idle=7200))
    connection = ClientConnection(proxy_end, config=config, dialer=dialer, rules=store)
    return connection, LineClient(client_end)


async def idle(client: LineClient) -> None:
    await client.read_line()
    await client.send(b"a LOGIN user secret\r\n")
    assert (await client.read_line()).startswith(b"a OK")
    await client.send(b"i IDLE\r\n")
    assert await client.read_line() == b"+ idling\r\n"


async def test_an_hour_of_idle_is_three_upstream_idles_of_25_minutes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = FakeServer()
    async with trio.open_nursery() as nursery:
        connection, client = connection_with(["idle-reidle"], WITH_IDLE, server, nursery)
        nursery.start_soon(connection.run)
        await idle(client)
        await trio.sleep(3600)
        assert server.idle_lengths == [pytest.approx(1500, abs=1)] * 2
        await client.send(b"DONE\r\n")
        assert await client.read_line() == b"i OK Idle completed\r\n"
        idles = [line for line in server.lines if line.endswith(b" IDLE\r\n")]
        assert len(idles) == 3 and idles[0] == b"i IDLE\r\n"
        assert all(line.startswith(b"ipx") for line in idles[1:])
        assert server.lines.count(b"DONE\r\n") == 3
        connection.shutdown()
        assert (await client.read_line()).startswith(b"* BYE")


async def test_without_the_rule_one_idle_lasts_the_hour(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = FakeServer()
    async with trio.open_nursery() as nursery:
        connection, client = connection_with([], WITH_IDLE, server, nursery)
        nursery.start_soon(connection.run)
        await idle(client)
        await trio.sleep(3600)
        await client.send(b"DONE\r\n")
        assert await client.read_line() == b"i OK Idle completed\r\n"
        assert server.idle_lengths == [pytest.approx(3600, abs=1)]
        connection.shutdown()
        assert (await client.read_line()).startswith(b"* BYE")


async def test_a_done_during_a_slow_renewal_ends_the_new_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = FakeServer(done_delay=10)
    async with trio.open_nursery() as nursery:
        connection, client = connection_with(["idle-reidle"], WITH_IDLE, server, nursery)
        nursery.start_soon(connection.run)
        await idle(client)
        await trio.sleep(1501)  # the renewal's DONE is out; its answer comes at 1510
        await client.send(b"DONE\r\n")
        assert await client.read_line() == b"* 3 EXISTS\r\n"  # sent with the renewal's OK
        assert await client.read_line() == b"* 3 EXISTS\r\n"  # and with the final OK
        assert await client.read_line() == b"i OK Idle completed\r\n"
        done = [line for line in server.lines if line == b"DONE\r\n" or b"IDLE" in line]
        assert done[0] == b"i IDLE\r\n" and done[1] == b"DONE\r\n"
        assert done[2].startswith(b"ipx") and done[2].endswith(b" IDLE\r\n")
        assert done[3:] == [b"DONE\r\n"]  # the client's DONE, once
        connection.shutdown()
        assert (await client.read_line()).startswith(b"* BYE")


async def test_a_refused_renewal_ends_the_clients_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = FakeServer(refuse_reidle=True)
    async with trio.open_nursery() as nursery:
        connection, client = connection_with(["idle-reidle"], WITH_IDLE, server, nursery)
        nursery.start_soon(connection.run)
        await idle(client)
        assert await client.read_line() == b"i NO [LIMIT] No more IDLE for you\r\n"
        await client.send(b"DONE\r\nn NOOP\r\n")  # that DONE is dropped
        assert await client.read_line() == b"n OK NOOP completed\r\n"
        assert server.lines[-1] == b"n NOOP\r\n" and server.lines.count(b"DONE\r\n") == 1
        connection.shutdown()
        assert (await client.read_line()).startswith(b"* BYE")


async def test_polling_relays_new_mail_to_the_idling_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = FakeServer()
    async with trio.open_nursery() as nursery:
        connection, client = connection_with(["idle-by-polling"], WITHOUT_IDLE, server, nursery)
        nursery.start_soon(connection.run)
        await idle(client)
        started = trio.current_time()
        assert await client.read_line() == b"* 3 EXISTS\r\n"  # the third NOOP's
        assert await client.read_line() == b"* 1 RECENT\r\n"
        assert trio.current_time() - started == pytest.approx(90, abs=1)
        assert [round(t - started) for t in server.noops] == [30, 60, 90]
        await client.send(b"DONE\r\n")
        assert await client.read_line() == b"i OK IDLE terminated\r\n"
        assert not any(line.endswith(b" IDLE\r\n") for line in server.lines)
        # Out of IDLE, no more polling.
        await trio.sleep(600)
        assert len(server.noops) == 3
        connection.shutdown()
        assert (await client.read_line()).startswith(b"* BYE")
