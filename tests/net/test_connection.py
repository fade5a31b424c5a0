"""ClientConnection on in-memory streams: relay, failures, timeouts, backpressure, STARTTLS.

How this works: each test builds a `ClientConnection` around one end of a memory stream
pair (the other end is the test's client) with a `MemoryDialer` whose upstream is the
scripted fake IMAP server, and the real `ProxySession`. Time-based tests use pytest-trio's
`autojump_clock`, so a 60-second pre-auth timeout takes no real time.
"""

from __future__ import annotations

import pytest
import structlog.testing
import trio
import trio.testing

from imap_proxy.config import ProxyConfig, TimeoutsConfig
from imap_proxy.net.connection import (
    LISTENER_TLS,
    ClientConnection,
    ConnectionClosed,
    ConnectionEvent,
    ConnectionOpened,
    session_settings,
)
from imap_proxy.net.tls import server_ssl_context
from imap_proxy.quirks.store import RuleStore
from imap_proxy.session import events as ev
from imap_proxy.session.proxy import ProxySession
from imap_proxy.session.settings import PeerInfo, SessionSettings
from tests.net.fakes import LineClient, MemoryDialer, UpstreamScript
from tests.support.tls import TlsFiles


def make_connection(
    nursery: trio.Nursery,
    script: UpstreamScript,
    *,
    config: ProxyConfig | None = None,
    fail_with: str | None = None,
    **kwargs: object,
) -> tuple[ClientConnection, LineClient, MemoryDialer]:
    client_end, proxy_end = trio.testing.memory_stream_pair()
    dialer = MemoryDialer(nursery, script, fail_with=fail_with)
    connection = ClientConnection(
        proxy_end,
        config=config or ProxyConfig(),
        dialer=dialer,
        peer=("192.0.2.7", 40000),
        **kwargs,  # type: ignore[arg-type]
    )
    return connection, LineClient(client_end), dialer


async def test_relays_greeting_commands_and_logout() -> None:
    script = UpstreamScript()
    seen: list[ConnectionEvent] = []
    async with trio.open_nursery() as nursery:
        connection, client, _ = make_connection(nursery, script, observer=seen.append)
        nursery.start_soon(connection.run)
        greeting = await client.read_line()
        assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev1")
        await client.send(b"a1 NOOP\r\n")
        assert await client.read_line() == b"a1 OK NOOP completed\r\n"
        await client.send(b"a2 LOGOUT\r\n")
        assert await client.read_line() == b"* BYE logging out\r\n"
        assert await client.read_line() == b"a2 OK LOGOUT completed\r\n"
        assert await client.read_until_eof() == b""
    assert script.received == [b"a1 NOOP\r\n", b"a2 LOGOUT\r\n"]
    assert connection.outcome == "logout"
    assert connection.stats.commands == 2
    assert connection.stats.bytes_from_client == len(b"a1 NOOP\r\na2 LOGOUT\r\n")
    assert connection.stats.bytes_to_upstream == connection.stats.bytes_from_client
    assert isinstance(seen[0], ConnectionOpened)
    assert seen[0].peer_address == "192.0.2.7"
    closed = seen[-1]
    assert isinstance(closed, ConnectionClosed)
    assert closed.outcome == "logout"
    assert closed.stats.bytes_to_client == connection.stats.bytes_to_client > len(greeting)
    names = [(e.name, e.status) for e in seen if isinstance(e, ev.CommandCompleted)]
    assert names == [("NOOP", "OK"), ("LOGOUT", "OK")]


async def test_logs_describe_the_connection_but_carry_no_client_data() -> None:
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            connection, client, _ = make_connection(nursery, UpstreamScript())
            nursery.start_soon(connection.run)
            await client.read_line()
            await client.send(b"a1 LOGIN alice s3cr3t\r\na2 LOGOUT\r\n")
            assert await client.read_until_eof() != b""
    assert "alice" not in repr(logs) and "s3cr3t" not in repr(logs)
    by_event = {entry["event"]: entry for entry in logs}
    assert by_event["authenticated"]["user"].startswith("u:")
    assert by_event["authenticated"]["mechanism"] == "LOGIN"
    closed = by_event["connection closed"]
    assert closed["connection_id"] == connection.connection_id
    assert closed["outcome"] == "logout" and closed["tls"] == "none"
    assert closed["peer"] == "192.0.2.7" and closed["listener"] == "imap"
    assert closed["bytes_from_client"] == len(b"a1 LOGIN alice s3cr3t\r\na2 LOGOUT\r\n")
    assert closed["bytes_to_client"] > 0 and closed["commands"] == 2
    assert "duration" in closed
    started = [e for e in logs if e["event"] == "command started"]
    assert [(e["tag"], e["command"]) for e in started] == [("a1", "LOGIN"), ("a2", "LOGOUT")]


async def test_the_session_summary_names_the_client_the_user_and_the_rules_fired() -> None:
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            connection, client, _ = make_connection(
                nursery, UpstreamScript(), rules=RuleStore.load(None)
            )
            nursery.start_soon(connection.run)
            await client.read_line()
            # Thunderbird's shape: lowercase verbs, a random first tag, CAPABILITY first.
            await client.send(b"7 capability\r\n8 login alice s3cr3t\r\n9 logout\r\n")
            assert await client.read_until_eof() != b""
    closed = next(e for e in logs if e["event"] == "connection closed")
    assert closed["user"].startswith("u:") and "alice" not in repr(logs)
    identified = [e["family"] for e in logs if e["event"] == "client identified"]
    assert identified[-1] == closed["client"] == "thunderbird"
    # The fake upstream lacks NAMESPACE: the shipped rule adds it to the capabilities.
    assert "answer-namespace" in closed["rules_fired"].split(",")


async def test_pipelined_commands_arrive_in_order() -> None:
    script = UpstreamScript()
    async with trio.open_nursery() as nursery:
        connection, client, _ = make_connection(nursery, script)
        nursery.start_soon(connection.run)
        await client.read_line()
        await client.send(b"".join(b"t%d NOOP\r\n" % i for i in range(50)))
        answers = [await client.read_line() for _ in range(50)]
        assert answers == [b"t%d OK NOOP completed\r\n" % i for i in range(50)]
        await client.stream.aclose()
    assert script.received == [b"t%d NOOP\r\n" % i for i in range(50)]
    assert connection.outcome == "client-closed"


async def test_upstream_unavailable_gives_bye_and_does_not_start_a_session() -> None:
    factory_calls: list[SessionSettings] = []

    def factory(settings: SessionSettings) -> ProxySession:
        factory_calls.append(settings)
        return ProxySession(settings)

    async with trio.open_nursery() as nursery:
        connection, client, _ = make_connection(
            nursery, UpstreamScript(), fail_with="connection refused", session_factory=factory
        )
        nursery.start_soon(connection.run)
        assert await client.read_until_eof() == b"* BYE [UNAVAILABLE] connection refused\r\n"
    assert connection.outcome == "upstream-unavailable"
    assert factory_calls == []


async def test_upstream_closing_after_greeting_is_reported_by_the_session() -> None:
    async def greet_then_hang_up(stream: trio.abc.Stream, script: UpstreamScript) -> None:
        await stream.send_all(script.greeting)
        await trio.sleep(1)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        client_end, proxy_end = trio.testing.memory_stream_pair()
        dialer = MemoryDialer(nursery, UpstreamScript(), server=greet_then_hang_up)
        connection = ClientConnection(proxy_end, config=ProxyConfig(), dialer=dialer)
        nursery.start_soon(connection.run)
        client = LineClient(client_end)
        assert (await client.read_line()).startswith(b"* OK")
        assert await client.read_line() == (
            b"* BYE [UNAVAILABLE] Upstream server closed the connection\r\n"
        )
        assert await client.read_until_eof() == b""
    assert connection.outcome == "upstream-lost"


async def test_upstream_closing_before_greeting_tells_the_client_why() -> None:
    async def hang_up(stream: trio.abc.Stream, script: UpstreamScript) -> None:
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        client_end, proxy_end = trio.testing.memory_stream_pair()
        dialer = MemoryDialer(nursery, UpstreamScript(), server=hang_up)
        connection = ClientConnection(proxy_end, config=ProxyConfig(), dialer=dialer)
        nursery.start_soon(connection.run)
        data = await LineClient(client_end).read_until_eof()
    assert data == b"* BYE [UNAVAILABLE] Upstream server closed the connection\r\n"
    assert connection.outcome == "upstream-unavailable"


async def test_preauth_timeout_says_bye(autojump_clock: trio.testing.MockClock) -> None:
    config = ProxyConfig(timeouts=TimeoutsConfig(preauth=60))
    async with trio.open_nursery() as nursery:
        connection, client, _ = make_connection(nursery, UpstreamScript(), config=config)
        nursery.start_soon(connection.run)
        start = trio.current_time()
        await client.read_line()
        await trio.sleep(50)
        await client.send(b"a NOOP\r\n")  # activity resets the timer
        assert await client.read_line() == b"a OK NOOP completed\r\n"
        noop_at = trio.current_time()
        assert await client.read_line() == b"* BYE Autologout; idle for too long\r\n"
        assert trio.current_time() - noop_at == pytest.approx(60, abs=0.5)
        assert trio.current_time() - start > 100
        assert await client.read_until_eof() == b""
    assert connection.outcome == "timeout"


async def test_idle_timeout_after_login_is_the_long_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ProxyConfig(timeouts=TimeoutsConfig(preauth=60, idle=1800))
    async with trio.open_nursery() as nursery:
        connection, client, _ = make_connection(nursery, UpstreamScript(), config=config)
        nursery.start_soon(connection.run)
        await client.read_line()
        await client.send(b"a LOGIN user secret\r\n")
        assert (await client.read_line()).startswith(b"a OK")
        logged_in_at = trio.current_time()
        assert (await client.read_line()).startswith(b"* BYE Autologout")
        assert trio.current_time() - logged_in_at == pytest.approx(1800, abs=0.5)


async def test_a_long_download_is_not_cut_by_the_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Data still flowing to the client counts as activity (outside IDLE)."""

    async def slow_fetch(stream: trio.abc.Stream, script: UpstreamScript) -> None:
        upstream = LineClient(stream)
        await upstream.send(script.greeting)
        login_tag = (await upstream.read_line()).split(b" ")[0]
        await upstream.send(login_tag + b" OK Logged in\r\n")
        fetch_tag = (await upstream.read_line()).split(b" ")[0]
        for number in range(1, 5):
            await trio.sleep(600)
            await upstream.send(b"* %d FETCH (FLAGS ())\r\n" % number)
        await upstream.send(fetch_tag + b" OK FETCH completed\r\n")
        await trio.sleep_forever()

    config = ProxyConfig(timeouts=TimeoutsConfig(idle=1800))
    async with trio.open_nursery() as nursery:
        client_end, proxy_end = trio.testing.memory_stream_pair()
        dialer = MemoryDialer(nursery, UpstreamScript(), server=slow_fetch)
        connection = ClientConnection(proxy_end, config=config, dialer=dialer)
        nursery.start_soon(connection.run)
        client = LineClient(client_end)
        await client.read_line()
        await client.send(b"a LOGIN user secret\r\nf FETCH 1:4 FLAGS\r\n")
        assert await client.read_line() == b"a OK Logged in\r\n"
        lines = [await client.read_line() for _ in range(5)]
        assert lines[-1] == b"f OK FETCH completed\r\n"
        done_at = trio.current_time()
        assert done_at >= 2400  # longer than the idle timeout, and not cut
        assert (await client.read_line()).startswith(b"* BYE Autologout")
        assert trio.current_time() - done_at == pytest.approx(1800, abs=0.5)
        nursery.cancel_scope.cancel()


async def test_shutdown_says_bye_to_an_idle_client() -> None:
    async with trio.open_nursery() as nursery:
        connection, client, _ = make_connection(nursery, UpstreamScript())
        nursery.start_soon(connection.run)
        await client.read_line()
        connection.shutdown()
        assert await client.read_until_eof() == b"* BYE [UNAVAILABLE] Server shutting down\r\n"
    assert connection.outcome == "shutdown"


async def test_shutdown_before_the_upstream_answers_still_says_bye() -> None:
    async with trio.open_nursery() as nursery:
        connection, client, _ = make_connection(nursery, UpstreamScript())
        connection.shutdown()
        nursery.start_soon(connection.run)
        assert await client.read_until_eof() == b"* BYE [UNAVAILABLE] Server shutting down\r\n"


async def test_backpressure_stops_reading_the_client_while_upstream_is_stuck() -> None:
    """A stuck upstream: at most about one high-water mark plus one read is taken in."""
    high_water = 64 * 1024
    stuck = trio.Event()
    upstream_side: list[trio.abc.Stream] = []

    async def slow_server(stream: trio.abc.Stream, script: UpstreamScript) -> None:
        upstream_side.append(stream)
        await stream.send_all(script.greeting)
        await stuck.wait()
        total = 0
        while total < expected:
            data = await stream.receive_some(1 << 20)
            assert data
            received.append(bytes(data))
            total += len(data)

    payload = b"x" * (1 << 20)
    command = b"a APPEND INBOX {%d+}\r\n" % len(payload) + payload + b"\r\n"
    expected = len(command)
    received: list[bytes] = []
    async with trio.open_nursery() as nursery:
        client_end, proxy_end = trio.testing.memory_stream_pair()
        dialer = MemoryDialer(
            nursery, UpstreamScript(), pair=trio.testing.lockstep_stream_pair, server=slow_server
        )
        connection = ClientConnection(
            proxy_end, config=ProxyConfig(), dialer=dialer, high_water=high_water
        )
        nursery.start_soon(connection.run)
        client = LineClient(client_end)
        await client.read_line()
        # The memory stream never blocks the sender: all of it is offered at once.
        await client.send(command)
        await trio.testing.wait_all_tasks_blocked()
        taken = connection.stats.bytes_from_client
        assert high_water < taken <= high_water + 256 * 1024 + 100
        assert taken < expected
        stuck.set()
        with trio.fail_after(5):
            while sum(map(len, received)) < expected:
                await trio.sleep(0.01)
        assert b"".join(received) == command
        await client.stream.aclose()


async def test_a_session_bug_closes_the_connection_quietly() -> None:
    class Broken(ProxySession):
        def receive_from_client(self, data: bytes) -> list[ev.Event]:
            raise ZeroDivisionError("bug")

    async with trio.open_nursery() as nursery:
        connection, client, _ = make_connection(nursery, UpstreamScript(), session_factory=Broken)
        nursery.start_soon(connection.run)
        greeting = await client.read_line()
        await client.send(b"a NOOP\r\n")
        assert await client.read_until_eof() == b""
    assert greeting.startswith(b"* OK")
    assert connection.outcome == "internal-error"


async def test_client_starttls_upgrades_and_relays(tls_files: TlsFiles) -> None:
    from imap_proxy.config import TLSConfig

    tls = TLSConfig(cert=tls_files.cert_file, key=tls_files.key_file)
    config = ProxyConfig(tls=tls)
    script = UpstreamScript()
    async with trio.open_nursery() as nursery:
        connection, client, _ = make_connection(
            nursery, script, config=config, server_ssl=server_ssl_context(tls)
        )
        nursery.start_soon(connection.run)
        greeting = await client.read_line()
        assert b"STARTTLS" in greeting
        # Plaintext pipelined after STARTTLS must be discarded, never relayed.
        await client.send(b"s STARTTLS\r\ninjected NOOP\r\n")
        assert await client.read_line() == b"s OK Begin TLS negotiation now\r\n"
        tls_client = trio.SSLStream(
            client.stream, tls_files.client_context(), server_hostname="localhost"
        )
        await tls_client.do_handshake()
        secure = LineClient(tls_client)
        await secure.send(b"c CAPABILITY\r\n")
        capability = await secure.read_line()
        assert capability.startswith(b"* CAPABILITY IMAP4rev1")
        assert b"STARTTLS" not in capability
        assert await secure.read_line() == b"c OK done\r\n"
        await secure.send(b"z LOGOUT\r\n")
        assert await secure.read_line() == b"* BYE logging out\r\n"
    assert b"injected NOOP\r\n" not in script.received
    assert script.received == [b"c CAPABILITY\r\n", b"z LOGOUT\r\n"]


async def test_implicit_tls_listener_handshakes_first(tls_files: TlsFiles) -> None:
    from imap_proxy.config import TLSConfig

    tls = TLSConfig(cert=tls_files.cert_file, key=tls_files.key_file)
    async with trio.open_nursery() as nursery:
        connection, client, _ = make_connection(
            nursery,
            UpstreamScript(),
            config=ProxyConfig(tls=tls),
            server_ssl=server_ssl_context(tls),
            listener=LISTENER_TLS,
        )
        nursery.start_soon(connection.run)
        tls_client = trio.SSLStream(
            client.stream, tls_files.client_context(), server_hostname="127.0.0.1"
        )
        secure = LineClient(tls_client)
        greeting = await secure.read_line()
        assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev1")
        assert b"STARTTLS" not in greeting
        await secure.send(b"z LOGOUT\r\n")
        assert await secure.read_line() == b"* BYE logging out\r\n"


async def test_failed_implicit_tls_handshake_ends_without_dialling(tls_files: TlsFiles) -> None:
    from imap_proxy.config import TLSConfig

    tls = TLSConfig(cert=tls_files.cert_file, key=tls_files.key_file)
    async with trio.open_nursery() as nursery:
        connection, client, dialer = make_connection(
            nursery,
            UpstreamScript(),
            config=ProxyConfig(tls=tls),
            server_ssl=server_ssl_context(tls),
            listener=LISTENER_TLS,
        )
        nursery.start_soon(connection.run)
        await client.send(b"a NOOP this is not TLS\r\n" * 10)
        # Whatever comes back (a TLS alert at most) is no IMAP greeting; then EOF.
        assert b"* OK" not in await client.read_until_eof()
    assert connection.outcome == "client-tls-failed"
    assert dialer.dialled == 0


def test_session_settings_from_config() -> None:
    config = ProxyConfig.model_validate(
        {
            "require_tls": True,
            "upstream": {"security": "starttls"},
            "id": {"forward_originating": True},
            "limits": {"client_max_line": 2048, "capture_literal_max": 100},
        }
    )
    peer = PeerInfo("192.0.2.1", 1234, "imap", "sid")
    settings = session_settings(config, listener="imap", peer=peer, starttls_available=True)
    assert settings.client_limits.max_line_length == 2048
    assert settings.starttls_available and not settings.client_tls
    assert settings.require_tls and settings.upstream_starttls and settings.forward_originating
    assert settings.capture_literal_max == 100
    assert settings.peer is peer
    imaps = session_settings(config, listener=LISTENER_TLS, peer=peer, starttls_available=True)
    assert imaps.client_tls and not imaps.starttls_available
