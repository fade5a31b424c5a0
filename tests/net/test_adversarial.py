"""Hostile or broken peers on in-memory streams: each gets a clear answer, nothing piles up.

How this works: like tests/net/test_connection.py, a `ClientConnection` runs between a
test client and a scripted upstream (`MemoryDialer` with a `server=` function that plays
the broken server). Time-based cases use pytest-trio's `autojump_clock`, so a
30-second greeting timeout costs no real time. Through the real proxy in front of
Dovecot the client-side attacks are in tests/integration/test_adversarial.py.
"""

from __future__ import annotations

import trio
import trio.testing

from imap_proxy.config import LimitsConfig, ProxyConfig, TimeoutsConfig
from imap_proxy.net.connection import ClientConnection
from tests.net.fakes import GREETING, LineClient, MemoryDialer, UpstreamScript


def connect(
    nursery: trio.Nursery,
    server: object,
    config: ProxyConfig | None = None,
    *,
    client_pair: object = trio.testing.memory_stream_pair,
    high_water: int = 1024 * 1024,
) -> tuple[ClientConnection, LineClient]:
    client_end, proxy_end = client_pair()  # type: ignore[operator]
    dialer = MemoryDialer(nursery, UpstreamScript(), server=server)  # type: ignore[arg-type]
    connection = ClientConnection(
        proxy_end, config=config or ProxyConfig(), dialer=dialer, high_water=high_water
    )
    nursery.start_soon(connection.run)
    return connection, LineClient(client_end)


async def answer_commands(upstream: LineClient, count: int | None = None) -> None:
    """Answer each command line with a tagged OK (the fake's generic answer)."""
    while count is None or count > 0:
        line = await upstream.read_line()
        if not line:
            return
        await upstream.send(line.split(b" ")[0] + b" OK done\r\n")
        if count is not None:
            count -= 1


# --- the upstream's greeting -----------------------------------------------------------


async def test_no_greeting_gets_bye_unavailable(autojump_clock: trio.testing.MockClock) -> None:
    async def silent(stream: trio.abc.Stream, script: UpstreamScript) -> None:
        await trio.sleep_forever()

    config = ProxyConfig(timeouts=TimeoutsConfig(greeting=30, preauth=600))
    async with trio.open_nursery() as nursery:
        connection, client = connect(nursery, silent, config)
        await client.send(b"a NOOP\r\n")  # a client's activity does not extend it
        data = await client.read_until_eof()
        nursery.cancel_scope.cancel()
    assert data == b"* BYE [UNAVAILABLE] Upstream server did not greet in time\r\n"
    assert connection.outcome == "upstream-greeting"


async def test_a_late_greeting_within_the_timeout_is_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def late(stream: trio.abc.Stream, script: UpstreamScript) -> None:
        await trio.sleep(20)
        upstream = LineClient(stream)
        await upstream.send(GREETING)
        await answer_commands(upstream)

    config = ProxyConfig(timeouts=TimeoutsConfig(greeting=30))
    async with trio.open_nursery() as nursery:
        _, client = connect(nursery, late, config)
        await client.send(b"a NOOP\r\n")  # pipelined before the greeting: waits for it
        assert (await client.read_line()).startswith(b"* OK [CAPABILITY IMAP4rev1")
        assert await client.read_line() == b"a OK done\r\n"
        await trio.sleep(15)  # past the greeting timeout (t=35): it no longer applies
        await client.send(b"b NOOP\r\n")
        assert await client.read_line() == b"b OK done\r\n"
        nursery.cancel_scope.cancel()


async def test_a_greeting_that_stalls_in_the_capability_probe_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def stalls(stream: trio.abc.Stream, script: UpstreamScript) -> None:
        await stream.send_all(b"* OK no capabilities\r\n")
        await trio.sleep_forever()  # never answers the proxy's CAPABILITY

    config = ProxyConfig(timeouts=TimeoutsConfig(greeting=30))
    async with trio.open_nursery() as nursery:
        _, client = connect(nursery, stalls, config)
        data = await client.read_until_eof()
        nursery.cancel_scope.cancel()
    assert data == b"* BYE [UNAVAILABLE] Upstream server did not greet in time\r\n"


async def test_garbage_instead_of_a_greeting() -> None:
    async def garbage(stream: trio.abc.Stream, script: UpstreamScript) -> None:
        await stream.send_all(b"\x16\x03\x01\x00\xa5 SSH-2.0-OpenSSH\r\n")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        _, client = connect(nursery, garbage)
        data = await client.read_until_eof()
        nursery.cancel_scope.cancel()
    assert data == b"* BYE [UNAVAILABLE] Upstream server sent no valid greeting\r\n"


# --- a broken upstream mid-session -------------------------------------------------------


async def test_upstream_overlong_line_ends_the_session_with_bye() -> None:
    async def overlong(stream: trio.abc.Stream, script: UpstreamScript) -> None:
        upstream = LineClient(stream)
        await upstream.send(GREETING)
        await upstream.read_line()
        await upstream.send(b"* 1 FETCH (FLAGS (" + b"x" * 5000)  # never a line end
        await trio.sleep_forever()

    config = ProxyConfig(limits=LimitsConfig(upstream_max_line=1024))
    async with trio.open_nursery() as nursery:
        connection, client = connect(nursery, overlong, config)
        await client.read_line()
        await client.send(b"a FETCH 1 FLAGS\r\n")
        data = await client.read_until_eof()
        nursery.cancel_scope.cancel()
    assert data == b"* BYE [UNAVAILABLE] Upstream server protocol error\r\n"
    assert connection.outcome == "upstream-protocol-error"


async def test_upstream_garbage_lines_are_relayed_and_the_session_goes_on() -> None:
    async def babbles(stream: trio.abc.Stream, script: UpstreamScript) -> None:
        upstream = LineClient(stream)
        await upstream.send(GREETING)
        line = await upstream.read_line()
        await upstream.send(b'\x00\xff garbage ) ( "\r\n' + line.split(b" ")[0] + b" OK done\r\n")
        await answer_commands(upstream)

    async with trio.open_nursery() as nursery:
        _, client = connect(nursery, babbles)
        await client.read_line()
        await client.send(b"a NOOP\r\n")
        assert await client.read_line() == b'\x00\xff garbage ) ( "\r\n'  # transparent
        assert await client.read_line() == b"a OK done\r\n"
        await client.send(b"b NOOP\r\n")
        assert await client.read_line() == b"b OK done\r\n"
        nursery.cancel_scope.cancel()


async def test_upstream_closed_mid_literal_never_completes_the_fetch() -> None:
    async def cut(stream: trio.abc.Stream, script: UpstreamScript) -> None:
        upstream = LineClient(stream)
        await upstream.send(GREETING)
        await upstream.read_line()
        await upstream.send(b"* 1 FETCH (BODY[] {1000}\r\n" + b"y" * 300)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        connection, client = connect(nursery, cut)
        await client.read_line()
        await client.send(b"a FETCH 1 BODY[]\r\n")
        data = await client.read_until_eof()
        nursery.cancel_scope.cancel()
    # Mid-message a BYE cannot be framed: the client sees the literal cut and the end.
    assert data == b"* 1 FETCH (BODY[] {1000}\r\n" + b"y" * 300
    assert connection.outcome == "upstream-lost"


# --- a hostile client --------------------------------------------------------------------


async def test_a_client_trickling_a_byte_at_a_time_is_timed_out_before_login(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def server(stream: trio.abc.Stream, script: UpstreamScript) -> None:
        upstream = LineClient(stream)
        await upstream.send(GREETING)
        await answer_commands(upstream)

    config = ProxyConfig(timeouts=TimeoutsConfig(preauth=10))
    async with trio.open_nursery() as nursery:
        connection, client = connect(nursery, server, config)
        await client.read_line()
        sent = 0
        with trio.move_on_after(1000):  # virtual time: a bound, not a measurement
            for octet in b"a LOGIN " + b"x" * 10_000:
                try:
                    await client.send(bytes([octet]))
                except trio.BrokenResourceError:
                    break
                sent += 1
                await trio.sleep(1)
        line = await client.read_line()
        nursery.cancel_scope.cancel()
    assert line == b"* BYE Autologout; idle for too long\r\n"
    assert connection.outcome == "timeout"
    assert sent < 100  # cut after the pre-auth timeout, not after the 10,000 octets


async def test_a_client_that_never_reads_its_answers_is_not_read_either() -> None:
    """Commands the proxy answers itself (here a refused STARTTLS) from a client that does
    not read: the proxy stops reading it once its answers pass the high-water mark."""

    async def server(stream: trio.abc.Stream, script: UpstreamScript) -> None:
        upstream = LineClient(stream)
        await upstream.send(GREETING)
        await answer_commands(upstream)

    high_water = 16 * 1024
    batch = b"a STARTTLS\r\n" * 100
    batches = 2000  # 2.4 MB of commands, 10 MB of answers if they were all taken
    async with trio.open_nursery() as nursery:
        connection, client = connect(
            nursery, server, client_pair=trio.testing.lockstep_stream_pair, high_water=high_water
        )

        async def flood() -> None:
            for _ in range(batches):
                await client.send(batch)

        await client.read_line()
        nursery.start_soon(flood)
        await trio.testing.wait_all_tasks_blocked()
        taken = connection.stats.bytes_from_client
        answer = len(b"a BAD STARTTLS is not available on this connection\r\n")
        # At most about one high-water mark of answers (plus the batch that crossed it).
        assert taken <= (high_water // answer + 2 * 100) * len(b"a STARTTLS\r\n")
        assert taken < batches * len(batch)
        nursery.cancel_scope.cancel()


async def test_the_preauth_timeout_starts_with_the_greeting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A slow upstream greeting does not eat into the client's time to log in."""

    async def slow_greeting(stream: trio.abc.Stream, script: UpstreamScript) -> None:
        await trio.sleep(25)
        upstream = LineClient(stream)
        await upstream.send(GREETING)
        await answer_commands(upstream)

    config = ProxyConfig(timeouts=TimeoutsConfig(greeting=30, preauth=10))
    async with trio.open_nursery() as nursery:
        connection, client = connect(nursery, slow_greeting, config)
        assert (await client.read_line()).startswith(b"* OK")
        greeted_at = trio.current_time()
        await trio.sleep(8)  # 33 s after connecting, 8 s after the greeting
        await client.send(b"a NOOP\r\n")
        assert await client.read_line() == b"a OK done\r\n"
        assert (await client.read_line()).startswith(b"* BYE Autologout")
        assert trio.current_time() - greeted_at > 10
        nursery.cancel_scope.cancel()
    assert connection.outcome == "timeout"


async def test_a_broken_upstream_connection_ends_only_its_own_session() -> None:
    """Through `serve()` on loopback: one upstream connection per client; the first
    behaves, each later one breaks in its own way; the first client goes on."""
    from imap_proxy.net.server import ServerHandle, serve
    from tests.net.test_server import connect as connect_client
    from tests.net.test_server import proxy_config, stop

    behaviours = ["normal", "overlong", "cut-mid-literal", "silent", "garbage"]

    async def upstream(stream: trio.SocketStream) -> None:
        behaviour = behaviours.pop(0)
        server = LineClient(stream)
        try:
            if behaviour == "silent":
                await trio.sleep_forever()
            if behaviour == "garbage":
                await server.send(b"\x00\x01\x02 not IMAP\r\n")
                await trio.sleep_forever()
            await server.send(GREETING)
            line = await server.read_line()
            if behaviour == "overlong":
                await server.send(b"* " + b"y" * 5000)
                await trio.sleep_forever()
            if behaviour == "cut-mid-literal":
                await server.send(b"* 1 FETCH (BODY[] {100}\r\nabc")
                await stream.aclose()
                return
            while line:
                await server.send(line.split(b" ")[0] + b" OK done\r\n")
                line = await server.read_line()
        except trio.BrokenResourceError:
            pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, upstream, 0)
        port = listeners[0].socket.getsockname()[1]
        config = proxy_config(
            port,
            limits=LimitsConfig(upstream_max_line=1024),
            timeouts=TimeoutsConfig(greeting=0.5),
        )
        handle: ServerHandle = await nursery.start(serve, config)
        witness = await connect_client(handle)
        await witness.read_line()
        expected = [
            b"* BYE [UNAVAILABLE] Upstream server protocol error\r\n",
            b"* 1 FETCH (BODY[] {100}\r\nabc",
            b"* BYE [UNAVAILABLE] Upstream server did not greet in time\r\n",
            b"* BYE [UNAVAILABLE] Upstream server sent no valid greeting\r\n",
        ]
        for number, answer in enumerate(expected):
            victim = await connect_client(handle)
            if number < 2:
                await victim.read_line()  # greeted: then the command breaks it
                await victim.send(b"v FETCH 1 BODY[]\r\n")
            assert await victim.read_until_eof() == answer
            await witness.send(b"w%d NOOP\r\n" % number)
            assert await witness.read_line() == b"w%d OK done\r\n" % number
        await witness.stream.aclose()
        await stop(handle, nursery)
