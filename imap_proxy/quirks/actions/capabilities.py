"""Capability shaping and the ID answer.

How this works: `ShapeCapabilities` adds and removes names (case-insensitively, keeping
the list's order; `prepend` names go first, as IMAP4rev1 conventionally does); the
answer, a function of the list and the rule's parameters, is remembered for the last few.
`AnswerId` makes ID safe in every state: it advertises ID and, when the upstream has no
ID, answers the command itself (RFC 2971: the ID never makes the proxy refuse service).
When the upstream has ID the session forwards the client's ID (minus spoofable fields).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from imap_proxy.quirks.actions.base import Action, LocalAnswer, Rewrite
from imap_proxy.quirks.model import AnswerIdAction, CapabilitiesAction
from imap_proxy.wire.command import Command
from imap_proxy.wire.encode import encode_id_response

if TYPE_CHECKING:
    from imap_proxy.quirks.engine import SessionView


SHAPED_REMEMBERED = 64  # capability lists (with a rule's parameters) whose shape is kept


@functools.lru_cache(maxsize=SHAPED_REMEMBERED)
def _shaped(
    caps: tuple[str, ...],
    prepend: tuple[str, ...],
    add: tuple[str, ...],
    remove: frozenset[str],
) -> tuple[str, ...]:
    """The list with `remove` taken out, `prepend` first and `add` last (where absent):
    a function of its arguments, and every session asks with the same few lists."""
    kept = [cap for cap in caps if cap.upper() not in remove]
    present = {cap.upper() for cap in kept}
    front = [name for name in prepend if name.upper() not in present]
    present |= {name.upper() for name in front}
    back = [name for name in add if name.upper() not in present]
    return (*front, *kept, *back)


class ShapeCapabilities(Action):
    shared = True  # configuration only
    kind = "capabilities"

    def __init__(self, rule_id: str, spec: CapabilitiesAction) -> None:
        super().__init__(rule_id)
        self.prepend = tuple(spec.prepend)
        self.add = tuple(spec.add)
        self.remove = frozenset(name.upper() for name in spec.remove)

    def capabilities(self, caps: list[str], view: SessionView) -> list[str]:
        return list(_shaped(tuple(caps), self.prepend, self.add, self.remove))


class AnswerId(Action):
    shared = True  # configuration only
    kind = "answer_id"
    commands = frozenset({"ID"})

    def __init__(self, rule_id: str, spec: AnswerIdAction) -> None:
        super().__init__(rule_id)
        fields = spec.fields
        self.reply = encode_id_response(
            None if fields is None else [(k.encode(), v.encode()) for k, v in fields.items()]
        )

    def capabilities(self, caps: list[str], view: SessionView) -> list[str]:
        if any(cap.upper() == "ID" for cap in caps):
            return caps
        return [*caps, "ID"]

    def on_command(self, command: Command, view: SessionView) -> Rewrite | LocalAnswer | None:
        if view.has_upstream("ID"):
            return None
        return LocalAnswer(self.reply, b"OK ID completed")
