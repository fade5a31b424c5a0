"""One client connection: TLS, the upstream connection, and the relay through a session.

How this works: `ClientConnection.run()` finishes an implicit-TLS handshake if the
listener is `imaps`, dials the upstream (on failure the client gets
`* BYE [UNAVAILABLE] <reason>` and the connection ends), builds the sans-IO session from
the configuration (`session_settings()`), then runs its tasks in one nursery:

* two readers (client, upstream) that feed what they read to the session and carry out
  the events it returns (`_handle`). A reader reads its side only while the session does
  not pause it, no TLS switch is pending on it, and the *other* side's writer has at most
  `high_water` octets queued (backpressure). Every batch wakes all waiters, because a
  batch from one side is what un-pauses the other. Reads (and the writers' writes) go
  through net/sockio.py, which calls a plain TCP socket directly instead of paying a
  scheduler pass per call, and for a read whose last wait was short polls a moment
  before sleeping (`performance.busy_poll_us`, one budget shared across the server's
  connections; a client's TLS reads too, through `SocketTransport`). A read sits in a
  cancel scope (which a TLS switch or the closing cancels) only while its stream may
  still be switched to TLS;
* two `QueuedWriter`s, which own the writing to each stream, so sends stay in order per
  destination and never overlap. A reader queues its batch's output without waking them
  and then flushes it itself when it is small (`QueuedWriter.flush`): a command's round
  trip costs no task switch. Bulk data and TLS switches (StartClientTLS /
  StartUpstreamTLS, queued as steps: they run once everything queued before them is
  written, wrap the stream in `trio.SSLStream`, shake hands, and tell the session) go
  through a writer task, which runs in the nursery only while there is such work: an
  idle session holds just its two readers;
* and a deadline that follows `session.idle_deadline_kind`: the greeting timeout (counted
  from the connection's start) until the upstream has greeted, then the pre-auth or idle
  timeout, counted from the client's last activity. Before login only a read that starts
  a command counts as activity, so a client trickling a byte at a time cannot hold a
  connection open. The deadline is kept by a `Timers` (timers.py) that the server shares
  among all its connections (a connection started alone runs a private one): it is
  rescheduled after every batch, and on expiry `deadline_reached()` either times the
  session out (`session.timed_out()`) or, if activity moved the deadline, reschedules.
  While the client idles and a rule wants keepalives (`session.keepalive_interval`), the
  deadline also comes that long after the last byte to the client: `session.keepalive()`.
  A session that wants to act at a time of its own (an IDLE bridge renewing the upstream's
  IDLE, or polling) says when (`session.next_tick(now)`); then the timer calls `tick(now)`.

Event handling is synchronous (it only queues), so the tasks never interleave inside it.
A `Close` event (or a lost side) sets the closing flag: the readers stop, the writers
flush for at most `FLUSH_TIMEOUT`, the nursery is cancelled and both streams are closed.
When the proxy ends a plain connection, it half-closes it and reads what the client still
sends for up to `LINGER_TIMEOUT` before closing, so the last BYE is not lost to a reset.
Stream exceptions are translated here, once, into "that side is gone": the session is
told (`client_closed` / `upstream_closed`) and its events (a BYE) carried out. Anything
else that escapes is a bug: it is logged with the connection id, nothing more is sent,
the streams are closed, and the server goes on. Client data is never logged.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import math
import secrets
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

import trio

from imap_proxy.config import ProxyConfig, UpstreamSecurity
from imap_proxy.net.limits import DEFAULT_HIGH_WATER, QueuedWriter
from imap_proxy.net.sockio import BusyPoll, SocketTransport, StreamReader
from imap_proxy.net.timers import Timers
from imap_proxy.net.upstream import Dialer, UpstreamUnavailable, describe_failure
from imap_proxy.observe.logging import get_logger, user_label
from imap_proxy.quirks.model import RuleSet
from imap_proxy.quirks.store import QuirkSnapshot, RuleStore
from imap_proxy.session import events as ev
from imap_proxy.session.settings import PeerInfo, SessionSettings
from imap_proxy.wire.framer import FrameLimits

READ_SIZE: Final = 256 * 1024
FLUSH_TIMEOUT: Final = 5.0
CLOSE_TIMEOUT: Final = 2.0
LINGER_TIMEOUT: Final = 1.0  # reading what a client still sends after our last word
LISTENER_PLAIN: Final = "imap"
LISTENER_TLS: Final = "imaps"

# Everything a stream can raise when the peer misbehaves or goes away.
STREAM_ERRORS: Final = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    OSError,  # includes ssl.SSLError
    UpstreamUnavailable,
)

_log = get_logger("imap_proxy.net")


class SessionLike(Protocol):
    """The part of `ProxySession` the I/O layer drives."""

    @property
    def client_paused(self) -> bool: ...
    @property
    def upstream_paused(self) -> bool: ...
    @property
    def idle_deadline_kind(self) -> str | None: ...
    def receive_from_client(self, data: bytes) -> list[ev.Event]: ...
    def receive_from_upstream(self, data: bytes) -> list[ev.Event]: ...
    def client_tls_established(self) -> list[ev.Event]: ...
    def upstream_tls_established(self) -> list[ev.Event]: ...
    def client_closed(self) -> list[ev.Event]: ...
    def upstream_closed(self) -> list[ev.Event]: ...
    def shutdown(self) -> list[ev.Event]: ...
    def timed_out(self) -> list[ev.Event]: ...


SessionFactory = Callable[[SessionSettings], SessionLike]


def default_session_factory(settings: SessionSettings) -> SessionLike:
    from imap_proxy.session.proxy import ProxySession

    session: SessionLike = ProxySession(settings)
    return session


@dataclass(slots=True)
class ConnectionStats:
    """Counters for one connection (mutable; copied into `ConnectionClosed`)."""

    bytes_from_client: int = 0
    bytes_to_client: int = 0
    bytes_from_upstream: int = 0
    bytes_to_upstream: int = 0
    commands: int = 0


@dataclass(frozen=True, slots=True)
class ConnectionOpened:
    connection_id: str
    listener: str
    peer_address: str
    peer_port: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    connection_id: str
    listener: str
    outcome: str  # a bounded label: the session's Close reason or one of ours
    tls: str  # "none" | "implicit" | "starttls"
    duration: float
    stats: ConnectionStats


ConnectionEvent = ConnectionOpened | ConnectionClosed | ev.Observation
Observer = Callable[[ConnectionEvent], None]


class _Side(enum.StrEnum):
    """Which stream; a str so that the dict lookups of every batch hash it in C."""

    CLIENT = "client"
    UPSTREAM = "upstream"


def new_connection_id() -> str:
    return secrets.token_urlsafe(12)


def session_settings(
    config: ProxyConfig,
    *,
    listener: str,
    peer: PeerInfo,
    starttls_available: bool,
    quirks: QuirkSnapshot | None = None,
) -> SessionSettings:
    """What the sans-IO session needs to know, from the configuration and this connection."""
    limits = config.limits
    client_tls = listener == LISTENER_TLS
    return SessionSettings(
        client_limits=FrameLimits(limits.client_max_line, limits.client_max_literal),
        upstream_limits=FrameLimits(limits.upstream_max_line, limits.upstream_max_literal),
        client_tls=client_tls,
        starttls_available=starttls_available and not client_tls,
        require_tls=config.require_tls,
        upstream_starttls=config.upstream.security is UpstreamSecurity.STARTTLS,
        forward_originating=config.id.forward_originating,
        capture_literal_max=limits.capture_literal_max,
        peer=peer,
        rules=quirks.rules if quirks is not None else RuleSet.empty(),
        fingerprints=quirks.fingerprints if quirks is not None else None,
    )


class _Wakeup:
    """A broadcast "something changed": waiters re-check their condition after it.

    Every batch notifies, but a reader seldom waits (only while paused), so the event
    exists only while someone waits on it."""

    def __init__(self) -> None:
        self._event: trio.Event | None = None

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self) -> None:
        if self._event is None:
            self._event = trio.Event()
        await self._event.wait()


class ClientConnection:
    """The life of one accepted client connection; `run()` never raises (but Cancelled)."""

    def __init__(
        self,
        client_stream: trio.abc.Stream,
        *,
        config: ProxyConfig,
        dialer: Dialer,
        listener: str = LISTENER_PLAIN,
        peer: tuple[str, int] = ("unknown", 0),
        server_ssl: ssl.SSLContext | None = None,
        session_factory: SessionFactory = default_session_factory,
        observer: Observer | None = None,
        connection_id: str | None = None,
        high_water: int = DEFAULT_HIGH_WATER,
        proxied_by: str | None = None,
        rules: RuleStore | None = None,
        timers: Timers | None = None,
        busy_poll: BusyPoll | None = None,
    ) -> None:
        self.connection_id = connection_id or new_connection_id()
        if busy_poll is None:  # the server shares one; a connection on its own has its own
            tuning = config.performance
            busy_poll = BusyPoll.from_microseconds(tuning.busy_poll_us, tuning.busy_pollers)
        self._busy_poll = busy_poll
        self._timers = timers  # the server's; None: this connection runs its own
        self._rules = rules  # each session starts with the store's current snapshot
        self.listener = listener
        self.peer = peer  # the real client: from a PROXY header when one was accepted
        self.proxied_by = proxied_by  # the load balancer that sent that header
        self.stats = ConnectionStats()
        self.outcome: str | None = None
        self._config = config
        self._dialer = dialer
        self._server_ssl = server_ssl
        self._session_factory = session_factory
        self._observer = observer
        self._high_water = high_water
        self._tls_mode = "implicit" if listener == LISTENER_TLS else "none"
        self._log = _log.bind(connection_id=self.connection_id)
        self._streams: dict[_Side, trio.abc.Stream] = {_Side.CLIENT: client_stream}
        self._writers: dict[_Side, QueuedWriter] = {}
        self._receive_scopes: dict[_Side, trio.CancelScope] = {}
        self._tls_pending: set[_Side] = set()
        self._session: SessionLike | None = None
        self._relaying = False
        self._greeted = False
        self._greeted_at = 0.0
        self._closing = False
        self._close_requested = trio.Event()
        self._shutdown_requested = False
        self._wakeup = _Wakeup()
        self._last_keepalive = -math.inf  # when a keepalive last went to an idling client
        self._family = "unknown"  # the fingerprint's latest word, for the logs
        self._rules_fired: dict[str, int] = {}  # rule id -> applications, for the summary
        self._last_activity = 0.0
        self._opened_at = 0.0

    # ------------------------------------------------------------------ public

    @property
    def closing(self) -> bool:
        return self._closing

    def shutdown(self) -> None:
        """Server drain: the session says BYE now if idle, else after the command in flight."""
        self._shutdown_requested = True
        if self._relaying and not self._closing and self._session is not None:
            self._handle(self._session.shutdown())

    async def run(self) -> None:
        self._opened_at = self._last_activity = trio.current_time()
        address, port = self.peer
        via = {} if self.proxied_by is None else {"proxied_by": self.proxied_by}
        self._log.info(
            "connection opened", peer=address, peer_port=port, listener=self.listener, **via
        )
        self._notify(ConnectionOpened(self.connection_id, self.listener, address, port))
        try:
            await self._run()
        except Exception:
            # A bug, not the peers' doing: say nothing more to anyone, just close.
            self._finish_as("internal-error")
            self._log.exception("connection failed unexpectedly")
        finally:
            if self._timers is not None:
                self._timers.cancel(self)
            with trio.CancelScope(shield=True):
                await self._close_streams()
            self._log_closed()

    # ------------------------------------------------------------- life cycle

    async def _run(self) -> None:
        if self.listener == LISTENER_TLS and not await self._implicit_tls_handshake():
            return
        try:
            upstream = await self._dialer.connect()
        except UpstreamUnavailable as exc:
            self._finish_as("upstream-unavailable")
            self._log.warning("upstream unavailable", reason=exc.reason)
            await self._send_directly(b"* BYE [UNAVAILABLE] " + exc.reason.encode() + b"\r\n")
            return
        self._streams[_Side.UPSTREAM] = upstream
        address, port = self.peer
        settings = session_settings(
            self._config,
            listener=self.listener,
            peer=PeerInfo(address, port, self.listener, self.connection_id),
            starttls_available=self._server_ssl is not None,
            quirks=self._rules.current if self._rules is not None else None,
        )
        session = self._session_factory(settings)
        self._session = session
        async with trio.open_nursery() as nursery:
            for side in _Side:
                self._writers[side] = QueuedWriter(
                    self._streams[side],
                    high_water=self._high_water,
                    on_relief=self._wake,
                    spawn=nursery.start_soon,
                    errors=STREAM_ERRORS,
                    on_error=functools.partial(self._writer_failed, side),
                )
                nursery.start_soon(self._read_loop, side)
            if self._timers is None:
                self._timers = Timers(on_error=self._timer_failed)
                nursery.start_soon(self._timers.run)
            self._relaying = True
            self._schedule_deadline()
            if self._shutdown_requested:
                self._handle(session.shutdown())
            await self._close_requested.wait()
            for writer in self._writers.values():
                writer.close()
            if not all(writer.idle for writer in self._writers.values()):
                with trio.move_on_after(FLUSH_TIMEOUT):
                    for writer in self._writers.values():
                        await writer.wait_idle()
            nursery.cancel_scope.cancel()

    async def _implicit_tls_handshake(self) -> bool:
        if self._server_ssl is None:
            raise RuntimeError("an imaps listener needs a server SSL context")
        transport = SocketTransport.under_tls(self._streams[_Side.CLIENT], self._busy_poll)
        tls_stream = trio.SSLStream(transport, self._server_ssl, server_side=True)
        self._streams[_Side.CLIENT] = tls_stream
        try:
            with trio.fail_after(self._config.timeouts.tls_handshake):
                await tls_stream.do_handshake()
        except STREAM_ERRORS as exc:
            self._finish_as("client-tls-failed")
            self._log.info("client TLS handshake failed", reason=describe_failure(exc))
            return False
        return True

    async def _send_directly(self, data: bytes) -> None:
        """A last word to the client outside the relay (no writer is running)."""
        with trio.move_on_after(FLUSH_TIMEOUT):
            try:
                await self._streams[_Side.CLIENT].send_all(data)
            except STREAM_ERRORS:
                return
            self.stats.bytes_to_client += len(data)

    async def _close_streams(self) -> None:
        client = self._streams[_Side.CLIENT]
        if isinstance(client, trio.SocketStream) and self.outcome != "client-closed":
            await _lingering_close(client)
        for stream in self._streams.values():
            if type(stream) is trio.SocketStream:
                # What its aclose() does, without the checkpoint: a plain socket's close
                # never blocks, so it needs no time limit either (a login's last steps).
                stream.socket.close()
                continue
            with trio.move_on_after(CLOSE_TIMEOUT):
                with contextlib.suppress(*STREAM_ERRORS):
                    await stream.aclose()

    def _finish_as(self, outcome: str) -> None:
        if self.outcome is None:
            self.outcome = outcome

    def _request_close(self, outcome: str) -> None:
        self._finish_as(outcome)
        if not self._closing:
            self._closing = True
            self._close_requested.set()
            for scope in self._receive_scopes.values():
                scope.cancel()
            if self._timers is not None:
                self._timers.cancel(self)
            self._wake()

    # ------------------------------------------------------------------ events

    def _handle(self, events: list[ev.Event], *, flush_next: bool = False) -> None:
        """Carry out the session's events; `flush_next`: the caller awaits `_flush()` next."""
        wake = not flush_next
        for event in events:
            # The two common kinds first, without a match statement's pattern machinery.
            if isinstance(event, ev.SendToClient):
                self._writers[_Side.CLIENT].send(event.data, wake=wake)
                continue
            if isinstance(event, ev.SendToUpstream):
                self._writers[_Side.UPSTREAM].send(event.data, wake=wake)
                continue
            match event:
                case ev.StartClientTLS():
                    self._begin_tls_switch(_Side.CLIENT, self._client_tls_step)
                case ev.StartUpstreamTLS():
                    self._begin_tls_switch(_Side.UPSTREAM, self._upstream_tls_step)
                case ev.Close(reason=reason):
                    self._request_close(reason)
                case _:
                    self._observe(event)
        self._wake()

    def _wake(self) -> None:
        self._wakeup.notify()
        self._schedule_deadline()

    def _schedule_deadline(self) -> None:
        if self._relaying and not self._closing and self._timers is not None:
            self._timers.schedule(self, self._next_deadline())

    def _observe(self, event: ev.Observation) -> None:
        match event:
            case ev.CommandStarted(tag=tag, name=name):
                self.stats.commands += 1
                self._log.debug("command started", tag=tag, command=name)
            case ev.CommandCompleted(tag=tag, name=name, status=status, by_proxy=by_proxy):
                self._log.debug(
                    "command completed", tag=tag, command=name, status=status, by_proxy=by_proxy
                )
            case ev.UpstreamReady(capabilities=capabilities):
                self._greeted = True
                self._greeted_at = trio.current_time()
                self._log.debug("upstream ready", capabilities=" ".join(capabilities))
            case ev.Authenticated(user=user, mechanism=mechanism):
                label = None if user is None else user_label(user, self._config.log.hash_user)
                self._log.info("authenticated", user=label, mechanism=mechanism)
                if label is not None:  # every later line of this connection names the user
                    self._log = self._log.bind(user=label)
            case ev.ClientIdentified(family=family, version=version, confidence=confidence):
                self._log.debug(
                    "client identified", family=family, version=version, confidence=confidence
                )
                if family != self._family:
                    self._family = family
                    self._log = self._log.bind(client=family)
            case ev.RuleApplied(rule_id=rule_id):
                self._rules_fired[rule_id] = self._rules_fired.get(rule_id, 0) + 1
            case ev.ProtocolViolation(side=side, text=text, limit=limit):
                self._log.info("protocol violation", side=side.value, limit=limit, text=text)
            case ev.PlaintextDiscarded(octets=octets):
                self._log.warning("plaintext after STARTTLS discarded", octets=octets)
            case ev.EmulationFinished(rule_id=rule_id, kind=kind, outcome=outcome):
                log = self._log.info if outcome == "ok" else self._log.warning
                log("emulation finished", rule=rule_id, kind=kind, outcome=outcome)
        self._notify(event)

    def _notify(self, event: ConnectionEvent) -> None:
        if self._observer is None:
            return
        try:
            self._observer(event)
        except Exception:
            self._log.exception("connection observer failed")

    # -------------------------------------------------------------- TLS switch

    def _begin_tls_switch(self, side: _Side, step: Callable[[], Any]) -> None:
        self._tls_pending.add(side)
        scope = self._receive_scopes.get(side)
        if scope is not None:
            scope.cancel()  # a raw receive must not eat the peer's handshake
        self._writers[side].then(step)

    async def _client_tls_step(self) -> None:
        if self._closing:
            return
        if self._server_ssl is None:
            raise RuntimeError("the session started TLS without a server certificate")
        transport = SocketTransport.under_tls(self._streams[_Side.CLIENT], self._busy_poll)
        tls_stream = trio.SSLStream(transport, self._server_ssl, server_side=True)
        with trio.fail_after(self._config.timeouts.tls_handshake):
            await tls_stream.do_handshake()
        self._switched(_Side.CLIENT, tls_stream)
        self._tls_mode = "starttls"
        assert self._session is not None
        self._handle(self._session.client_tls_established())

    async def _upstream_tls_step(self) -> None:
        if self._closing:
            return
        tls_stream = await self._dialer.start_tls(self._streams[_Side.UPSTREAM])
        self._switched(_Side.UPSTREAM, tls_stream)
        assert self._session is not None
        self._handle(self._session.upstream_tls_established())

    def _switched(self, side: _Side, stream: trio.abc.Stream) -> None:
        self._streams[side] = stream
        self._writers[side].stream = stream
        self._tls_pending.discard(side)

    # ------------------------------------------------------------------- tasks

    def _may_read(self, side: _Side) -> bool:
        session = self._session
        assert session is not None
        if side in self._tls_pending:
            return False
        if side is _Side.CLIENT:
            # Nor while the client does not read its answers (those the proxy gives itself
            # would otherwise pile up without bound).
            return (
                not session.client_paused
                and not self._writers[_Side.UPSTREAM].above_high_water
                and not self._writers[_Side.CLIENT].above_high_water
            )
        return not session.upstream_paused and not self._writers[_Side.CLIENT].above_high_water

    async def _read_loop(self, side: _Side) -> None:
        session = self._session
        assert session is not None
        reader = StreamReader(self._streams[side], self._busy_poll)
        while True:
            while not self._closing and not self._may_read(side):
                await self._wakeup.wait()
            if self._closing:
                return
            if reader.stream is not self._streams[side]:
                reader = StreamReader(self._streams[side], self._busy_poll)  # now TLS
            try:
                if self._may_switch_to_tls(side):
                    received = await self._interruptible_receive(side, reader)
                    if received is None:
                        continue  # a TLS switch began, or the connection is closing
                    data = received
                else:
                    data = await reader.receive_some(READ_SIZE)
            except STREAM_ERRORS as exc:
                self._side_lost(side, describe_failure(exc))
                return
            if self._closing:
                return
            if not data:
                self._side_lost(side, "eof")
                return
            if side is _Side.CLIENT:
                self.stats.bytes_from_client += len(data)
                preauth = session.idle_deadline_kind == "preauth"
                events = session.receive_from_client(data)
                if not preauth or any(isinstance(e, ev.CommandStarted) for e in events):
                    self._last_activity = trio.current_time()
                self._handle(events, flush_next=True)
            else:
                self.stats.bytes_from_upstream += len(data)
                self._handle(session.receive_from_upstream(data), flush_next=True)
            await self._flush()

    def _may_switch_to_tls(self, side: _Side) -> bool:
        """Whether this side's plain stream may still be wrapped in TLS (STARTTLS)."""
        if isinstance(self._streams[side], trio.SSLStream):
            return False
        if side is _Side.CLIENT:
            return self._server_ssl is not None
        return self._config.upstream.security is UpstreamSecurity.STARTTLS

    async def _interruptible_receive(self, side: _Side, reader: StreamReader) -> bytes | None:
        """A receive that a TLS switch (or closing) cancels, so a raw read never eats the
        peer's handshake: None when it did. A cancel scope costs more than the read, so
        only a stream that may still switch reads this way; the others end by the
        nursery's cancellation when the connection closes."""
        with trio.CancelScope() as scope:
            self._receive_scopes[side] = scope
            try:
                return await reader.receive_some(READ_SIZE)
            finally:
                del self._receive_scopes[side]
        assert scope.cancelled_caught
        return None

    async def _flush(self) -> None:
        """Write what the last batch queued, from this task when it is small."""
        for side, writer in self._writers.items():
            try:
                await writer.flush()
            except STREAM_ERRORS as exc:
                self._side_lost(side, _failure_reason(exc))
                return

    def _writer_failed(self, side: _Side, exc: Exception) -> None:
        self._side_lost(side, _failure_reason(exc))

    def _side_lost(self, side: _Side, reason: str) -> None:
        """The side's stream ended or failed: tell the session, carry out its last words."""
        if self._closing:
            return
        session = self._session
        assert session is not None
        self._log.debug("stream ended", side=side.value, reason=reason)
        if side is _Side.CLIENT:
            self._writers[_Side.CLIENT].close()
            self._handle(session.client_closed())
            self._request_close("client-closed")
        elif not self._greeted:
            # The client has not been greeted yet: the session has nothing to say, we do.
            self._writers[_Side.CLIENT].send(
                b"* BYE [UNAVAILABLE] " + _client_safe(reason).encode() + b"\r\n"
            )
            self._request_close("upstream-unavailable")
        else:
            self._handle(session.upstream_closed())
            self._request_close("upstream-closed")

    def _idle_deadline(self) -> float:
        """When the timer fires: the client's last read, plus the timeout for the state.

        Outside IDLE, an authenticated client that is being sent data (a long FETCH) is
        active too: each completed write to it counts. In IDLE it does not, or the
        upstream's keep-alive lines would keep a vanished client forever.
        """
        session = self._session
        kind = session.idle_deadline_kind if session is not None else None
        if kind is None:
            return math.inf
        timeouts = self._config.timeouts
        if kind == "greeting":
            return self._opened_at + timeouts.greeting
        if kind == "preauth":  # counted from the greeting at the earliest
            return max(self._last_activity, self._greeted_at) + timeouts.preauth
        last = self._last_activity
        if kind == "idle" and _Side.CLIENT in self._writers:
            last = max(last, self._writers[_Side.CLIENT].last_write_at)
        return last + timeouts.idle

    def _keepalive_deadline(self) -> float:
        """When a rule wants a keepalive sent to a client in IDLE: after that long without
        a byte to it (the session says how long, or None). A keepalive is no activity."""
        interval = getattr(self._session, "keepalive_interval", None)
        if interval is None:
            return math.inf
        last = max(self._last_activity, self._last_keepalive)
        if _Side.CLIENT in self._writers:
            last = max(last, self._writers[_Side.CLIENT].last_write_at)
        return float(last + interval)

    def _tick_deadline(self) -> float:
        """When the session wants `tick()` (an IDLE bridge's renewal or poll), if ever."""
        next_tick = getattr(self._session, "next_tick", None)
        when = None if next_tick is None else next_tick(trio.current_time())
        return math.inf if when is None else float(when)

    def _next_deadline(self) -> float:
        return min(self._idle_deadline(), self._keepalive_deadline(), self._tick_deadline())

    def deadline_reached(self) -> None:
        """Called by `Timers` when the scheduled deadline has come: time out, send a
        keepalive, or (activity moved the deadlines later) schedule again."""
        session = self._session
        if self._closing or session is None:
            return
        now = trio.current_time()
        if now < self._idle_deadline():
            if now >= self._keepalive_deadline():
                self._last_keepalive = now
                keepalive = getattr(session, "keepalive", None)
                if keepalive is not None:
                    self._handle(keepalive())
            tick = getattr(session, "tick", None)
            if tick is not None and not self._closing and now >= self._tick_deadline():
                self._handle(tick(now))
            self._schedule_deadline()
            return
        self._log.info("timed out", kind=session.idle_deadline_kind)
        self._last_activity = trio.current_time()  # no busy loop if it stays open
        if session.idle_deadline_kind != "greeting":  # that one is the upstream's
            self._finish_as("timeout")
        self._handle(session.timed_out())

    def _timer_failed(self, exc: BaseException) -> None:
        self._log.error("timeout handling failed", exc_info=exc)

    # ------------------------------------------------------------------- logs

    def _log_closed(self) -> None:
        for side, writer in self._writers.items():
            if side is _Side.CLIENT:
                self.stats.bytes_to_client += writer.bytes_written
            else:
                self.stats.bytes_to_upstream += writer.bytes_written
        duration = trio.current_time() - self._opened_at
        outcome = self.outcome or "closed"
        stats = self.stats
        self._log.info(
            "connection closed",
            peer=self.peer[0],
            peer_port=self.peer[1],
            listener=self.listener,
            tls=self._tls_mode,
            duration=round(duration, 3),
            outcome=outcome,
            bytes_from_client=stats.bytes_from_client,
            bytes_to_client=stats.bytes_to_client,
            bytes_from_upstream=stats.bytes_from_upstream,
            bytes_to_upstream=stats.bytes_to_upstream,
            commands=stats.commands,
            client=self._family,
            rules_fired=",".join(sorted(self._rules_fired)) or None,
        )
        self._notify(
            ConnectionClosed(
                self.connection_id, self.listener, outcome, self._tls_mode, duration, replace(stats)
            )
        )


async def _lingering_close(stream: trio.SocketStream) -> None:
    """Half-close, then read and drop what the client still sends, for a moment.

    Closing a socket with unread input makes the kernel send a reset, which can destroy
    the last answer (a BYE) before the client reads it: the usual case when the proxy
    ends a session while the client is still uploading (mid-APPEND).
    """
    with trio.move_on_after(LINGER_TIMEOUT), contextlib.suppress(*STREAM_ERRORS):
        # What send_eof() and receive_some() do, without a scheduler pass around each:
        # the client has usually closed already, and its EOF is read at once.
        if not stream.socket.did_shutdown_SHUT_WR:
            stream.socket.shutdown(socket.SHUT_WR)
        reader = StreamReader(stream)
        while await reader.receive_some(READ_SIZE):
            pass


def _failure_reason(exc: BaseException) -> str:
    return exc.reason if isinstance(exc, UpstreamUnavailable) else describe_failure(exc)


def _client_safe(reason: str) -> str:
    """Reasons come from `describe_failure` (fixed phrases); a plain close is spelt out."""
    if reason in ("eof", "connection closed"):
        return "Upstream server closed the connection"
    return reason
