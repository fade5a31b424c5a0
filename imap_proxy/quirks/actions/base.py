"""What every action is: hooks that default to changing nothing.

How this works: the engine calls only the hooks an action declared interest in
(`commands`, `responses`) or that every action has (`capabilities`, `holds`,
`releases_before`). Command hooks return a `Rewrite` (send this command instead) or a
`LocalAnswer` (the proxy answers; nothing goes upstream); response hooks return the new
response, `DROP` (the client does not see it), or None for "unchanged". Commands in
`head_commands` (APPEND) reach `on_command` as soon as their first argument is complete:
their last argument is then the message literal still to stream (`LiteralString(None)`).
An action with `wants_mailbox_list(command)` true makes the session learn the mailbox
list (`LIST "" "*"`, shown to `learn_list` only) before the command goes on.
"""

from __future__ import annotations

from collections.abc import Collection
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
class Drop:
    """From a response hook: the client must not see this response at all."""


DROP = Drop()


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """`untagged` lines (CRLF included) then the tagged `status_text` (e.g. b"OK done")."""

    untagged: bytes
    status_text: bytes


class Action:
    kind: ClassVar[str] = "action"
    commands: frozenset[str] = frozenset()
    head_commands: frozenset[str] = frozenset()
    responses: frozenset[str] = frozenset()
    holds_untagged: ClassVar[bool] = False  # overrides holds()/releases_before()

    def __init__(self, rule_id: str) -> None:
        self.rule_id = rule_id

    def capabilities(self, caps: list[str], view: SessionView) -> list[str]:
        return caps

    def on_command(self, command: Command, view: SessionView) -> Rewrite | LocalAnswer | None:
        return None

    def on_response(self, response: Response, view: SessionView) -> Response | Drop | None:
        return None

    def wants_mailbox_list(self, command: Command, view: SessionView) -> bool:
        return False

    def holds(self, kind: str, running: Collection[str]) -> bool:
        return False

    def releases_before(self, command: str) -> bool:
        return False
