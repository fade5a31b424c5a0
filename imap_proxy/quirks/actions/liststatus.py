"""LIST-STATUS (RFC 5819) for an upstream without it, as a script of plain LIST and STATUS.

How this works: `EmulateListStatus` advertises LIST-STATUS after login and answers
`LIST ref pattern RETURN (STATUS (items) ...)` with an `Emulate` whose script
(`list_status_script`) the session runs while no other command is in flight:

* `LIST ref pattern` upstream (one per pattern of a LIST-EXTENDED pattern list, mailboxes
  listed twice shown once); its `* LIST` lines are kept, other untagged lines pass on.
* RETURN (SUBSCRIBED), where the upstream lacks LIST-EXTENDED: `LSUB ref pattern` too,
  and \\Subscribed is added to the LIST lines of the mailboxes it names. RETURN (CHILDREN)
  and (SPECIAL-USE) ask for attributes the plain LIST already carries (Dovecot sends
  \\HasChildren/\\HasNoChildren; the special-use synthesis rule adds the rest): nothing
  more is sent for them. RETURN (SPECIAL-USE) alone is left to that rule (or upstream).
* `STATUS mailbox (items)` for each mailbox without \\Noselect or \\NonExistent (RFC
  5819 §2: no STATUS for those), at most `max_status` of them; the tagged OK says how
  many were left out. A STATUS answered NO (the mailbox went away meanwhile) leaves that
  mailbox without STATUS, as RFC 5819 allows. BAD (items of an extension the upstream
  lacks, HIGHESTMODSEQ without CONDSTORE) is retried with the RFC 3501 items alone, for
  this and the following mailboxes; BAD again ends the command with BAD.
* The client gets each `* LIST` line followed by its `* STATUS` line, then OK.

The answer is marked `replies`: the session passes it through the response rules as if
the upstream had sent it, so the special-folder mapping renames what the script (which
deals in upstream names: rules of lower priority rewrite the command first) listed, and
the special-use synthesis annotates and filters it (a STATUS goes with its LIST line).
With an upstream that has LIST-EXTENDED but not LIST-STATUS, the LIST is sent with the
client's selection and other return options, less STATUS. Selection options for an
upstream without LIST-EXTENDED (not advertised by this rule) go upstream unchanged.
A `* LIST` whose name comes as a literal reaches the client directly, without STATUS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imap_proxy.quirks.actions.base import (
    Action,
    Emulate,
    EmulationAnswer,
    LocalAnswer,
    Rewrite,
    Script,
    StepResult,
    UpstreamCommand,
)
from imap_proxy.quirks.actions.mailboxes import _with_attributes
from imap_proxy.quirks.model import ListStatusAction
from imap_proxy.wire.command import Command
from imap_proxy.wire.encode import encode_response, mailbox_value
from imap_proxy.wire.errors import ProtocolError
from imap_proxy.wire.message import Message
from imap_proxy.wire.response import ListData, StatusData, parse_response
from imap_proxy.wire.syntax import Atom, LiteralString, Nil, ParenList, Quoted, Value, is_atom

if TYPE_CHECKING:
    from imap_proxy.quirks.engine import SessionView

_BAD_RETURN = b"BAD Invalid arguments: RETURN takes a list of options"
_RETURN_OPTIONS = frozenset({b"STATUS", b"SUBSCRIBED", b"CHILDREN", b"SPECIAL-USE"})
_STATUS_ITEMS = frozenset(
    {
        b"MESSAGES",
        b"RECENT",
        b"UIDNEXT",
        b"UIDVALIDITY",
        b"UNSEEN",
        b"HIGHESTMODSEQ",
        b"SIZE",
        b"DELETED",
        b"APPENDLIMIT",
        b"MAILBOXID",
    }
)
_RFC3501_ITEMS = frozenset({b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN"})
_NOT_SELECTABLE = frozenset({"\\noselect", "\\nonexistent"})


class EmulateListStatus(Action):
    shared = True  # configuration only
    kind = "emulate_list_status"
    commands = frozenset({"LIST"})

    def __init__(self, rule_id: str, spec: ListStatusAction) -> None:
        super().__init__(rule_id)
        self.max_status = spec.max_status

    def active(self, view: SessionView) -> bool:
        """After login only: servers list only part of their capabilities before."""
        return view.authenticated and not view.has_upstream("LIST-STATUS")

    def capabilities(self, caps: list[str], view: SessionView) -> list[str]:
        if not self.active(view) or any(cap.upper() == "LIST-STATUS" for cap in caps):
            return caps
        return [*caps, "LIST-STATUS"]

    def wants_command_line(self, line: bytes) -> bool:
        # RETURN may follow a literal (a pattern sent as one): then the line ends with it.
        return b"RETURN" in line.upper() or line.endswith(b"}\r\n")

    def on_command(
        self, command: Command, view: SessionView
    ) -> Rewrite | LocalAnswer | Emulate | None:
        if not view.authenticated:
            return None
        args = list(command.args)
        at = next((i for i, arg in enumerate(args) if is_atom(arg, b"RETURN")), None)
        if at is None or at == 0:
            return None
        if at != len(args) - 2 or not isinstance(args[at + 1], ParenList):
            return LocalAnswer(b"", _BAD_RETURN)
        returned = args[at + 1]
        assert isinstance(returned, ParenList)
        options = _return_options(returned)
        if options is None:
            return LocalAnswer(b"", _BAD_RETURN)
        items, others = options
        if not returned.items and not view.has_upstream("LIST-EXTENDED"):
            # `RETURN ()` asks for nothing: a plain LIST (what a rule left of the options).
            return Rewrite(Command(command.tag, command.name, tuple(args[:at])))
        if items is None and not others & {b"SUBSCRIBED", b"CHILDREN"}:
            return None  # RETURN (SPECIAL-USE) alone: the special-use rule's, or upstream's
        selection = args[0] if isinstance(args[0], ParenList) else None
        names = args[1 if selection is not None else 0 : at]
        if len(names) != 2 or not all(_is_name(value) for value in names[:1]):
            return None  # not a LIST the proxy understands: the upstream answers it
        reference, patterns = names[0], names[1]
        pattern_list = patterns.items if isinstance(patterns, ParenList) else (patterns,)
        if not pattern_list or not all(_is_name(value) for value in pattern_list):
            return None
        extended = view.has_upstream("LIST-EXTENDED")
        if extended:
            if items is None or view.has_upstream("LIST-STATUS"):
                return None  # the upstream does all of it
            kept = [option for option in returned.items if option not in items.source]
            list_args: list[Value] = list(args[:at])
            if kept:
                list_args += [Atom(b"RETURN"), ParenList(tuple(kept))]
            lists = [UpstreamCommand("LIST", tuple(list_args))]
            subscribed: list[UpstreamCommand] = []
        else:
            if items is not None and view.has_upstream("LIST-STATUS"):
                return None
            if selection is not None:
                return None  # selection options need LIST-EXTENDED (not advertised)
            lists = [UpstreamCommand("LIST", (reference, pattern)) for pattern in pattern_list]
            subscribed = (
                [UpstreamCommand("LSUB", (reference, pattern)) for pattern in pattern_list]
                if b"SUBSCRIBED" in others
                else []
            )
        status_items = items.items.items if items is not None else None
        script = list_status_script(lists, subscribed, status_items, self.max_status)
        return Emulate(script, self.rule_id, "list_status", replies=True)


class _StatusItems:
    """The `(MESSAGES UNSEEN)` of `STATUS (MESSAGES UNSEEN)`, and the option values."""

    def __init__(self, items: ParenList, source: tuple[Value, ...]) -> None:
        self.items = items
        self.source = source


def _return_options(returned: ParenList) -> tuple[_StatusItems | None, set[bytes]] | None:
    """(the STATUS items, the other options' names), or None when they are malformed or
    unknown (RFC 5258 §3: BAD for options the server does not recognize)."""
    items: _StatusItems | None = None
    others: set[bytes] = set()
    values = returned.items
    index = 0
    while index < len(values):
        option = values[index]
        if not isinstance(option, Atom) or option.value.upper() not in _RETURN_OPTIONS:
            return None
        name = option.value.upper()
        if name == b"STATUS":
            if items is not None or index + 1 >= len(values):
                return None
            wanted = values[index + 1]
            if not isinstance(wanted, ParenList) or not wanted.items:
                return None
            for item in wanted.items:
                if not isinstance(item, Atom) or item.value.upper() not in _STATUS_ITEMS:
                    return None
            items = _StatusItems(wanted, (option, wanted))
            index += 2
            continue
        others.add(name)
        index += 1
    return items, others


def _is_name(value: Value) -> bool:
    if isinstance(value, LiteralString):
        return value.value is not None
    return isinstance(value, Atom | Quoted | Nil)


def _parsed(line: bytes) -> ListData | StatusData | None:
    try:
        response = parse_response(Message.from_line(line))
    except ProtocolError:
        return None
    return response if isinstance(response, ListData | StatusData) else None


def _relayed_status(result: StepResult) -> bytes:
    status = result.status.encode() if result.status in ("NO", "BAD") else b"NO"
    return status + b" " + (result.text or b"LIST failed")


def _item(value: Value) -> bytes:
    return value.value.upper() if isinstance(value, Atom) else b""


def _status_of(result: StepResult, name: bytes, statuses: dict[bytes, bytes]) -> bytes:
    """Keep the `* STATUS` line of `name`; the other untagged lines, to pass on."""
    passed = bytearray()
    for line in result.untagged:
        data = _parsed(line)
        if isinstance(data, StatusData) and data.mailbox == name:
            statuses[name] = line
        else:
            passed += line
    return bytes(passed)


def list_status_script(
    lists: list[UpstreamCommand],
    lsubs: list[UpstreamCommand],
    items: tuple[Value, ...] | None,
    max_status: int,
) -> Script:
    """The upstream commands of one LIST ... RETURN (STATUS ...); see the module docstring."""
    out = bytearray()  # untagged lines that are not ours: the client's
    listed: dict[bytes, tuple[bytes, ListData]] = {}  # name -> (line, data), in LIST order
    for command in lists:
        result = yield command
        for line in result.untagged:
            data = _parsed(line)
            if isinstance(data, ListData) and data.kind == "LIST":
                listed.setdefault(data.mailbox, (line, data))
            else:
                out += line
        if result.status != "OK":
            return EmulationAnswer(bytes(out), _relayed_status(result), "failed")
    subscribed: set[bytes] = set()
    for command in lsubs:
        result = yield command
        for line in result.untagged:
            data = _parsed(line)
            if isinstance(data, ListData) and data.kind == "LSUB":
                subscribed.add(data.mailbox)
            else:
                out += line
        if result.status != "OK":
            return EmulationAnswer(bytes(out), _relayed_status(result), "failed")
    statuses: dict[bytes, bytes] = {}
    left_out = 0
    asked = 0
    if items is not None:
        wanted = ParenList(items)
        for name, (_line, data) in listed.items():
            if {attribute.lower() for attribute in data.attributes} & _NOT_SELECTABLE:
                continue
            if asked >= max_status:
                left_out += 1
                continue
            asked += 1
            result = yield UpstreamCommand("STATUS", (mailbox_value(name), wanted))
            out += _status_of(result, name, statuses)
            basic = ParenList(tuple(i for i in wanted.items if _item(i) in _RFC3501_ITEMS))
            if result.status == "BAD" and basic.items and basic != wanted:
                # Items of an extension the upstream lacks (HIGHESTMODSEQ without
                # CONDSTORE: iOS asks regardless): the RFC 3501 ones are still answered.
                wanted = basic
                result = yield UpstreamCommand("STATUS", (mailbox_value(name), wanted))
                out += _status_of(result, name, statuses)
            if result.status == "BAD":
                return EmulationAnswer(bytes(out), _relayed_status(result), "failed")
    for name, (line, data) in listed.items():
        marked = _with_attributes(data, ["\\Subscribed"]) if name in subscribed else None
        shown = line if marked is None else encode_response(marked).to_bytes()
        out += shown + statuses.get(name, b"")
    if left_out:
        text = b"OK LIST completed; STATUS left out for %d mailboxes (limit %d)" % (
            left_out,
            max_status,
        )
        return EmulationAnswer(bytes(out), text, "limited")
    return EmulationAnswer(bytes(out), b"OK LIST completed", "ok")
