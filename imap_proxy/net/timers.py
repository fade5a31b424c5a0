"""One task that keeps the deadlines of many connections (pre-auth and idle timeouts).

How this works: a connection calls `schedule(owner, when)` whenever its deadline may have
changed (after every batch it handles) and `cancel(owner)` when it closes; `run()` is
one task that sleeps until the earliest deadline and then calls that owner's
`deadline_reached()`, a synchronous method that decides: time out now, or schedule again
(the deadline moved later, as it does on every bit of activity). Each owner has at most
one live entry in a heap; `schedule` pushes a new entry only when the deadline moved
*earlier* than the entry it has (moving later costs nothing: the entry fires early and
the owner schedules again), and a superseded or cancelled entry only forgets its owner,
so a closed connection is not kept alive by the heap. A server runs one `Timers` for all
its connections, which saves a task (some 3 KB) per connection compared with a timer task
each; a connection started on its own runs a private one.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Protocol

import trio


class Timed(Protocol):
    def deadline_reached(self) -> None: ...


class _Entry:
    __slots__ = ("owner", "when")

    def __init__(self, when: float, owner: Timed) -> None:
        self.when = when
        self.owner: Timed | None = owner


class Timers:
    def __init__(self, on_error: Callable[[BaseException], None] | None = None) -> None:
        self._heap: list[tuple[float, int, _Entry]] = []
        self._entries: dict[Timed, _Entry] = {}
        self._order = itertools.count()
        self._scope: trio.CancelScope | None = None
        self._on_error = on_error

    def __len__(self) -> int:
        """Owners with a live deadline."""
        return len(self._entries)

    def schedule(self, owner: Timed, when: float) -> None:
        entry = self._entries.get(owner)
        if entry is not None:
            if entry.when <= when:
                return  # fires first, then the owner schedules its later deadline
            entry.owner = None
        if math.isinf(when):
            self._entries.pop(owner, None)
            return
        entry = _Entry(when, owner)
        self._entries[owner] = entry
        heapq.heappush(self._heap, (when, next(self._order), entry))
        if self._scope is not None and when < self._scope.deadline:
            self._scope.deadline = when

    def cancel(self, owner: Timed) -> None:
        entry = self._entries.pop(owner, None)
        if entry is not None:
            entry.owner = None

    async def run(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._next_deadline()) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None
            self._fire_due(trio.current_time())

    def _next_deadline(self) -> float:
        heap = self._heap
        while heap and heap[0][2].owner is None:
            heapq.heappop(heap)  # superseded or cancelled
        return heap[0][0] if heap else math.inf

    def _fire_due(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, entry = heapq.heappop(heap)
            owner = entry.owner
            if owner is None:
                continue
            entry.owner = None
            del self._entries[owner]
            try:
                owner.deadline_reached()
            except Exception as exc:  # a bug in one connection must not stop the others
                if self._on_error is None:
                    raise
                self._on_error(exc)
