"""The listening server: listeners, admission, one task per connection, and the drain.

How this works: `serve(config)` binds every `listen` address (plain IMAP, STARTTLS offered
when a certificate is configured) and every `listen_tls` address (implicit TLS) with
`trio.open_tcp_listeners` (port 0 picks a free port), logs each bound address, and
reports a `ServerHandle` through `task_status.started()`. One accept loop per listener
runs in an "accepting" nursery; each accepted connection runs in the outer "connections"
nursery, so the accept loops can stop while connections go on.

Admission: `ConnectionLimiter` counts connections in total and per client address; a
connection over a limit is answered `* BYE [UNAVAILABLE] Too many connections` (after
the TLS handshake on an implicit-TLS listener, so the client can read it) and closed at
once, without dialling the upstream.

Drain (SIGTERM when running in the main thread, or `ServerHandle.drain()`): stop
accepting and close the listeners, call `shutdown()` on every connection (the session
says BYE at once to idle clients, after the command in flight to busy ones), wait until
all connections are gone or `timeouts.drain` passes, cancel what is left, and return.
A failing connection never ends the server: `ClientConnection.run()` contains its own
errors, and the per-connection task logs anything that still gets out.
"""

from __future__ import annotations

import contextlib
import signal
import ssl
import threading
from dataclasses import dataclass

import trio

from imap_proxy.config import ProxyConfig, split_host_port
from imap_proxy.net.connection import (
    LISTENER_PLAIN,
    LISTENER_TLS,
    STREAM_ERRORS,
    ClientConnection,
    Observer,
    SessionFactory,
    default_session_factory,
    new_connection_id,
)
from imap_proxy.net.limits import ConnectionLimiter
from imap_proxy.net.tls import server_ssl_context
from imap_proxy.net.upstream import Dialer, UpstreamDialer
from imap_proxy.observe.logging import get_logger

TOO_MANY_CONNECTIONS = b"* BYE [UNAVAILABLE] Too many connections\r\n"
REJECT_TIMEOUT = 5.0

_log = get_logger("imap_proxy.net")


@dataclass(frozen=True, slots=True)
class BoundAddress:
    listener: str  # "imap" or "imaps"
    host: str
    port: int


class ServerHandle:
    """What a running server shows its owner: bound addresses, live connections, drain."""

    def __init__(self, addresses: list[BoundAddress]) -> None:
        self.bound = addresses
        self.connections: set[ClientConnection] = set()
        self._drain_requested = trio.Event()
        self._connection_ended = trio.Event()
        self._stopped = trio.Event()

    @property
    def addresses(self) -> list[tuple[str, str, int]]:
        """(listener name, host, port) for every bound socket."""
        return [(bound.listener, bound.host, bound.port) for bound in self.bound]

    def port(self, listener: str = LISTENER_PLAIN) -> int:
        """The port of the first socket of that listener kind (handy with port 0)."""
        for bound in self.bound:
            if bound.listener == listener:
                return bound.port
        raise LookupError(f"no {listener} listener")

    @property
    def active_connections(self) -> int:
        return len(self.connections)

    @property
    def draining(self) -> bool:
        return self._drain_requested.is_set()

    def drain(self) -> None:
        """Stop accepting, ask every session to say BYE, and let `serve()` return."""
        self._drain_requested.set()

    async def wait_stopped(self) -> None:
        """Return once `serve()` has finished (listeners closed, connections gone)."""
        await self._stopped.wait()

    def _add(self, connection: ClientConnection) -> None:
        self.connections.add(connection)

    def _remove(self, connection: ClientConnection) -> None:
        self.connections.discard(connection)
        self._connection_ended.set()
        self._connection_ended = trio.Event()

    async def wait_all_gone(self) -> None:
        """Return once no connection is open."""
        while self.connections:
            await self._connection_ended.wait()


@dataclass(frozen=True, slots=True)
class _ListenerGroup:
    name: str
    listeners: list[trio.SocketListener]


def _peer_of(stream: trio.SocketStream) -> tuple[str, int]:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return ("unknown", 0)
    if isinstance(name, tuple) and len(name) >= 2:
        return (str(name[0]), int(name[1]))
    return (str(name), 0)


class _Server:
    def __init__(
        self,
        config: ProxyConfig,
        handle: ServerHandle,
        *,
        dialer: Dialer,
        server_ssl: ssl.SSLContext | None,
        session_factory: SessionFactory,
        observer: Observer | None,
    ) -> None:
        self.config = config
        self.handle = handle
        self.dialer = dialer
        self.server_ssl = server_ssl
        self.session_factory = session_factory
        self.observer = observer
        limits = config.limits
        self.limiter = ConnectionLimiter(limits.max_connections, limits.max_connections_per_ip)

    async def accept_loop(
        self, listener: trio.SocketListener, name: str, connections: trio.Nursery
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and friends: back off, keep serving
                _log.warning("accept failed", listener=name, error=str(exc))
                await trio.sleep(0.1)
                continue
            peer = _peer_of(stream)
            if not self.limiter.try_acquire(peer[0]):
                connections.start_soon(self.reject, stream, name, peer)
                continue
            connection = ClientConnection(
                stream,
                config=self.config,
                dialer=self.dialer,
                listener=name,
                peer=peer,
                server_ssl=self.server_ssl,
                session_factory=self.session_factory,
                observer=self.observer,
            )
            self.handle._add(connection)
            connections.start_soon(self.run_connection, connection)

    async def run_connection(self, connection: ClientConnection) -> None:
        try:
            if self.handle.draining:
                connection.shutdown()
            await connection.run()
        except Exception:
            _log.exception("connection task failed", connection_id=connection.connection_id)
        finally:
            self.limiter.release(connection.peer[0])
            self.handle._remove(connection)

    async def reject(self, stream: trio.SocketStream, name: str, peer: tuple[str, int]) -> None:
        """Over a limit: one BYE line, then close, without touching the upstream."""
        _log.warning(
            "connection refused: too many connections",
            connection_id=new_connection_id(),
            listener=name,
            peer=peer[0],
            total=self.limiter.total,
            from_peer=self.limiter.count_for(peer[0]),
        )
        out: trio.abc.Stream = stream
        with trio.move_on_after(REJECT_TIMEOUT):
            try:
                if name == LISTENER_TLS and self.server_ssl is not None:
                    out = trio.SSLStream(stream, self.server_ssl, server_side=True)
                    await out.do_handshake()
                await out.send_all(TOO_MANY_CONNECTIONS)
            except STREAM_ERRORS:
                pass
        with trio.move_on_after(REJECT_TIMEOUT / 5):
            with contextlib.suppress(*STREAM_ERRORS):
                await out.aclose()


async def _open_listeners(config: ProxyConfig) -> list[_ListenerGroup]:
    groups: list[_ListenerGroup] = []
    for name, addresses in ((LISTENER_PLAIN, config.listen), (LISTENER_TLS, config.listen_tls)):
        for address in addresses:
            host, port = split_host_port(address)
            listeners = await trio.open_tcp_listeners(port, host=host)
            groups.append(_ListenerGroup(name, listeners))
    return groups


def _bound_addresses(groups: list[_ListenerGroup]) -> list[BoundAddress]:
    bound: list[BoundAddress] = []
    for group in groups:
        for listener in group.listeners:
            sockname = listener.socket.getsockname()
            bound.append(BoundAddress(group.name, str(sockname[0]), int(sockname[1])))
    return bound


async def _drain_on_sigterm(
    handle: ServerHandle, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            _log.info("SIGTERM received: draining")
            handle.drain()
            return


async def serve(
    config: ProxyConfig,
    *,
    task_status: trio.TaskStatus[ServerHandle] = trio.TASK_STATUS_IGNORED,
    dialer: Dialer | None = None,
    session_factory: SessionFactory = default_session_factory,
    observer: Observer | None = None,
) -> None:
    """Run the proxy until drained (SIGTERM or `ServerHandle.drain()`)."""
    server_ssl = server_ssl_context(config.tls) if config.tls.configured else None
    groups = await _open_listeners(config)
    handle = ServerHandle(_bound_addresses(groups))
    server = _Server(
        config,
        handle,
        dialer=dialer or UpstreamDialer(config.upstream),
        server_ssl=server_ssl,
        session_factory=session_factory,
        observer=observer,
    )
    for bound in handle.bound:
        _log.info("listening", listener=bound.listener, address=bound.host, port=bound.port)
    try:
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                for group in groups:
                    for listener in group.listeners:
                        accepting.start_soon(server.accept_loop, listener, group.name, connections)
                if threading.current_thread() is threading.main_thread():
                    await accepting.start(_drain_on_sigterm, handle)
                task_status.started(handle)
                await handle._drain_requested.wait()
                accepting.cancel_scope.cancel()
            await _close_listeners(groups)
            _log.info("draining", connections=handle.active_connections)
            for connection in list(handle.connections):
                connection.shutdown()
            with trio.move_on_after(config.timeouts.drain):
                await handle.wait_all_gone()
            if handle.connections:
                _log.warning("drain deadline passed", connections=handle.active_connections)
            connections.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await _close_listeners(groups)
        handle._stopped.set()
    _log.info("stopped")


async def _close_listeners(groups: list[_ListenerGroup]) -> None:
    for group in groups:
        for listener in group.listeners:
            await listener.aclose()
