"""`serve()` end to end on loopback, against the scripted fake upstream (no Dovecot).

How this works: each test starts a fake IMAP upstream (`fake_imap_server`) and the proxy
with `handle = await nursery.start(serve, config)` on port 0, connects real TCP clients to
the port the handle reports, and checks what they read: relayed traffic, BYE lines for
refusals and drains, and that `serve()` returns after a drain.
"""

from __future__ import annotations

import functools
import os
import signal

import trio

from imap_proxy.config import (
    LimitsConfig,
    ProxyConfig,
    TimeoutsConfig,
    TLSConfig,
    UpstreamConfig,
)
from imap_proxy.net.connection import LISTENER_PLAIN, LISTENER_TLS, ConnectionEvent
from imap_proxy.net.server import ServerHandle, serve
from imap_proxy.session.proxy import ProxySession
from imap_proxy.session.settings import SessionSettings
from tests.net.fakes import (
    LineClient,
    UpstreamScript,
    fake_imap_server,
    free_port_refusing,
)
from tests.support.tls import TlsFiles


def proxy_config(upstream_port: int, **overrides: object) -> ProxyConfig:
    values: dict[str, object] = {
        "listen": ["127.0.0.1:0"],
        "upstream": UpstreamConfig(address=f"127.0.0.1:{upstream_port}"),
    }
    values.update(overrides)
    return ProxyConfig.model_validate(values)


async def stop(handle: ServerHandle, nursery: trio.Nursery) -> None:
    """Drain the proxy, wait for `serve()` to return, then stop the fake upstream."""
    handle.drain()
    with trio.fail_after(5):
        await handle.wait_stopped()
    nursery.cancel_scope.cancel()


async def connect(handle: ServerHandle, listener: str = LISTENER_PLAIN) -> LineClient:
    stream = await trio.open_tcp_stream("127.0.0.1", handle.port(listener))
    return LineClient(stream)


async def test_relay_round_trip_through_serve() -> None:
    script = UpstreamScript()
    events: list[ConnectionEvent] = []
    async with trio.open_nursery() as nursery:
        port = await fake_imap_server(nursery, script)
        handle: ServerHandle = await nursery.start(
            lambda task_status: serve(
                proxy_config(port), task_status=task_status, observer=events.append
            )
        )
        assert handle.addresses == [("imap", "127.0.0.1", handle.port())]
        assert handle.port() != 0
        client = await connect(handle)
        greeting = await client.read_line()
        assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev1")
        assert b"STARTTLS" not in greeting  # no certificate configured: not offered
        await client.send(b"a1 LOGIN alice secret\r\n")
        assert (await client.read_line()).startswith(b"a1 OK")
        assert handle.active_connections == 1
        await client.send(b"a2 LOGOUT\r\n")
        assert await client.read_line() == b"* BYE logging out\r\n"
        assert await client.read_line() == b"a2 OK LOGOUT completed\r\n"
        assert await client.read_until_eof() == b""
        with trio.fail_after(2):
            await handle.wait_all_gone()
        await stop(handle, nursery)
    assert script.received == [b"a1 LOGIN alice secret\r\n", b"a2 LOGOUT\r\n"]
    kinds = [type(event).__name__ for event in events]
    assert kinds[0] == "ConnectionOpened" and kinds[-1] == "ConnectionClosed"
    assert "Authenticated" in kinds


async def test_upstream_refused_gives_bye_unavailable() -> None:
    async with trio.open_nursery() as nursery:
        config = proxy_config(free_port_refusing())
        handle: ServerHandle = await nursery.start(serve, config)
        client = await connect(handle)
        assert await client.read_until_eof() == b"* BYE [UNAVAILABLE] connection refused\r\n"
        await stop(handle, nursery)


async def test_connection_limit_refuses_without_dialling() -> None:
    script = UpstreamScript()
    async with trio.open_nursery() as nursery:
        port = await fake_imap_server(nursery, script)
        config = proxy_config(port, limits=LimitsConfig(max_connections=1))
        handle: ServerHandle = await nursery.start(serve, config)
        first = await connect(handle)
        assert (await first.read_line()).startswith(b"* OK")
        second = await connect(handle)
        assert await second.read_until_eof() == b"* BYE [UNAVAILABLE] Too many connections\r\n"
        assert script.connections == 1
        # Once the first one leaves, a new client is admitted.
        await first.stream.aclose()
        with trio.fail_after(2):
            await handle.wait_all_gone()
        third = await connect(handle)
        assert (await third.read_line()).startswith(b"* OK")
        assert script.connections == 2
        await third.stream.aclose()
        await stop(handle, nursery)


async def test_per_address_limit() -> None:
    script = UpstreamScript()
    async with trio.open_nursery() as nursery:
        port = await fake_imap_server(nursery, script)
        limits = LimitsConfig(max_connections=10, max_connections_per_ip=2)
        handle: ServerHandle = await nursery.start(serve, proxy_config(port, limits=limits))
        clients = [await connect(handle) for _ in range(2)]
        for client in clients:
            assert (await client.read_line()).startswith(b"* OK")
        third = await connect(handle)
        assert await third.read_until_eof() == b"* BYE [UNAVAILABLE] Too many connections\r\n"
        for client in clients:
            await client.stream.aclose()
        await stop(handle, nursery)


async def test_drain_byes_idle_clients_and_serve_returns() -> None:
    script = UpstreamScript()
    async with trio.open_nursery() as nursery:
        port = await fake_imap_server(nursery, script)
        served = trio.Event()
        handles: list[ServerHandle] = []

        async def run_server(task_status: trio.TaskStatus[ServerHandle]) -> None:
            await serve(proxy_config(port), task_status=task_status)
            served.set()

        handle: ServerHandle = await nursery.start(run_server)
        handles.append(handle)
        idle = await connect(handle)
        assert (await idle.read_line()).startswith(b"* OK")
        busy = await connect(handle)
        assert (await busy.read_line()).startswith(b"* OK")
        await busy.send(b"s SLOW\r\n")
        await trio.sleep(0.05)
        handle.drain()
        assert await idle.read_until_eof() == b"* BYE [UNAVAILABLE] Server shutting down\r\n"
        # The command in flight completes first, then the BYE.
        assert await busy.read_until_eof() == (
            b"s OK SLOW completed\r\n* BYE [UNAVAILABLE] Server shutting down\r\n"
        )
        with trio.fail_after(2):
            await served.wait()
        # No longer accepting.
        try:
            late = await trio.open_tcp_stream("127.0.0.1", handle.port())
        except OSError:
            pass
        else:
            assert await LineClient(late).read_until_eof() == b""
        nursery.cancel_scope.cancel()


async def test_one_broken_connection_does_not_take_down_the_server() -> None:
    calls: list[SessionSettings] = []

    def flaky_factory(settings: SessionSettings) -> ProxySession:
        calls.append(settings)
        if len(calls) == 1:
            raise ZeroDivisionError("a bug in the first session")
        return ProxySession(settings)

    async with trio.open_nursery() as nursery:
        port = await fake_imap_server(nursery, UpstreamScript())
        handle: ServerHandle = await nursery.start(
            functools.partial(serve, proxy_config(port), session_factory=flaky_factory)
        )
        broken = await connect(handle)
        assert await broken.read_until_eof() == b""
        healthy = await connect(handle)
        assert (await healthy.read_line()).startswith(b"* OK")
        await healthy.send(b"z LOGOUT\r\n")
        assert await healthy.read_line() == b"* BYE logging out\r\n"
        await healthy.stream.aclose()
        assert calls[0].peer.address == "127.0.0.1" and calls[0].peer.session_id
        assert calls[0].peer.session_id != calls[1].peer.session_id
        await stop(handle, nursery)


async def test_sigterm_drains() -> None:
    async with trio.open_nursery() as nursery:
        port = await fake_imap_server(nursery, UpstreamScript())
        handle: ServerHandle = await nursery.start(serve, proxy_config(port))
        client = await connect(handle)
        assert (await client.read_line()).startswith(b"* OK")
        os.kill(os.getpid(), signal.SIGTERM)
        assert await client.read_until_eof() == b"* BYE [UNAVAILABLE] Server shutting down\r\n"
        with trio.fail_after(5):
            await handle.wait_stopped()
        nursery.cancel_scope.cancel()


async def test_drain_deadline_cuts_a_command_that_never_completes() -> None:
    async with trio.open_nursery() as nursery:
        port = await fake_imap_server(nursery, UpstreamScript())
        config = proxy_config(port, timeouts=TimeoutsConfig(drain=0.3))
        handle: ServerHandle = await nursery.start(serve, config)
        client = await connect(handle)
        await client.read_line()
        await client.send(b"h HANG\r\n")
        await trio.sleep(0.05)
        started = trio.current_time()
        handle.drain()
        assert await client.read_until_eof() == b""
        assert 0.25 < trio.current_time() - started < 2
        with trio.fail_after(2):
            await handle.wait_stopped()
        assert handle.active_connections == 0
        nursery.cancel_scope.cancel()


async def test_implicit_tls_listener_and_starttls_upstream(tls_files: TlsFiles) -> None:
    script = UpstreamScript(tls_context=tls_files.server_context())
    async with trio.open_nursery() as nursery:
        port = await fake_imap_server(nursery, script)
        upstream = UpstreamConfig(
            address=f"127.0.0.1:{port}",
            security="starttls",
            ca_file=tls_files.ca_file,
            server_name="localhost",
        )
        config = proxy_config(
            port,
            listen=[],
            listen_tls=["127.0.0.1:0"],
            tls=TLSConfig(cert=tls_files.cert_file, key=tls_files.key_file),
            upstream=upstream,
        )
        handle: ServerHandle = await nursery.start(serve, config)
        assert [a[0] for a in handle.addresses] == [LISTENER_TLS]
        raw = await trio.open_tcp_stream("127.0.0.1", handle.port(LISTENER_TLS))
        tls = trio.SSLStream(raw, tls_files.client_context(), server_hostname="localhost")
        client = LineClient(tls)
        greeting = await client.read_line()
        assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev1")
        await client.send(b"n NOOP\r\n")
        assert await client.read_line() == b"n OK NOOP completed\r\n"
        # The proxy upgraded its upstream connection before greeting the client.
        assert script.received[0].endswith(b" STARTTLS\r\n")
        assert script.received[-1] == b"n NOOP\r\n"
        await client.stream.aclose()
        await stop(handle, nursery)


async def test_upstream_certificate_failure_is_told_to_the_client(tls_files: TlsFiles) -> None:
    async with trio.open_nursery() as nursery:
        port = await fake_imap_server(nursery, UpstreamScript(), tls_files.server_context())
        upstream = UpstreamConfig(address=f"127.0.0.1:{port}", security="tls")
        handle: ServerHandle = await nursery.start(serve, proxy_config(port, upstream=upstream))
        client = await connect(handle)
        assert await client.read_until_eof() == (
            b"* BYE [UNAVAILABLE] certificate verify failed\r\n"
        )
        await stop(handle, nursery)


async def test_upstream_starttls_certificate_failure_is_told_to_the_client(
    tls_files: TlsFiles,
) -> None:
    script = UpstreamScript(tls_context=tls_files.server_context())
    async with trio.open_nursery() as nursery:
        port = await fake_imap_server(nursery, script)
        upstream = UpstreamConfig(address=f"127.0.0.1:{port}", security="starttls")
        handle: ServerHandle = await nursery.start(serve, proxy_config(port, upstream=upstream))
        client = await connect(handle)
        assert await client.read_until_eof() == (
            b"* BYE [UNAVAILABLE] certificate verify failed\r\n"
        )
        assert [line.split(b" ", 1)[1] for line in script.received] == [b"STARTTLS\r\n"]
        await stop(handle, nursery)
