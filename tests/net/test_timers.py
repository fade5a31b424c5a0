"""Timers: one task keeping many owners' deadlines (pre-auth and idle timeouts).

How this works: owners record when `deadline_reached()` is called, on pytest-trio's
`autojump_clock` (a MockClock), so every deadline is exact and no test waits for real.
"""

from __future__ import annotations

import gc
import weakref

import trio
import trio.testing

from imap_proxy.net.timers import Timers


class Owner:
    def __init__(self, timers: Timers, name: str, log: list[tuple[str, float]]) -> None:
        self.timers = timers
        self.name = name
        self.log = log
        self.next: float | None = None  # schedule again at this time when reached

    def deadline_reached(self) -> None:
        self.log.append((self.name, trio.current_time()))
        if self.next is not None:
            when, self.next = self.next, None
            self.timers.schedule(self, when)


async def test_owners_fire_in_deadline_order(autojump_clock: trio.testing.MockClock) -> None:
    timers = Timers()
    log: list[tuple[str, float]] = []
    start = trio.current_time()
    a, b, c = (Owner(timers, name, log) for name in "abc")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        timers.schedule(a, start + 30)
        timers.schedule(b, start + 10)
        timers.schedule(c, start + 20)
        await trio.sleep(40)
        nursery.cancel_scope.cancel()
    assert [(name, round(at - start)) for name, at in log] == [("b", 10), ("c", 20), ("a", 30)]
    assert len(timers) == 0


async def test_a_later_deadline_costs_nothing_and_an_earlier_one_replaces(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timers = Timers()
    log: list[tuple[str, float]] = []
    start = trio.current_time()
    owner = Owner(timers, "x", log)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        timers.schedule(owner, start + 10)
        timers.schedule(owner, start + 50)  # later: the entry at 10 stays
        owner.next = start + 50  # ...and the owner schedules 50 itself when told at 10
        await trio.sleep(60)
        timers.schedule(owner, trio.current_time() + 100)
        timers.schedule(owner, trio.current_time() + 5)  # earlier: replaces the 100
        await trio.sleep(200)
        nursery.cancel_scope.cancel()
    assert [round(at - start) for _, at in log] == [10, 50, 65]


async def test_cancel_forgets_the_owner(autojump_clock: trio.testing.MockClock) -> None:
    timers = Timers()
    log: list[tuple[str, float]] = []
    owner = Owner(timers, "gone", log)
    ref = weakref.ref(owner)
    timers.schedule(owner, trio.current_time() + 10)
    timers.cancel(owner)
    del owner
    gc.collect()
    assert ref() is None  # the heap does not keep a closed connection alive
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert log == []


async def test_a_failing_owner_is_reported_and_the_others_still_fire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    errors: list[BaseException] = []
    timers = Timers(on_error=errors.append)
    log: list[tuple[str, float]] = []

    class Broken:
        def deadline_reached(self) -> None:
            raise RuntimeError("bug")

    good = Owner(timers, "good", log)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        timers.schedule(Broken(), trio.current_time() + 1)
        timers.schedule(good, trio.current_time() + 2)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert [type(e) for e in errors] == [RuntimeError]
    assert [name for name, _ in log] == ["good"]
