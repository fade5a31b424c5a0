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

PROXY protocol (`proxy_protocol.trusted` set): each accepted connection first goes through
`ProxyProtocolPolicy.admit()` in its own task (so a slow header never holds up the accept
loop); a refused one is logged with the reason and closed without a greeting, an admitted
one is counted against the limits under its real client address. With
`proxy_protocol.send_upstream`, each connection dials through a `ProxyHeaderDialer`, which
tells the upstream that address in a v2 header.

Reload (SIGHUP in the main thread, or `ServerHandle.reload()`): every callable in
`ServerHandle.reloaders` runs in turn; one that raises is logged and leaves its previous
state in place. The rule reload (`RuleStore.reload()`) swaps in the rules and fingerprint
definitions for sessions started from then on, or logs every problem and keeps the old
set; either way `rule_reloads_total{outcome}` counts it. With `rules_watch` set, a task
polls the rules directory that often and runs the same rule reload when its files have
changed (RuleStore.changed_on_disk), until the drain. The TLS certificate reload
builds a new server SSL context from `tls.cert`/`tls.key` for connections accepted from
then on (sessions already open keep theirs); an unusable certificate is refused and the
old one stays.

Metrics (`metrics_listen` set, or a `Metrics` passed in): the `Metrics` observes every
connection next to the caller's observer, wraps the dialer to count upstream connects,
and counts refusals; each connection task runs under `current_connection` so that the
session observations of different connections can be told apart. `metrics_listen` also
serves /metrics, /healthz and /readyz (observe/http.py: checks in `ready_checks`, the
upstream probe and "draining" among them) from the connections nursery, until the end.

Spare upstream connections (`upstream.spare_connections`): the dialer is a
`SpareConnections` (spares.py), whose refill task runs in the connections nursery.

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
from collections.abc import Callable
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
from imap_proxy.net.proxy_protocol import (
    ProxyHeaderDialer,
    ProxyHeaderRefused,
    ProxyProtocolPolicy,
)
from imap_proxy.net.sockio import BusyPoll
from imap_proxy.net.spares import SpareConnections
from imap_proxy.net.timers import Timers
from imap_proxy.net.tls import server_ssl_context
from imap_proxy.net.upstream import Dialer, UpstreamDialer
from imap_proxy.observe.http import ReadyCheck, serve_proxy_observability
from imap_proxy.observe.logging import get_logger
from imap_proxy.observe.metrics import Metrics, current_connection, fan_out
from imap_proxy.observe.recorder import Recorder
from imap_proxy.quirks.model import RuleLoadError
from imap_proxy.quirks.store import RuleStore

TOO_MANY_CONNECTIONS = b"* BYE [UNAVAILABLE] Too many connections\r\n"
REJECT_TIMEOUT = 5.0

_log = get_logger("imap_proxy.net")

Reloader = Callable[[], None]


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
        # Run in order by reload() (SIGHUP); each raises to say it kept its old state.
        self.reloaders: list[Reloader] = []
        self.rules: RuleStore | None = None
        self._drain_requested = trio.Event()
        self._connection_ended = trio.Event()
        self._stopped = trio.Event()
        self.metrics: Metrics | None = None  # e.g. metrics.record_rule_reload(ok)
        self.metrics_port: int | None = None  # the /metrics listener, when one runs
        # What /readyz checks; each returns None when fine, else a reason (observe/http.py).
        self.ready_checks: list[ReadyCheck] = []

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

    def reload(self) -> bool:
        """Run every reloader; False if any failed (each failure is logged, nothing stops)."""
        succeeded = True
        for reloader in list(self.reloaders):
            what = getattr(reloader, "__name__", repr(reloader))
            try:
                reloader()
            except Exception as exc:
                succeeded = False
                _log.error("reload failed; the previous state stays", what=what, error=str(exc))
            else:
                _log.info("reloaded", what=what)
        return succeeded

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


def _peer_of(stream: trio.SocketStream, *, local: bool = False) -> tuple[str, int]:
    try:
        name = stream.socket.getsockname() if local else stream.socket.getpeername()
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
        dialer: Dialer | None,
        server_ssl: ssl.SSLContext | None,
        session_factory: SessionFactory,
        observer: Observer | None,
    ) -> None:
        self.config = config
        self.handle = handle
        self.server_ssl = server_ssl
        self.proxy_protocol = ProxyProtocolPolicy(config.proxy_protocol)
        # A caller's own dialer (tests) is used as it is; only ours sends PROXY headers.
        self.dialer: Dialer
        self.spares: SpareConnections | None = None
        if dialer is None:
            default_dialer = UpstreamDialer(config.upstream)
            self.dialer = default_dialer
            self.upstream_ssl = default_dialer.ssl_context
            self.send_proxy_header = self.proxy_protocol.send_upstream
            up = config.upstream
            if up.spare_connections and not self.send_proxy_header:
                self.spares = SpareConnections(
                    default_dialer, up.spare_connections, up.spare_max_age
                )
                self.dialer = self.spares
        else:
            self.dialer = dialer
            self.upstream_ssl = None
            self.send_proxy_header = False
        self.session_factory = session_factory
        self.observer = observer
        self.metrics: Metrics | None = None
        self.rules: RuleStore | None = None
        limits = config.limits
        self.limiter = ConnectionLimiter(limits.max_connections, limits.max_connections_per_ip)
        # One task keeps every connection's pre-auth and idle deadline.
        self.timers = Timers(on_error=self._timer_failed)
        # One budget of polling readers for every connection (sockio.py).
        tuning = config.performance
        self.busy_poll = BusyPoll.from_microseconds(tuning.busy_poll_us, tuning.busy_pollers)

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
            local = _peer_of(stream, local=True)
            if self.proxy_protocol.enabled:
                connections.start_soon(self.admit_proxied, stream, name, peer, local, connections)
            else:
                self.start_connection(stream, name, peer, local, connections)

    def start_connection(
        self,
        stream: trio.abc.Stream,
        name: str,
        peer: tuple[str, int],
        local: tuple[str, int],
        connections: trio.Nursery,
        *,
        proxied_by: str | None = None,
    ) -> None:
        """Admit (or refuse, over a limit) one connection and run it in `connections`."""
        if not self.limiter.try_acquire(peer[0]):
            connections.start_soon(self.reject, stream, name, peer)
            return
        connection = ClientConnection(
            stream,
            config=self.config,
            dialer=self.instrumented(self.dialer_for(peer, local)),
            listener=name,
            peer=peer,
            server_ssl=self.server_ssl,
            session_factory=self.session_factory,
            observer=self.observer,
            proxied_by=proxied_by,
            rules=self.rules,
            timers=self.timers,
            busy_poll=self.busy_poll,
        )
        self.handle._add(connection)
        connections.start_soon(self.run_connection, connection)

    @staticmethod
    def _timer_failed(exc: BaseException) -> None:
        _log.error("timeout handling failed", exc_info=exc)

    def instrumented(self, dialer: Dialer) -> Dialer:
        """With metrics, a dialer that counts and times the upstream connects."""
        return dialer if self.metrics is None else self.metrics.instrument(dialer)

    def dialer_for(self, peer: tuple[str, int], local: tuple[str, int]) -> Dialer:
        if not self.send_proxy_header:
            return self.dialer
        return ProxyHeaderDialer(
            self.config.upstream, self.upstream_ssl, source=peer, destination=local
        )

    async def admit_proxied(
        self,
        stream: trio.SocketStream,
        name: str,
        peer: tuple[str, int],
        local: tuple[str, int],
        connections: trio.Nursery,
    ) -> None:
        """Read the PROXY header, then start the connection under the real client address."""
        try:
            admitted = await self.proxy_protocol.admit(stream, peer, local)
        except ProxyHeaderRefused as refused:
            _log.warning(
                "connection refused: PROXY protocol",
                connection_id=new_connection_id(),
                listener=name,
                peer=peer[0],
                peer_port=peer[1],
                reason=refused.reason,
            )
            if self.metrics is not None:
                self.metrics.connection_rejected(name, "proxy_protocol")
            await trio.aclose_forcefully(stream)
            return
        self.start_connection(
            admitted.stream, name, admitted.peer, admitted.local, connections, proxied_by=peer[0]
        )

    def reload_tls_certificate(self) -> None:
        """New connections get a context with the certificate files as they are now."""
        self.server_ssl = server_ssl_context(self.config.tls)

    async def run_connection(self, connection: ClientConnection) -> None:
        # The connection's tasks inherit this: metrics tell its observations apart by it.
        current_connection.set(connection.connection_id)
        try:
            if self.handle.draining:
                connection.shutdown()
            await connection.run()
        except Exception:
            _log.exception("connection task failed", connection_id=connection.connection_id)
        finally:
            self.limiter.release(connection.peer[0])
            self.handle._remove(connection)

    async def reject(self, stream: trio.abc.Stream, name: str, peer: tuple[str, int]) -> None:
        """Over a limit: one BYE line, then close, without touching the upstream."""
        _log.warning(
            "connection refused: too many connections",
            connection_id=new_connection_id(),
            listener=name,
            peer=peer[0],
            total=self.limiter.total,
            from_peer=self.limiter.count_for(peer[0]),
        )
        if self.metrics is not None:
            over_total = self.limiter.total >= self.limiter.max_total
            limit = "max_connections" if over_total else "max_connections_per_ip"
            self.metrics.connection_rejected(name, limit, limit=limit)
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


async def _handle_signals(
    handle: ServerHandle, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """SIGHUP reloads (as often as it comes); SIGTERM drains (once)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                _log.info("SIGHUP received: reloading")
                handle.reload()
                continue
            _log.info("SIGTERM received: draining")
            handle.drain()
            return


def _rule_reloader(store: RuleStore, handle: ServerHandle) -> Reloader:
    def reload_rules() -> None:
        try:
            snapshot = store.reload()
        except RuleLoadError as error:
            if handle.metrics is not None:
                handle.metrics.record_rule_reload(False)
            _log.error(
                "rules not reloaded; the previous set stays active",
                problems=error.problems,
                generation=store.generation,
            )
            raise
        if handle.metrics is not None:
            handle.metrics.record_rule_reload(True)
        _log.info(
            "rules reloaded",
            rules=len(snapshot.rules.rules),
            enabled=len(snapshot.rules.enabled),
            generation=store.generation,
        )

    return reload_rules


async def _watch_rules(store: RuleStore, reload_rules: Reloader, interval: float) -> None:
    """Every `interval` seconds, reload the rules if their files changed (rules_watch)."""
    while True:
        await trio.sleep(interval)
        if not store.changed_on_disk():
            continue
        _log.info("rules changed on disk: reloading", directory=str(store.directory))
        with contextlib.suppress(RuleLoadError):  # logged and counted by reload_rules
            reload_rules()


async def serve(
    config: ProxyConfig,
    *,
    task_status: trio.TaskStatus[ServerHandle] = trio.TASK_STATUS_IGNORED,
    dialer: Dialer | None = None,
    session_factory: SessionFactory = default_session_factory,
    observer: Observer | None = None,
    metrics: Metrics | None = None,
    rules: RuleStore | None = None,
) -> None:
    """Run the proxy until drained (SIGTERM or `ServerHandle.drain()`).

    Quirk rules come from `rules`, or are loaded from `config.rules` (the packaged rules
    when unset); an invalid rule set stops the start with RuleLoadError. SIGHUP (and
    `handle.reload()`) loads them again; new sessions get the new set.

    With `metrics_listen` configured (or `metrics` given), a `Metrics` observes every
    connection and upstream connect; `metrics_listen` also serves /metrics, /healthz and
    /readyz (observe/http.py) until the connections are gone.
    """
    server_ssl = server_ssl_context(config.tls) if config.tls.configured else None
    groups = await _open_listeners(config)
    handle = ServerHandle(_bound_addresses(groups))
    server = _Server(
        config,
        handle,
        dialer=dialer,
        server_ssl=server_ssl,
        session_factory=session_factory,
        observer=observer,
    )
    store = rules if rules is not None else RuleStore.load(config.rules)
    server.rules = handle.rules = store
    reload_rules = _rule_reloader(store, handle)
    handle.reloaders.append(reload_rules)
    if server_ssl is not None:
        handle.reloaders.append(server.reload_tls_certificate)
    if metrics is None and config.metrics_listen is not None:
        metrics = Metrics()
    if metrics is not None:
        server.metrics = handle.metrics = metrics
        server.observer = fan_out(observer, metrics.observe)
        metrics.track_live_connections(lambda: handle.connections)
        if server.busy_poll is not None:
            metrics.track_busy_poll(server.busy_poll)
    if config.recorder.enabled:  # wraps chosen sessions; finishes each when it closes
        recorder = Recorder(config.recorder)
        server.session_factory = recorder.session_factory(session_factory)
        server.observer = fan_out(server.observer, recorder.observe)
    handle.ready_checks.append(lambda: "draining" if handle.draining else None)
    for bound in handle.bound:
        _log.info("listening", listener=bound.listener, address=bound.host, port=bound.port)
    try:
        async with trio.open_nursery() as connections:
            connections.start_soon(server.timers.run)
            if server.spares is not None:
                connections.start_soon(server.spares.run)
            if config.metrics_listen is not None and metrics is not None:
                handle.metrics_port = await connections.start(
                    serve_proxy_observability, config, metrics, handle.ready_checks
                )
            async with trio.open_nursery() as accepting:
                for group in groups:
                    for listener in group.listeners:
                        accepting.start_soon(server.accept_loop, listener, group.name, connections)
                if threading.current_thread() is threading.main_thread():
                    await accepting.start(_handle_signals, handle)
                if config.rules_watch > 0 and store.directory is not None:
                    accepting.start_soon(_watch_rules, store, reload_rules, config.rules_watch)
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
