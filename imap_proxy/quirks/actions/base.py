"""What every action is: hooks that default to changing nothing.

How this works: the engine calls only the hooks an action declared interest in
(`commands`, `responses`) or that every action has (`capabilities`, `holds`,
`releases_before`). Command hooks return a `Rewrite` (send this command instead) or a
`LocalAnswer` (the proxy answers; nothing goes upstream); response hooks return the new
response, or None for "unchanged".

Two hooks watch what streams through without holding it: `on_untagged_line` sees the
first line of each untagged response of the kinds in `observes` (never a literal: FETCH
bodies stream on) and may keep a whole one-line response back; `on_tagged` sees the
tagged completion of each client command (when `watches_tagged`) and returns a
`TaggedOutcome`: lines to send before it, a replacement for it, or a BYE instead.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from imap_proxy.wire.command import Command
from imap_proxy.wire.response import Response

if TYPE_CHECKING:
    from imap_proxy.quirks.engine import SessionView


@dataclass(frozen=True, slots=True)
class Rewrite:
    command: Command


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """`untagged` lines (CRLF included) then the tagged `status_text` (e.g. b"OK done")."""

    untagged: bytes
    status_text: bytes


@dataclass(frozen=True, slots=True)
class TaggedOutcome:
    """What an action makes of a tagged completion. `untagged` (CRLF included) goes to
    the client before the tagged line; `line` replaces the tagged line (None: as it came);
    `bye` ends the session with `* BYE <bye>` instead of the tagged line. `lookup` asks the
    session first to fetch the UIDs of those message numbers (`FETCH <lookup> (UID)`) and
    then to call `on_tagged` again with the untagged lines of that command. `changed` is
    False when the outcome only gives back lines the action had held; `stubs` counts the
    stub responses in `untagged` (for metrics)."""

    untagged: bytes = b""
    line: bytes | None = None
    bye: bytes | None = None
    lookup: bytes | None = None
    changed: bool = True
    stubs: int = 0


class Action:
    kind: ClassVar[str] = "action"
    commands: frozenset[str] = frozenset()
    responses: frozenset[str] = frozenset()
    holds_untagged: ClassVar[bool] = False  # overrides holds()/releases_before()
    observes: frozenset[str] = frozenset()  # untagged kinds whose first line it sees
    watches_tagged: ClassVar[bool] = False  # overrides on_tagged()

    def __init__(self, rule_id: str) -> None:
        self.rule_id = rule_id

    def capabilities(self, caps: list[str], view: SessionView) -> list[str]:
        return caps

    def on_command(self, command: Command, view: SessionView) -> Rewrite | LocalAnswer | None:
        return None

    def on_response(self, response: Response, view: SessionView) -> Response | None:
        return None

    def holds(self, kind: str, running: Collection[str]) -> bool:
        return False

    def releases_before(self, command: str) -> bool:
        return False

    def on_untagged_line(
        self, kind: str, line: bytes, whole: bool, running: Callable[[], Collection[str]]
    ) -> bool:
        """The first line of an untagged response; True keeps it back (only when `whole`:
        a one-line response no other action kept). The action then owns the line.
        `running()` names the client's commands in flight (a list: call it only if needed)."""
        return False

    def on_tagged(
        self, tag: bytes, name: str, line: bytes, view: SessionView, lookup: list[bytes] | None
    ) -> TaggedOutcome | None:
        return None
