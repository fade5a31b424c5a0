"""Protocol-shape robustness: small rewrites that keep strict parsers on both sides happy.

How this works:
* `IgnoreEmptyLines` (Q24): iOS Mail sometimes sends a bare CRLF before a command; the
  session drops such lines instead of relaying them (the upstream would answer BAD).
* `DropFetchModifier` (Q21): `FETCH ... (CHANGEDSINCE 0)` to an upstream without
  CONDSTORE is a BAD; CHANGEDSINCE 0 asks for every message anyway, so it is removed.
* `UntaggedStatusText` (Q23): `* OK [code]` with no text gets one (`* OK [code] ok`).
* `EmptyPartialFetch` (Q25): `BODY[]<5000> NIL` for an offset past the end becomes
  `BODY[]<5000> ""` (RFC 3501 §6.4.5: the partial is then empty).
* `NormalizeBodyStructure` (Q22): BODYSTRUCTURE and ENVELOPE data are walked by the
  RFC 3501 grammar and repaired where an upstream put NIL for a string (parameter
  values, type, subtype, encoding), `()` for NIL (parameters, disposition, language,
  address lists) or a negative number (size, lines). Only FETCH lines that carry one of
  those items are parsed; body literals are never held for it (the session holds at most
  `capture_literal_max` octets, and only when the first line names the item).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from imap_proxy.quirks.actions.base import Action, LocalAnswer, Rewrite
from imap_proxy.quirks.model import (
    DropFetchModifierAction,
    EmptyPartialFetchAction,
    IgnoreEmptyLinesAction,
    NormalizeBodyStructureAction,
    UntaggedStatusTextAction,
)
from imap_proxy.wire.command import Command
from imap_proxy.wire.response import FetchData, Response, StatusResponse
from imap_proxy.wire.syntax import Atom, Nil, ParenList, Quoted, Value, split_section

if TYPE_CHECKING:
    from imap_proxy.quirks.engine import SessionView


class IgnoreEmptyLines(Action):
    shared = True  # configuration only
    kind = "ignore_empty_lines"
    ignores_empty_lines = True

    def __init__(self, rule_id: str, spec: IgnoreEmptyLinesAction) -> None:
        super().__init__(rule_id)


class DropFetchModifier(Action):
    shared = True  # configuration only
    kind = "drop_fetch_modifier"
    commands = frozenset({"FETCH", "UID FETCH"})

    def __init__(self, rule_id: str, spec: DropFetchModifierAction) -> None:
        super().__init__(rule_id)
        self.modifier = spec.modifier.upper().encode()
        self.values = {value.encode() for value in spec.values}

    def wants_command_line(self, line: bytes) -> bool:
        # Every FETCH would otherwise be held and parsed; only those naming the modifier.
        return self.modifier in line.upper()

    def on_command(self, command: Command, view: SessionView) -> Rewrite | LocalAnswer | None:
        # FETCH sequence-set items [modifiers]: modifiers are a third list argument.
        if len(command.args) != 3 or not isinstance(command.args[2], ParenList):
            return None
        items = command.args[2].items
        kept: list[Value] = []
        index = 0
        while index < len(items):
            name = items[index]
            value = items[index + 1] if index + 1 < len(items) else None
            if (
                isinstance(name, Atom)
                and name.value.upper() == self.modifier
                and isinstance(value, Atom)
                and value.value in self.values
            ):
                index += 2
                continue
            kept.append(name)
            index += 1
        if len(kept) == len(items):
            return None
        args = command.args[:2] + ((ParenList(tuple(kept)),) if kept else ())
        return Rewrite(Command(command.tag, command.name, args))


class UntaggedStatusText(Action):
    shared = True  # configuration only
    kind = "untagged_status_text"

    def __init__(self, rule_id: str, spec: UntaggedStatusTextAction) -> None:
        super().__init__(rule_id)
        self.text = spec.text.encode()
        self.responses = frozenset(spec.statuses)

    def wants_line(self, kind: str, line: bytes) -> bool:
        # Only a line with nothing after its response code (or after the status word).
        body = line.rstrip(b"\r\n")
        return body.endswith(b"]") or body[2:].strip().upper() == kind.encode()

    def on_response(self, response: Response, view: SessionView) -> Response | None:
        if not isinstance(response, StatusResponse) or response.tag is not None:
            return None
        if response.text.strip():
            return None
        return StatusResponse(None, response.status, response.code, self.text)


_PARTIAL_NIL = re.compile(rb"\]<\d+> NIL\b", re.IGNORECASE)


class EmptyPartialFetch(Action):
    shared = True  # configuration only
    kind = "empty_partial_fetch"
    responses = frozenset({"FETCH"})

    def __init__(self, rule_id: str, spec: EmptyPartialFetchAction) -> None:
        super().__init__(rule_id)

    def wants_line(self, kind: str, line: bytes) -> bool:
        return _PARTIAL_NIL.search(line) is not None

    def on_response(self, response: Response, view: SessionView) -> Response | None:
        if not isinstance(response, FetchData):
            return None
        items: list[tuple[str, Value]] = []
        for name, value in response.items:
            parts = split_section(name.encode("ascii", "replace"))
            empty = parts.section is not None and parts.partial is not None
            items.append((name, Quoted(b"") if empty and isinstance(value, Nil) else value))
        return FetchData(response.number, tuple(items))


_STRUCTURE_ITEMS = (b"BODYSTRUCTURE", b"ENVELOPE", b"BODY (")


class NormalizeBodyStructure(Action):
    shared = True  # configuration only
    kind = "normalize_body_structure"
    responses = frozenset({"FETCH"})

    def __init__(self, rule_id: str, spec: NormalizeBodyStructureAction) -> None:
        super().__init__(rule_id)
        self.encoding = spec.default_encoding.encode()

    def wants_line(self, kind: str, line: bytes) -> bool:
        upper = line.upper()
        return any(item in upper for item in _STRUCTURE_ITEMS)

    def on_response(self, response: Response, view: SessionView) -> Response | None:
        if not isinstance(response, FetchData):
            return None
        items: list[tuple[str, Value]] = []
        for name, value in response.items:
            if name in ("BODYSTRUCTURE", "BODY") and isinstance(value, ParenList):
                items.append((name, self.body(value)))
            elif name == "ENVELOPE" and isinstance(value, ParenList):
                items.append((name, envelope(value)))
            else:
                items.append((name, value))
        return FetchData(response.number, tuple(items))

    def body(self, body: ParenList) -> ParenList:
        """One body (RFC 3501 `body`): multipart when it starts with a body."""
        items = list(body.items)
        if items and isinstance(items[0], ParenList):
            return self._multipart(items)
        if len(items) < 7:
            return body  # not a body we can read: leave it to the client
        items[0] = _string_or(items[0], b"APPLICATION")
        items[1] = _string_or(items[1], b"OCTET-STREAM")
        items[2] = _params(items[2])
        items[5] = _string_or(items[5], self.encoding)
        items[6] = _count(items[6])
        media = (_text(items[0]) or b"").upper(), (_text(items[1]) or b"").upper()
        rest = 7
        if media[0] == b"TEXT" and len(items) > 7:
            items[7] = _count(items[7])
            rest = 8
        elif media == (b"MESSAGE", b"RFC822") and len(items) > 9:
            if isinstance(items[7], ParenList):
                items[7] = envelope(items[7])
            if isinstance(items[8], ParenList):
                items[8] = self.body(items[8])
            items[9] = _count(items[9])
            rest = 10
        # extension data: md5, disposition, language, location
        if len(items) > rest + 1:
            items[rest + 1] = _disposition(items[rest + 1])
        if len(items) > rest + 2:
            items[rest + 2] = _empty_to_nil(items[rest + 2])
        return ParenList(tuple(items))

    def _multipart(self, items: list[Value]) -> ParenList:
        index = 0
        while index < len(items) and isinstance(items[index], ParenList):
            part = items[index]
            assert isinstance(part, ParenList)
            items[index] = self.body(part)
            index += 1
        if index < len(items):
            items[index] = _string_or(items[index], b"MIXED")
        # extension data: parameters, disposition, language, location
        if len(items) > index + 1:
            items[index + 1] = _params(items[index + 1])
        if len(items) > index + 2:
            items[index + 2] = _disposition(items[index + 2])
        if len(items) > index + 3:
            items[index + 3] = _empty_to_nil(items[index + 3])
        return ParenList(tuple(items))


def _text(value: Value) -> bytes | None:
    if isinstance(value, Quoted):
        return value.value
    if isinstance(value, Atom):
        return value.value
    return None


def _string_or(value: Value, default: bytes) -> Value:
    return Quoted(default) if isinstance(value, Nil) else value


def _count(value: Value) -> Value:
    if isinstance(value, Atom) and value.value.startswith(b"-"):
        return Atom(b"0")
    if isinstance(value, Nil):
        return Atom(b"0")
    return value


def _empty_to_nil(value: Value) -> Value:
    if isinstance(value, ParenList) and not value.items:
        return Nil()
    return value


def _params(value: Value) -> Value:
    """`body-fld-param`: NIL or a non-empty list of string pairs."""
    if not isinstance(value, ParenList):
        return value
    if not value.items:
        return Nil()
    return ParenList(tuple(Quoted(b"") if isinstance(v, Nil) else v for v in value.items))


def _disposition(value: Value) -> Value:
    """`body-fld-dsp`: NIL or ("type" params)."""
    if not isinstance(value, ParenList):
        return value
    if not value.items:
        return Nil()
    items = list(value.items)
    if len(items) >= 2:
        items[1] = _params(items[1])
    return ParenList(tuple(items))


def envelope(value: ParenList) -> ParenList:
    """ENVELOPE: date subject from sender reply-to to cc bcc in-reply-to message-id; the
    address lists are NIL or non-empty lists."""
    items = list(value.items)
    for index in range(2, min(8, len(items))):
        items[index] = _empty_to_nil(items[index])
    return ParenList(tuple(items))
