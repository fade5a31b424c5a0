"""Prometheus metrics for the proxy, fed by the connection and session observations.

How this works: a `Metrics` owns its own `CollectorRegistry` (never the global one, so tests
and several servers in one process do not clash) and every metric of the proxy, all named
`imap_proxy_*`. `Metrics.observe(event)` is a `net` `Observer`: it receives
`ConnectionOpened` / `ConnectionClosed` and every session observation of every connection,
synchronously, on the trio thread. Session observations do not say which connection they
belong to, so the server runs each connection's task under the context variable
`current_connection` (trio tasks inherit a copy of their spawner's context); per-connection
state (command start times by tag, fingerprint, whether the session got past the greeting)
lives in `_ConnectionState`, keyed by that id, and is dropped when the connection closes.
In-flight tags are capped per connection, so a client pipelining endless commands cannot grow it.

Labels are bounded: command names are mapped onto `KNOWN_COMMANDS` (RFC 3501/9051 verbs,
common extensions, their UID variants; anything else is "OTHER"), and the free-form label
values that come from data (client family, rule id, action, emulation kind) are normalised
and capped at `MAX_LABEL_VALUES` distinct values each ("other" beyond). Never user, tag or
mailbox. Where a label is not known yet, "unknown".

Meanings worth spelling out:
* `commands_total{outcome}`: the tagged status, OK | NO | BAD | BYE, or ABORTED for a
  command still in flight when its connection closed. `command_duration_seconds` is the
  client-visible time from the command's first line to its tagged completion.
* `sessions_total{client_family,confidence}`: counted when a connection that got past the
  upstream greeting closes, with its final fingerprint; confidence is a bucket: high
  (>= 0.8), medium (>= 0.5), low (> 0) or none (never identified).
* `bytes_total{direction}`: octets read from the client (client_to_upstream) and from the
  upstream (upstream_to_client). Closed connections are added when they close; open ones
  are read live at scrape time from `track_live_connections(...)` (long IDLE sessions
  would otherwise show nothing for hours).
* `upstream_connects_total{outcome}`: ok, or a failure class (refused, timeout, tls,
  certificate, dns, reset, closed, failed), counted by `InstrumentedDialer`, which wraps
  the server's dialer; `upstream_connect_duration_seconds` observes successful connects.
* `upstream_up`: set by the readiness probe (observe/http.py), not by client traffic.
* `busy_polls_total{outcome}` and `busy_poll_seconds_total`: reads that polled instead
  of sleeping (`performance.busy_poll_us`), whether the data came in the window, and the
  time spent polling: the CPU that buys the latency. Absent when polling is off.
* Emulation outcomes come from observations named `Emulation*` with `kind` and `outcome`
  attributes (matched by name until the emulation events exist), or `record_emulation()`.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from imap_proxy import __version__
from imap_proxy.net.connection import (
    ConnectionClosed,
    ConnectionEvent,
    ConnectionOpened,
    Observer,
)
from imap_proxy.net.sockio import BusyPoll
from imap_proxy.net.upstream import Dialer, UpstreamUnavailable
from imap_proxy.session import events as ev

PREFIX: Final = "imap_proxy_"

# Which connection the running trio task serves (set by the server per connection task).
current_connection: ContextVar[str | None] = ContextVar("imap_proxy_connection", default=None)

_BASE_COMMANDS: Final = (
    # RFC 3501 / RFC 9051
    "CAPABILITY",
    "NOOP",
    "LOGOUT",
    "STARTTLS",
    "AUTHENTICATE",
    "LOGIN",
    "SELECT",
    "EXAMINE",
    "CREATE",
    "DELETE",
    "RENAME",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "LIST",
    "LSUB",
    "STATUS",
    "APPEND",
    "CHECK",
    "CLOSE",
    "EXPUNGE",
    "SEARCH",
    "FETCH",
    "STORE",
    "COPY",
    "MOVE",
    "ENABLE",
    "IDLE",
    "NAMESPACE",
    "UNSELECT",
    # extensions: ID, QUOTA, ACL, METADATA, SORT/THREAD, COMPRESS, NOTIFY, REPLACE,
    # UNAUTHENTICATE, URLAUTH, LANGUAGE, Gmail's XLIST
    "ID",
    "GETQUOTA",
    "GETQUOTAROOT",
    "SETQUOTA",
    "GETACL",
    "SETACL",
    "DELETEACL",
    "LISTRIGHTS",
    "MYRIGHTS",
    "GETMETADATA",
    "SETMETADATA",
    "SORT",
    "THREAD",
    "COMPRESS",
    "NOTIFY",
    "REPLACE",
    "UNAUTHENTICATE",
    "URLFETCH",
    "GENURLAUTH",
    "RESETKEY",
    "LANGUAGE",
    "COMPARATOR",
    "XLIST",
)
_UID_COMMANDS: Final = (
    "FETCH",
    "STORE",
    "COPY",
    "MOVE",
    "SEARCH",
    "EXPUNGE",
    "SORT",
    "THREAD",
    "REPLACE",
)
KNOWN_COMMANDS: Final = frozenset(_BASE_COMMANDS) | {f"UID {name}" for name in _UID_COMMANDS}
OTHER_COMMAND: Final = "OTHER"

UNKNOWN: Final = "unknown"
OTHER_VALUE: Final = "other"
MAX_LABEL_VALUES: Final = 64
MAX_IN_FLIGHT_PER_CONNECTION: Final = 1024
COMMAND_OUTCOMES: Final = ("OK", "NO", "BAD", "BYE")
ABORTED: Final = "ABORTED"
DIRECTIONS: Final = ("client_to_upstream", "upstream_to_client")
EMULATION_OUTCOMES: Final = {
    "move": ("ok", "failed", "rolled_back"),
    "stub_fetch": ("served",),
    "list_status": ("ok", "failed", "limited"),
}
_LABEL_VALUE = re.compile(r"[^a-z0-9_.:-]+")

# Seconds: an IMAP command takes from a millisecond (NOOP) to minutes (a big FETCH).
COMMAND_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0,
)  # fmt: skip
CONNECT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# describe_failure()'s fixed phrases -> the outcome label.
_CONNECT_FAILURES: Final = {
    "connection refused": "refused",
    "timed out": "timeout",
    "TLS handshake failed": "tls",
    "certificate verify failed": "certificate",
    "host name not resolved": "dns",
    "connection reset": "reset",
    "connection closed": "closed",
}
CONNECT_OUTCOMES: Final = ("ok", *_CONNECT_FAILURES.values(), "failed")


@functools.lru_cache(maxsize=256)
def command_label(name: str) -> str:
    """The bounded label for a command name ("uid fetch" -> "UID FETCH", "XFOO" -> "OTHER")."""
    upper = " ".join(name.upper().split())
    return upper if upper in KNOWN_COMMANDS else OTHER_COMMAND


def confidence_bucket(confidence: float | None) -> str:
    if confidence is None or confidence <= 0:
        return "none"
    if confidence >= 0.8:
        return "high"
    if confidence >= 0.5:
        return "medium"
    return "low"


def connect_outcome(reason: str) -> str:
    """The outcome label for an `UpstreamUnavailable` reason."""
    return _CONNECT_FAILURES.get(reason, "failed")


class BoundedLabel:
    """Normalises free-form label values and lets at most `limit` distinct ones through."""

    def __init__(self, limit: int = MAX_LABEL_VALUES, *, max_length: int = 48) -> None:
        self.limit = limit
        self.max_length = max_length
        self._seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if not value:
            return UNKNOWN
        cleaned = _LABEL_VALUE.sub("_", value.strip().lower())[: self.max_length] or UNKNOWN
        if cleaned in self._seen:
            return cleaned
        if len(self._seen) >= self.limit:
            return OTHER_VALUE
        self._seen.add(cleaned)
        return cleaned


class LiveStats(Protocol):
    """What the byte collector reads from an open connection (net's `ClientConnection`)."""

    connection_id: str

    @property
    def stats(self) -> Any: ...


@dataclass(slots=True)
class _ConnectionState:
    in_flight: dict[str, tuple[str, float]] = field(default_factory=dict)
    family: str = UNKNOWN
    confidence: float | None = None
    session_started: bool = False


class _LiveBytes(Collector):
    """`imap_proxy_bytes_total`: closed connections' octets plus the open ones' so far."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            PREFIX + "bytes",
            "Octets relayed, by direction (read from the client / from the upstream).",
            labels=["direction"],
        )
        for direction, value in self._metrics.bytes_by_direction().items():
            family.add_metric([direction], value)
        yield family


class _BusyPolls(Collector):
    """`imap_proxy_busy_polls_total{outcome}` and `imap_proxy_busy_poll_seconds_total`,
    read at scrape time from the server's `BusyPoll` (net/sockio.py); none without one."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        poll = self._metrics.busy_poll
        if poll is None:
            return
        polls = CounterMetricFamily(
            PREFIX + "busy_polls",
            "Reads that polled instead of sleeping: data (the data came within the "
            "window) or timeout (the read then slept).",
            labels=["outcome"],
        )
        polls.add_metric(["data"], poll.found)
        polls.add_metric(["timeout"], poll.timed_out)
        yield polls
        yield CounterMetricFamily(
            PREFIX + "busy_poll_seconds",
            "Time reads spent polling (CPU the process spent instead of sleeping).",
            value=poll.seconds,
        )


class Metrics:
    """Every metric of one proxy server, in its own registry; `observe` feeds it."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        version: str = __version__,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self._connections: dict[str | None, _ConnectionState] = {}
        self._closed_bytes = dict.fromkeys(DIRECTIONS, 0)
        self._live: Callable[[], Iterable[LiveStats]] | None = None
        self.busy_poll: BusyPoll | None = None  # the server's, once `track_busy_poll`
        # Children by metric and label values (`_child`): `labels()` validates and locks
        # on every call, some 5 us, twice a command. Label values are bounded, so is this.
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}
        self._family = BoundedLabel()
        self._rule = BoundedLabel()
        self._action = BoundedLabel()
        self._emulation_kind = BoundedLabel(16)
        self._emulation_outcome = BoundedLabel(16)
        self._make_metrics()
        self.build_info.labels(version=version).set(1)
        for kind, outcomes in EMULATION_OUTCOMES.items():
            for outcome in outcomes:
                self.emulations.labels(kind=self._emulation_kind(kind), outcome=outcome)
        for outcome in CONNECT_OUTCOMES:
            self.upstream_connects.labels(outcome=outcome)
        for side in ("client", "upstream"):
            self.protocol_violations.labels(side=side)
        for outcome in ("ok", "failed"):
            self.rule_reloads.labels(outcome=outcome)
        self.registry.register(_LiveBytes(self))
        self.registry.register(_BusyPolls(self))

    def _make_metrics(self) -> None:
        def counter(name: str, text: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(PREFIX + name, text, labels, registry=self.registry)

        def gauge(name: str, text: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(PREFIX + name, text, labels, registry=self.registry)

        self.connections_accepted = counter(
            "connections_accepted_total",
            "Client connections accepted (tls: implicit on implicit-TLS listeners, else none).",
            ("listener", "tls"),
        )
        self.connections_active = gauge(
            "connections_active", "Client connections open now.", ("listener",)
        )
        self.connections_rejected = counter(
            "connections_rejected_total",
            "Client connections refused at admission.",
            ("listener", "reason"),
        )
        self.sessions = counter(
            "sessions_total",
            "Ended sessions (past the upstream greeting), by final client fingerprint.",
            ("client_family", "confidence"),
        )
        self.commands = counter(
            "commands_total",
            "Client commands by name and tagged outcome (ABORTED: connection closed first).",
            ("command", "outcome", "client_family"),
        )
        self.command_duration = Histogram(
            PREFIX + "command_duration_seconds",
            "Client-visible time from a command's first line to its tagged completion.",
            ("command",),
            buckets=COMMAND_BUCKETS,
            registry=self.registry,
        )
        self.rules_applied = counter(
            "rules_applied_total", "Quirk rule actions applied.", ("rule", "action")
        )
        self.emulations = counter(
            "emulations_total", "Emulated operations by kind and outcome.", ("kind", "outcome")
        )
        self.upstream_connects = counter(
            "upstream_connects_total", "Upstream connection attempts by outcome.", ("outcome",)
        )
        self.upstream_connect_duration = Histogram(
            PREFIX + "upstream_connect_duration_seconds",
            "Time to a connected (and, with implicit TLS, handshaken) upstream stream.",
            buckets=CONNECT_BUCKETS,
            registry=self.registry,
        )
        self.upstream_up = gauge(
            "upstream_up", "1 when the readiness probe last reached the upstream, else 0."
        )
        self.limits_hit = counter(
            "limits_hit_total", "Hard limits hit, by limit and offending side.", ("limit", "side")
        )
        self.rule_reloads = counter(
            "rule_reloads_total", "Rule set (re)loads by outcome.", ("outcome",)
        )
        self.protocol_violations = counter(
            "protocol_violations_total", "Protocol violations by offending side.", ("side",)
        )
        self.build_info = gauge("build_info", "Always 1; the version as a label.", ("version",))

    # ------------------------------------------------------------------ feeding

    def observe(self, event: ConnectionEvent) -> None:
        """The net `Observer`: account for one connection event or session observation."""
        match event:
            case ConnectionOpened(connection_id=connection_id, listener=listener):
                self._connections[connection_id] = _ConnectionState()
                tls = "implicit" if listener == "imaps" else "none"
                self._child(self.connections_accepted, listener, tls).inc()
                self._child(self.connections_active, listener).inc()
            case ConnectionClosed():
                self._closed(event)
            case ev.UpstreamReady():
                self._state().session_started = True
            case ev.CommandStarted(tag=tag, name=name):
                self._command_started(tag, name)
            case ev.CommandCompleted(tag=tag, name=name, status=status):
                self._command_completed(tag, name, status)
            case ev.ProtocolViolation(side=side, limit=limit):
                self._child(self.protocol_violations, side.value).inc()
                if limit is not None:
                    self._child(self.limits_hit, limit, side.value).inc()
            case ev.ClientIdentified(family=family, confidence=confidence):
                state = self._state()
                state.family = self._family(family)
                state.confidence = confidence
            case ev.RuleApplied(rule_id=rule_id, action=action):
                self._child(self.rules_applied, self._rule(rule_id), self._action(action)).inc()
            case _:
                self._observe_by_name(event)

    def _observe_by_name(self, event: object) -> None:
        """Observations newer than this module, matched by class name and attributes."""
        if type(event).__name__.startswith("Emulation"):
            kind, outcome = getattr(event, "kind", None), getattr(event, "outcome", None)
            if isinstance(kind, str) and isinstance(outcome, str):
                self.record_emulation(kind, outcome)

    def record_emulation(self, kind: str, outcome: str) -> None:
        kind_label, outcome_label = self._emulation_kind(kind), self._emulation_outcome(outcome)
        self._child(self.emulations, kind_label, outcome_label).inc()

    def record_rule_reload(self, ok: bool) -> None:
        self._child(self.rule_reloads, "ok" if ok else "failed").inc()

    def connection_rejected(self, listener: str, reason: str, *, limit: str | None = None) -> None:
        """Admission refused a connection; `limit` (if one) also counts in limits_hit_total."""
        self._child(self.connections_rejected, listener, reason).inc()
        if limit is not None:
            self._child(self.limits_hit, limit, "client").inc()

    def upstream_connect(self, outcome: str, duration: float | None = None) -> None:
        self._child(self.upstream_connects, outcome).inc()
        if duration is not None:
            self.upstream_connect_duration.observe(duration)

    def set_upstream_up(self, up: bool) -> None:
        self.upstream_up.set(1 if up else 0)

    def track_live_connections(self, source: Callable[[], Iterable[LiveStats]]) -> None:
        """Where open connections are read at scrape time (the server's live set)."""
        self._live = source

    def track_busy_poll(self, poll: BusyPoll) -> None:
        """Export what the server's busy polling found and cost (read at scrape time)."""
        self.busy_poll = poll

    def instrument(self, dialer: Dialer) -> InstrumentedDialer:
        return InstrumentedDialer(dialer, self)

    def exposition(self) -> bytes:
        """The Prometheus text format of everything in the registry."""
        return generate_latest(self.registry)

    # --------------------------------------------------------------- internals

    def _child(self, metric: Counter | Gauge | Histogram, *values: str) -> Any:
        """`metric.labels(*values)` (values in the metric's label order), looked up once."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def _state(self) -> _ConnectionState:
        key = current_connection.get()
        state = self._connections.get(key)
        if state is None:
            state = self._connections[key] = _ConnectionState()
        return state

    def _command_started(self, tag: str, name: str) -> None:
        in_flight = self._state().in_flight
        in_flight.pop(tag, None)  # a reused tag restarts the clock
        if len(in_flight) >= MAX_IN_FLIGHT_PER_CONNECTION:
            del in_flight[next(iter(in_flight))]  # the oldest
        in_flight[tag] = (command_label(name), self._clock())

    def _command_completed(self, tag: str, name: str, status: str) -> None:
        state = self._state()
        started = state.in_flight.pop(tag, None)
        command = command_label(name)
        outcome = status.upper() if status.upper() in COMMAND_OUTCOMES else ABORTED
        self._child(self.commands, command, outcome, state.family).inc()
        if started is not None:
            duration = max(0.0, self._clock() - started[1])
            self._child(self.command_duration, command).observe(duration)

    def _closed(self, event: ConnectionClosed) -> None:
        self._child(self.connections_active, event.listener).dec()
        stats = event.stats
        self._closed_bytes["client_to_upstream"] += stats.bytes_from_client
        self._closed_bytes["upstream_to_client"] += stats.bytes_from_upstream
        state = self._connections.pop(event.connection_id, None)
        if state is None:
            return
        for command, _started in state.in_flight.values():
            self._child(self.commands, command, ABORTED, state.family).inc()
        if state.session_started:
            confidence = confidence_bucket(state.confidence)
            self._child(self.sessions, state.family, confidence).inc()

    def bytes_by_direction(self) -> dict[str, int]:
        totals = dict(self._closed_bytes)
        if self._live is not None:
            for connection in self._live():
                if connection.connection_id in self._connections:  # not yet counted as closed
                    totals["client_to_upstream"] += connection.stats.bytes_from_client
                    totals["upstream_to_client"] += connection.stats.bytes_from_upstream
        return totals


def fan_out(*observers: Observer | None) -> Observer:
    """One observer calling each given one in turn (None entries skipped)."""
    chosen = [observer for observer in observers if observer is not None]

    def observe(event: ConnectionEvent) -> None:
        for observer in chosen:
            observer(event)

    return observe


class InstrumentedDialer:
    """A `Dialer` that counts upstream connects by outcome and times the successful ones."""

    def __init__(self, inner: Dialer, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def connect(self) -> trio.abc.Stream:
        started = time.monotonic()
        try:
            stream = await self.inner.connect()
        except UpstreamUnavailable as exc:
            self.metrics.upstream_connect(connect_outcome(exc.reason))
            raise
        self.metrics.upstream_connect("ok", time.monotonic() - started)
        return stream

    async def start_tls(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        return await self.inner.start_tls(stream)
