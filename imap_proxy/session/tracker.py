"""Commands in flight, keyed by tag, and tags for the proxy's own commands.

How this works: every command sent upstream is registered under its tag when its first
line leaves; the tagged completion removes it. Clients pipeline, so many commands may be in
flight; a misbehaving client may even reuse a tag, so each tag holds a FIFO of commands and
a completion takes the oldest. Commands the proxy injects get tags from `new_proxy_tag()`:
a reserved prefix and a counter, skipping any tag a client command in flight uses, so a
tagged response always finds its owner.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

PROXY_TAG_PREFIX = b"ipx"


@dataclass(slots=True)
class InFlight:
    """One command between its first line going upstream and its tagged completion."""

    tag: bytes
    name: str
    # Set for commands the proxy sent itself: called with the tagged response line
    # (and the untagged lines collected for it) instead of relaying them.
    on_complete: Callable[[bytes, list[bytes]], None] | None = None
    untagged: list[bytes] = field(default_factory=list)

    @property
    def injected(self) -> bool:
        return self.on_complete is not None


class CommandTracker:
    def __init__(self) -> None:
        # A list, not a deque: nearly always one command a tag, and a deque's first block
        # costs some 600 octets - per idling session, for its IDLE.
        self._by_tag: dict[bytes, list[InFlight]] = {}
        self._count = 0
        self._injected = 0
        self._proxy_tags = itertools.count(1)

    def __len__(self) -> int:
        return self._count

    def add(self, command: InFlight) -> None:
        queue = self._by_tag.get(command.tag)
        if queue is None:
            self._by_tag[command.tag] = [command]
        else:
            queue.append(command)
        self._count += 1
        self._injected += command.injected

    def get(self, tag: bytes) -> InFlight | None:
        queue = self._by_tag.get(tag)
        return queue[0] if queue else None

    def complete(self, tag: bytes) -> InFlight | None:
        queue = self._by_tag.get(tag)
        if not queue:
            return None
        command = queue.pop(0)
        if not queue:
            del self._by_tag[tag]
        self._count -= 1
        self._injected -= command.injected
        return command

    @property
    def has_injected(self) -> bool:
        return self._injected > 0

    def client_commands(self) -> int:
        return sum(1 for queue in self._by_tag.values() for c in queue if not c.injected)

    def client_names(self) -> list[str]:
        """Names of the client's commands in flight (a few at most: no caching needed)."""
        return [c.name for queue in self._by_tag.values() for c in queue if not c.injected]

    def client_tags(self) -> list[tuple[bytes, str]]:
        """(tag, name) of the client's commands in flight, oldest first."""
        return [(c.tag, c.name) for queue in self._by_tag.values() for c in queue if not c.injected]

    def injected(self) -> list[InFlight]:
        return [c for queue in self._by_tag.values() for c in queue if c.injected]

    def new_proxy_tag(self) -> bytes:
        while True:
            tag = PROXY_TAG_PREFIX + str(next(self._proxy_tags)).encode()
            if tag not in self._by_tag:
                return tag
