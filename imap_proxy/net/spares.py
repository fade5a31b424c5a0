"""Spare upstream connections: opened before a client needs one, so a login does not wait
for the upstream's TCP connect, TLS handshake and greeting.

How this works: with `upstream.spare_connections: N` the server wraps its dialer in a
`SpareConnections` and runs `run()` in its nursery. `connect()` hands out the oldest spare
that is younger than `upstream.spare_max_age` and still open (polled without blocking:
a hang-up or an error means the upstream gave up on it), else dials
as before; either way it records the demand and wakes `run()`, which dials until N spares
wait again. The pool is refilled only while there is demand: once no client has
connected for `spare_max_age`, spares that expire are closed and not replaced, so an idle
proxy holds no upstream connections after that and the upstream's log sees no stream of
connections opened and dropped unused. The upstream's greeting stays in the spare's
socket until the session reads it, exactly as on a fresh connection. Dialling failures
are logged once per outage and retried after a pause; clients meanwhile dial directly,
so they see the same error they would without the pool. Closing the pool (the server's
end) closes every spare.
"""

from __future__ import annotations

import collections
import math
import select

import trio

from imap_proxy.net.upstream import Dialer, UpstreamUnavailable
from imap_proxy.observe.logging import get_logger

_log = get_logger("imap_proxy.net")
RETRY_PAUSE = 1.0  # seconds after a failed dial before the pool tries again
_GONE = select.POLLRDHUP | select.POLLHUP | select.POLLERR


def _still_open(stream: trio.abc.Stream) -> bool:
    """False when the upstream has closed, half-closed or reset the TCP connection (with
    or without its greeting still unread: POLLRDHUP tells, reading nothing)."""
    transport = getattr(stream, "transport_stream", stream)
    if not isinstance(transport, trio.SocketStream):
        return True  # not a socket: age alone decides
    poller = select.poll()
    poller.register(transport.socket.fileno(), _GONE)
    return not poller.poll(0)


class SpareConnections:
    """A `Dialer` that keeps up to `size` connections to the upstream ready."""

    def __init__(self, dialer: Dialer, size: int, max_age: float) -> None:
        self._dialer = dialer
        self.size = size
        self.max_age = max_age
        self._spares: collections.deque[tuple[float, trio.abc.Stream]] = collections.deque()
        self._last_demand = -math.inf
        self._wakeup = trio.Event()
        self._closed = False
        self._failing = False
        self.handed_out = 0  # spares given to clients (tests and logs)
        self.discarded = 0  # spares closed unused: too old or closed by the upstream

    @property
    def ready(self) -> int:
        return len(self._spares)

    async def connect(self) -> trio.abc.Stream:
        now = trio.current_time()
        self._last_demand = now
        self._wakeup.set()
        while self._spares:
            opened, stream = self._spares.popleft()
            if now - opened < self.max_age and _still_open(stream):
                self.handed_out += 1
                return stream
            self.discarded += 1
            await trio.aclose_forcefully(stream)
        return await self._dialer.connect()

    async def start_tls(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        return await self._dialer.start_tls(stream)

    async def run(self) -> None:
        """Keep the spares topped up while there is demand; close them at the end."""
        try:
            while True:
                await self._expire()
                now = trio.current_time()
                if len(self._spares) < self.size and now - self._last_demand < self.max_age:
                    await self._dial_one()
                    continue
                wait = self.max_age
                if self._spares:
                    wait = self._spares[0][0] + self.max_age - now
                self._wakeup = trio.Event()
                with trio.move_on_after(max(wait, 0.0)):
                    await self._wakeup.wait()
        finally:
            with trio.CancelScope(shield=True):
                await self.close()

    async def close(self) -> None:
        self._closed = True
        spares, self._spares = self._spares, collections.deque()
        for _opened, stream in spares:
            await trio.aclose_forcefully(stream)

    async def _expire(self) -> None:
        now = trio.current_time()
        while self._spares and now - self._spares[0][0] >= self.max_age:
            _opened, stream = self._spares.popleft()
            self.discarded += 1
            await trio.aclose_forcefully(stream)

    async def _dial_one(self) -> None:
        try:
            stream = await self._dialer.connect()
        except UpstreamUnavailable as exc:
            if not self._failing:
                _log.warning("spare upstream connection failed", reason=exc.reason)
            self._failing = True
            await trio.sleep(RETRY_PAUSE)
            return
        if self._failing:
            _log.info("spare upstream connections restored")
            self._failing = False
        if self._closed:
            await trio.aclose_forcefully(stream)
            return
        self._spares.append((trio.current_time(), stream))
