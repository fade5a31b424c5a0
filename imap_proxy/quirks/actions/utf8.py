"""UTF8=ACCEPT (RFC 6855) in front of an upstream that knows only modified UTF-7 names.

How this works: `Utf8Accept` advertises UTF8=ACCEPT after login (and ENABLE, where the
upstream lacks it and `advertise_enable` says so) and keeps one fact per session: whether
the client enabled UTF8=ACCEPT. With `advertise: false` it advertises and enables nothing
and only converts the raw 8-bit names clients send without enabling UTF8=ACCEPT.

* ENABLE naming UTF8=ACCEPT: the proxy enables it itself. Alone, or when the upstream has
  no ENABLE, it answers `* ENABLED UTF8=ACCEPT` (plus nothing else: what the upstream
  cannot enable is not claimed, as `answer_enable` does); otherwise the other names go
  upstream and `* ENABLED UTF8=ACCEPT` is added before the tagged OK. Where the upstream
  lacks ENABLE every ENABLE is answered here (this rule runs before `answer_enable`).
* Mailbox arguments (the ones the special-folder mapping rewrites: `folders._mailbox_indices`,
  LIST/LSUB patterns and references, APPEND's mailbox as a command head) are UTF-8 text
  once enabled, and become modified UTF-7 (`&` too: `A&B` is `A&-B` upstream). Before,
  only names with 8-bit octets are converted (old imaplib sends them raw); ASCII names are
  then mUTF-7 already. A name that is not UTF-8 gets `NO [CANNOT]`: raw 8-bit never
  reaches the upstream.
* Once enabled, mailbox names in LIST/LSUB/XLIST/STATUS replies go back to UTF-8 (the
  encoder sends 8-bit names as literals, which every client reads). A name the upstream
  sends that is not valid mUTF-7 is shown unchanged and remembered, so that the client
  sending it back reaches that mailbox.

Rule order matters: this rule runs before the special-folder mapping (lower priority
number), so the mapping sees mUTF-7 names in commands, and after it on replies (actions
see replies in reverse order), so the client's alias names are converted too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imap_proxy.quirks.actions.base import Action, LocalAnswer, Rewrite, TaggedOutcome
from imap_proxy.quirks.actions.folders import LIST_VERBS, _mailbox_indices
from imap_proxy.quirks.actions.mailboxes import MAILBOX_COMMANDS
from imap_proxy.quirks.model import Utf8AcceptAction
from imap_proxy.wire.command import Command, peek_command
from imap_proxy.wire.encode import mailbox_value
from imap_proxy.wire.mutf7 import MUTF7Error, decode_mutf7, encode_mutf7
from imap_proxy.wire.response import ListData, Response, StatusData
from imap_proxy.wire.syntax import ParenList, Value, is_atom, mailbox_bytes

if TYPE_CHECKING:
    from imap_proxy.quirks.engine import SessionView

UTF8_ACCEPT = "UTF8=ACCEPT"
_ENABLED_LINE = b"* ENABLED UTF8=ACCEPT\r\n"
_NOT_UTF8 = b"NO [CANNOT] Mailbox name is not valid UTF-8"
_VERBATIM_MAX = 1000  # upstream names that are not mUTF-7, shown (and taken back) as sent


class _NotUtf8(ValueError):
    """A client's mailbox name that is not UTF-8."""


def _with(caps: list[str], name: str) -> list[str]:
    if any(cap.upper() == name for cap in caps):
        return caps
    return [*caps, name]


class Utf8Accept(Action):
    kind = "utf8_accept"
    commands = MAILBOX_COMMANDS | LIST_VERBS | frozenset({"ENABLE"})
    head_commands = frozenset({"APPEND"})
    responses = frozenset({"LIST", "LSUB", "XLIST", "STATUS"})
    watches_tagged = True

    def __init__(self, rule_id: str, spec: Utf8AcceptAction) -> None:
        super().__init__(rule_id)
        self.advertise = spec.advertise
        self.advertise_enable = spec.advertise_enable
        self.enabled = False  # the client sent ENABLE UTF8=ACCEPT
        self._enable_tags: set[bytes] = set()  # ENABLEs sent upstream less UTF8=ACCEPT
        self._verbatim: set[bytes] = set()

    def active(self, view: SessionView) -> bool:
        return view.authenticated and not view.has_upstream(UTF8_ACCEPT)

    def capabilities(self, caps: list[str], view: SessionView) -> list[str]:
        if not self.advertise or not self.active(view):
            return caps
        caps = _with(caps, UTF8_ACCEPT)
        if self.advertise_enable and not view.has_upstream("ENABLE"):
            caps = _with(caps, "ENABLE")
        return caps

    # --- commands ------------------------------------------------------------------

    def wants_command_line(self, line: bytes) -> bool:
        if self.enabled:
            return True
        peeked = peek_command(line)
        name = "" if peeked is None else peeked[1]
        if name == "ENABLE":
            return self.advertise
        if not line.isascii():
            return True
        if name == "APPEND":  # the message's literal ends the line: is the mailbox one too?
            words = line.split(b" ", 3)
            return len(words) > 2 and words[2].lstrip(b"~").startswith(b"{")
        return line.endswith(b"}\r\n")  # a literal: maybe the mailbox name

    def on_command(self, command: Command, view: SessionView) -> Rewrite | LocalAnswer | None:
        if not self.active(view):
            return None
        if command.name == "ENABLE":
            return self._enable(command, view) if self.advertise else None
        args = list(command.args)
        changed = False
        try:
            for index in _mailbox_indices(command):
                value = self._to_upstream(args[index])
                if value is not args[index]:
                    args[index] = value
                    changed = True
        except _NotUtf8:
            return LocalAnswer(b"", _NOT_UTF8)
        if not changed:
            return None
        return Rewrite(Command(command.tag, command.name, tuple(args)))

    def _enable(self, command: Command, view: SessionView) -> Rewrite | LocalAnswer | None:
        if not command.args:
            return None  # ENABLE needs at least one name: the upstream says BAD itself
        asked = any(is_atom(arg, UTF8_ACCEPT.encode()) for arg in command.args)
        others = tuple(arg for arg in command.args if not is_atom(arg, UTF8_ACCEPT.encode()))
        upstream_enable = view.has_upstream("ENABLE")
        if not asked:
            if upstream_enable or not self.advertise_enable:
                return None
            return LocalAnswer(b"* ENABLED\r\n", b"OK ENABLE completed")
        if not others or not upstream_enable:
            self.enabled = True
            return LocalAnswer(_ENABLED_LINE, b"OK ENABLE completed")
        self._enable_tags.add(command.tag)
        return Rewrite(Command(command.tag, command.name, others))

    def on_tagged(
        self, tag: bytes, name: str, line: bytes, view: SessionView, lookup: list[bytes] | None
    ) -> TaggedOutcome | None:
        if name != "ENABLE" or tag not in self._enable_tags:
            return None
        self._enable_tags.discard(tag)
        if line.split(b" ", 2)[1:2] != [b"OK"]:
            return None
        self.enabled = True
        return TaggedOutcome(untagged=_ENABLED_LINE)

    def _to_upstream(self, value: Value) -> Value:
        """The value with its name(s) in modified UTF-7; the same object when unchanged."""
        if isinstance(value, ParenList):  # LIST-EXTENDED: a list of patterns
            items = tuple(self._to_upstream(item) for item in value.items)
            if all(new is old for new, old in zip(items, value.items, strict=True)):
                return value
            return ParenList(items)
        name = mailbox_bytes(value)
        if name is None or name in self._verbatim:
            return value
        if not self.enabled and name.isascii():
            return value  # an IMAP4rev1 client: its ASCII names are mUTF-7 already
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise _NotUtf8 from None
        encoded = encode_mutf7(text)
        return value if encoded == name else mailbox_value(encoded)

    # --- replies -------------------------------------------------------------------

    def wants_line(self, kind: str, line: bytes) -> bool:
        return self.enabled and (b"&" in line or not line.isascii() or line.endswith(b"}\r\n"))

    def on_response(self, response: Response, view: SessionView) -> Response | None:
        if not self.enabled or not isinstance(response, ListData | StatusData):
            return None
        name = self._to_client(response.mailbox)
        if name is None:
            return None
        if isinstance(response, StatusData):
            return StatusData(name, response.items)
        return ListData(
            response.kind, response.attributes, response.delimiter, name, response.extended
        )

    def _to_client(self, name: bytes) -> bytes | None:
        """The UTF-8 form of an upstream name, or None to show it unchanged."""
        if b"&" not in name and name.isascii():
            return None
        try:
            return decode_mutf7(name).encode("utf-8")
        except MUTF7Error:
            if len(self._verbatim) < _VERBATIM_MAX:
                self._verbatim.add(name)
            return None
