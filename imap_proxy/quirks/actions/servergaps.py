"""Commands the upstream lacks, answered or emulated by the proxy: NAMESPACE, ENABLE,
UNSELECT.

How this works: each action acts only after login, when the upstream's capabilities
(from the login's [CAPABILITY] code, else those listed before) lack the command
(the rule's match says so too; the action checks again, as the list changes at login).
It then advertises what it backs and answers the command itself:
* `AnswerNamespace`: `* NAMESPACE (("prefix" "delim")) NIL NIL` with the delimiter a LIST
  response of this session showed; before any LIST, the proxy asks the upstream with its
  own `LIST "" ""` (the rule's `delimiter` if that says nothing). New Outlook sends
  NAMESPACE right after login and gives up the account on NO/BAD (Q18).
* `AnswerEnable`: `* ENABLED` naming nothing, then OK - nothing is claimed that is not
  backed (RFC 5161 §3.1: the server lists only what it enabled).
* `EmulateUnselect`: UNSELECT without CLOSE (CLOSE expunges, Q34): the proxy sends its own
  `EXAMINE` of a mailbox that cannot exist; a failed EXAMINE leaves no mailbox selected
  (RFC 3501 §6.3.2), which is what UNSELECT means, so the client gets OK (BAD when the
  upstream said BAD, or at once when no mailbox was selected). Pipelined commands wait
  behind the EXAMINE upstream, so they run after the mailbox is closed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imap_proxy.quirks.actions.base import Action, LocalAnswer, ReplaceCommand, Rewrite
from imap_proxy.quirks.model import AnswerEnableAction, AnswerNamespaceAction, EmulateUnselectAction
from imap_proxy.wire.command import Command
from imap_proxy.wire.encode import encode_mailbox, encode_untagged
from imap_proxy.wire.errors import ProtocolError
from imap_proxy.wire.message import Message
from imap_proxy.wire.response import ListData, parse_response
from imap_proxy.wire.syntax import Nil, ParenList, Quoted

if TYPE_CHECKING:
    from imap_proxy.quirks.engine import SessionView


def _delimiter_in(untagged: list[bytes]) -> bytes | None:
    for line in untagged:
        try:
            data = parse_response(Message.from_line(line))
        except ProtocolError:
            continue
        if isinstance(data, ListData) and data.delimiter is not None:
            return data.delimiter
    return None


def _with(caps: list[str], name: str) -> list[str]:
    if any(cap.upper() == name for cap in caps):
        return caps
    return [*caps, name]


class _ServerGap(Action):
    """An action for one capability the upstream lacks."""

    capability = ""

    def __init__(self, rule_id: str, advertise: bool) -> None:
        super().__init__(rule_id)
        self.advertise = advertise

    def capabilities(self, caps: list[str], view: SessionView) -> list[str]:
        if not self.advertise or self.backed_upstream(view):
            return caps
        return _with(caps, self.capability)

    def backed_upstream(self, view: SessionView) -> bool:
        """True unless the upstream's capabilities after login lack the command. Before
        login an upstream lists only part of what it has (Dovecot adds NAMESPACE,
        UNSELECT, … after login), and these commands need a login anyway: until then the
        upstream answers them."""
        return not view.authenticated or view.has_upstream(self.capability)


class AnswerNamespace(_ServerGap):
    shared = True  # configuration only
    kind = "answer_namespace"
    capability = "NAMESPACE"
    commands = frozenset({"NAMESPACE"})
    responses = frozenset({"LIST"})  # observed only: it tells the upstream's delimiter

    def __init__(self, rule_id: str, spec: AnswerNamespaceAction) -> None:
        super().__init__(rule_id, spec.advertise)
        self.prefix = spec.prefix.encode()
        self.delimiter = spec.delimiter.encode()

    def reply(self, delimiter: bytes | None) -> LocalAnswer:
        personal = ParenList(
            (ParenList((Quoted(self.prefix), Quoted(delimiter or self.delimiter))),)
        )
        untagged = encode_untagged("NAMESPACE", [personal, Nil(), Nil()]).to_bytes()
        return LocalAnswer(untagged, b"OK NAMESPACE completed")

    def on_command(
        self, command: Command, view: SessionView
    ) -> Rewrite | LocalAnswer | ReplaceCommand | None:
        if self.backed_upstream(view) or command.args:
            return None  # NAMESPACE takes no arguments: the upstream says BAD itself
        if view.delimiter is not None:
            return self.reply(view.delimiter)

        def answer(_line: bytes, untagged: list[bytes]) -> LocalAnswer:
            view.delimiter = _delimiter_in(untagged) or view.delimiter
            reply = self.reply(view.delimiter)
            # Anything else that came meanwhile (new mail…) is the client's.
            other = b"".join(line for line in untagged if line[2:7].upper() != b"LIST ")
            return LocalAnswer(other + reply.untagged, reply.status_text)

        # No LIST seen yet: ask the upstream for its delimiter (RFC 3501 §6.3.8).
        return ReplaceCommand(b'LIST "" ""', "LIST", answer)


class AnswerEnable(_ServerGap):
    shared = True  # configuration only
    kind = "answer_enable"
    capability = "ENABLE"
    commands = frozenset({"ENABLE"})

    def __init__(self, rule_id: str, spec: AnswerEnableAction) -> None:
        super().__init__(rule_id, spec.advertise)

    def on_command(self, command: Command, view: SessionView) -> Rewrite | LocalAnswer | None:
        if self.backed_upstream(view) or not command.args:
            return None  # ENABLE needs at least one name: the upstream says BAD itself
        return LocalAnswer(b"* ENABLED\r\n", b"OK ENABLE completed")


class EmulateUnselect(_ServerGap):
    shared = True  # configuration only
    kind = "emulate_unselect"
    capability = "UNSELECT"
    commands = frozenset({"UNSELECT"})

    def __init__(self, rule_id: str, spec: EmulateUnselectAction) -> None:
        super().__init__(rule_id, spec.advertise)
        token, literal = encode_mailbox(spec.mailbox.encode())
        assert literal is None  # printable ASCII only (the model's pattern)
        self.examine = b"EXAMINE " + token

    def on_command(self, command: Command, view: SessionView) -> ReplaceCommand | None:
        if self.backed_upstream(view) or command.args:
            return None  # UNSELECT takes no arguments: the upstream may say BAD itself
        return ReplaceCommand(self.examine, "EXAMINE", _unselect_answer, selected_only=True)


def _unselect_answer(line: bytes, untagged: list[bytes]) -> LocalAnswer:
    """NO (no such mailbox) is the expected outcome: nothing is selected any more. BAD
    means the EXAMINE was not run, so the mailbox stays selected. Untagged data that
    came meanwhile (`* OK [CLOSED]`, expunges of the old mailbox) goes to the client."""
    if line.split(b" ", 2)[1:2] == [b"BAD"]:
        return LocalAnswer(b"".join(untagged), b"BAD UNSELECT failed")
    return LocalAnswer(b"".join(untagged), b"OK UNSELECT completed")
