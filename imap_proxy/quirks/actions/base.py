"""What every action is: hooks that default to changing nothing.

How this works: the engine calls only the hooks an action declared interest in
(`commands`, `responses`) or that every action has (`capabilities`, `holds`,
`releases_before`). Command hooks return a `Rewrite` (send this command instead) or a
`LocalAnswer` (the proxy answers; nothing goes upstream) or an `Emulate` (the proxy sends
its own command instead and answers from its outcome); response hooks return the new
response, or None for "unchanged". `after_login` and `upstream_tag` are hooks for rules
about the upstream's own needs (an ID after login, tag shapes).
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
class Emulate:
    """Send `command` (without a tag: the session gives it one of its own) upstream in
    place of the client's, consume its answer (tagged line and untagged lines), and
    answer the client what `answer` makes of it. The client's protocol state follows the
    answer's status. `selected_only`: without a selected mailbox the client gets BAD at
    once (as a server answers UNSELECT there)."""

    command: bytes
    name: str
    answer: Callable[[bytes, list[bytes]], LocalAnswer]
    selected_only: bool = False


class Action:
    kind: ClassVar[str] = "action"
    commands: frozenset[str] = frozenset()
    responses: frozenset[str] = frozenset()
    holds_untagged: ClassVar[bool] = False  # overrides holds()/releases_before()
    ignores_empty_lines: ClassVar[bool] = False  # the session drops bare CRLF lines
    maps_tags: ClassVar[bool] = False  # overrides upstream_tag()
    keepalive_interval: float | None = None  # seconds of silence in IDLE before a keepalive
    keepalive_line: bytes = b""

    def __init__(self, rule_id: str) -> None:
        self.rule_id = rule_id

    def capabilities(self, caps: list[str], view: SessionView) -> list[str]:
        return caps

    def on_command(
        self, command: Command, view: SessionView
    ) -> Rewrite | LocalAnswer | Emulate | None:
        return None

    def wants_command_line(self, line: bytes) -> bool:
        """Whether a command of `commands` with this first line is worth holding whole."""
        return True

    def wants_line(self, kind: str, line: bytes) -> bool:
        """Whether this untagged line (first line of the response) is worth parsing."""
        return True

    def on_response(self, response: Response, view: SessionView) -> Response | None:
        return None

    def after_login(self, view: SessionView) -> list[bytes]:
        """Commands (without tags) to send upstream once a login succeeded."""
        return []

    def upstream_tag(self, tag: bytes) -> bytes | None:
        """The tag to use upstream for this client tag; None keeps it."""
        return None

    def holds(self, kind: str, running: Collection[str]) -> bool:
        return False

    def releases_before(self, command: str) -> bool:
        return False
