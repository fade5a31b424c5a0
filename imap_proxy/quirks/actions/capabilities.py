"""Capability shaping and the ID answer.

How this works: `ShapeCapabilities` adds and removes names (case-insensitively, keeping
the list's order; `prepend` names go first, as IMAP4rev1 conventionally does), and
remembers its answer for the last few lists it saw (a pure function of the list).
`AnswerId` makes ID safe in every state: it advertises ID and, when the upstream has no
ID, answers the command itself (RFC 2971: the ID never makes the proxy refuse service).
When the upstream has ID the session forwards the client's ID (minus spoofable fields).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imap_proxy.quirks.actions.base import Action, LocalAnswer, Rewrite
from imap_proxy.quirks.model import AnswerIdAction, CapabilitiesAction
from imap_proxy.wire.command import Command
from imap_proxy.wire.encode import encode_id_response

if TYPE_CHECKING:
    from imap_proxy.quirks.engine import SessionView


def _without(caps: list[str], names: set[str]) -> list[str]:
    return [cap for cap in caps if cap.upper() not in names]


SHAPED_REMEMBERED = 64  # capability lists one shaping action remembers its answer for


class ShapeCapabilities(Action):
    shared = True  # configuration only (and a memo of its answers, a function of the list)
    kind = "capabilities"

    def __init__(self, rule_id: str, spec: CapabilitiesAction) -> None:
        super().__init__(rule_id)
        self.prepend = list(spec.prepend)
        self.add = list(spec.add)
        self.remove = {name.upper() for name in spec.remove}
        self._shaped: dict[tuple[str, ...], tuple[str, ...]] = {}

    def capabilities(self, caps: list[str], view: SessionView) -> list[str]:
        # Every session of the rule set asks with the same few lists.
        key = tuple(caps)
        known = self._shaped.get(key)
        if known is None:
            if len(self._shaped) >= SHAPED_REMEMBERED:
                del self._shaped[next(iter(self._shaped))]
            known = self._shaped[key] = tuple(self._shape(caps))
        return list(known)

    def _shape(self, caps: list[str]) -> list[str]:
        caps = _without(caps, self.remove)
        present = {cap.upper() for cap in caps}
        front = [name for name in self.prepend if name.upper() not in present]
        present |= {name.upper() for name in front}
        back = [name for name in self.add if name.upper() not in present]
        return front + caps + back


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
