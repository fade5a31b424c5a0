"""Server responses: a fast peek at every response line, and a parse into typed data.

How this works: `peek_response()` runs on the first line of every upstream message. It
splits at most three words with `find` (no lexing, no regex) and returns a `ResponseKind`:
continuation, untagged (status word or data kind, with the number of `* 12 FETCH`),
tagged (tag and status), or malformed; plus whether a status response carries a
`[CAPABILITY ...]` code, which the session must rewrite (the capability contract).

`parse_response()` parses a whole framed `Message` into one of the `Response` types. Status
responses (`OK NO BAD BYE PREAUTH`, tagged or not) get their response code parsed into
`ResponseCode(name, args)`: args are lexed values, or the raw bytes between the name and
`]` when they do not lex (codes are extensible). Data responses that rules need are typed
(CAPABILITY, LIST/LSUB/XLIST, STATUS, FETCH, EXISTS/EXPUNGE/RECENT, ID); every other
untagged response is `GenericUntagged(kind, args, number)`. Errors are
`ParseError(Side.UPSTREAM, ...)`. Capability names keep the case the server sent.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from imap_proxy.wire.command import is_valid_tag
from imap_proxy.wire.errors import ParseError, Side
from imap_proxy.wire.lexer import DEFAULT_MAX_DEPTH, Lexer, match_end, strip_terminator
from imap_proxy.wire.message import Message
from imap_proxy.wire.syntax import (
    Nil,
    ParenList,
    Value,
    astring_bytes,
    atom_int,
    atom_text,
    id_params,
    mailbox_bytes,
    parse_number,
)

STATUS_WORDS: Final = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})
TAGGED_STATUS_WORDS: Final = frozenset({"OK", "NO", "BAD"})
NUMBER_KINDS: Final = frozenset({"EXISTS", "EXPUNGE", "RECENT"})
_MAX_WORD: Final = 64
_SIDE: Final = Side.UPSTREAM
_CODE_NAME: Final = re.compile(rb"[^ \]]*")


class ResponseType(enum.Enum):
    CONTINUATION = "continuation"
    UNTAGGED = "untagged"
    TAGGED = "tagged"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class ResponseKind:
    """What `peek_response` saw. `word` is uppercase: the status (OK, NO, ...) or the data
    kind (FETCH, CAPABILITY, ...); empty for a continuation or a malformed line."""

    type: ResponseType
    tag: bytes | None = None
    word: str = ""
    number: int | None = None
    capability_code: bool = False

    @property
    def is_status(self) -> bool:
        return self.word in STATUS_WORDS and self.type is not ResponseType.MALFORMED


_CONTINUATION: Final = ResponseKind(ResponseType.CONTINUATION)
_MALFORMED: Final = ResponseKind(ResponseType.MALFORMED)


def _word(line: bytes, start: int, end: int) -> tuple[str, int] | None:
    """The uppercase word at `start` and the offset after it; None if empty/odd/too long."""
    stop = line.find(b" ", start, end)
    if stop < 0:
        stop = end
    if stop == start or stop - start > _MAX_WORD:
        return None
    raw = line[start:stop]
    if not raw.isascii():
        return None
    return raw.upper().decode("ascii"), stop


def _has_capability_code(line: bytes, after_status: int) -> bool:
    return line[after_status : after_status + 12].upper() == b" [CAPABILITY"


def peek_response(first_line: bytes) -> ResponseKind:
    """Classify a response line cheaply; never raises."""
    if first_line.startswith(b"+"):
        return _CONTINUATION
    end = len(strip_terminator(first_line))
    if first_line.startswith(b"* "):
        first = _word(first_line, 2, end)
        if first is None:
            return _MALFORMED
        word, after = first
        number = None
        if word.isdigit() and len(word) <= 20:
            second = _word(first_line, after + 1, end) if after < end else None
            if second is None:
                return _MALFORMED
            number, (word, after) = int(word), second
        capability = word in STATUS_WORDS and _has_capability_code(first_line, after)
        return ResponseKind(ResponseType.UNTAGGED, None, word, number, capability)
    tag_end = first_line.find(b" ", 0, end)
    if tag_end <= 0 or not is_valid_tag(first_line[:tag_end]):
        return _MALFORMED
    status = _word(first_line, tag_end + 1, end)
    if status is None or status[0] not in TAGGED_STATUS_WORDS:
        return _MALFORMED
    word, after = status
    capability = _has_capability_code(first_line, after)
    return ResponseKind(ResponseType.TAGGED, first_line[:tag_end], word, None, capability)


# --- parsed responses ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Continuation:
    text: bytes


@dataclass(frozen=True, slots=True)
class ResponseCode:
    """`[NAME args]`; args are lexed values, or raw bytes when they do not lex."""

    name: str
    args: tuple[Value, ...] | bytes = ()


@dataclass(frozen=True, slots=True)
class StatusResponse:
    """OK/NO/BAD (tagged or untagged) and BYE/PREAUTH (untagged); tag None = untagged."""

    tag: bytes | None
    status: str
    code: ResponseCode | None
    text: bytes


@dataclass(frozen=True, slots=True)
class CapabilityData:
    capabilities: tuple[str, ...]


ListKind: TypeAlias = Literal["LIST", "LSUB", "XLIST"]
_LIST_KINDS: Final[dict[str, ListKind]] = {"LIST": "LIST", "LSUB": "LSUB", "XLIST": "XLIST"}


@dataclass(frozen=True, slots=True)
class ListData:
    """`* LIST (attributes) delimiter mailbox [extended...]`; the mailbox is raw (mUTF-7)."""

    kind: ListKind
    attributes: tuple[str, ...]
    delimiter: bytes | None
    mailbox: bytes
    extended: tuple[Value, ...] = ()


@dataclass(frozen=True, slots=True)
class StatusData:
    """`* STATUS mailbox (MESSAGES 3 UIDNEXT 7)`; item names uppercase."""

    mailbox: bytes
    items: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class FetchData:
    """`* 12 FETCH (...)`; item names uppercase ("BODY[HEADER]"), values as lexed."""

    number: int
    items: tuple[tuple[str, Value], ...]

    def get(self, name: str) -> Value | None:
        for item_name, value in self.items:
            if item_name == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class NumberData:
    """`* 23 EXISTS`, `* 3 EXPUNGE`, `* 1 RECENT`."""

    number: int
    kind: str


@dataclass(frozen=True, slots=True)
class IdData:
    """`* ID (...)`; params None for `* ID NIL`."""

    params: list[tuple[bytes, bytes | None]] | None


@dataclass(frozen=True, slots=True)
class GenericUntagged:
    """Any other untagged data (SEARCH, FLAGS, ENABLED, NAMESPACE, ...). `number` is set
    for number-led kinds the parser does not know (`* 5 XFOO a` -> number 5)."""

    kind: str
    args: tuple[Value, ...]
    number: int | None = None


Response: TypeAlias = (
    Continuation
    | StatusResponse
    | CapabilityData
    | ListData
    | StatusData
    | FetchData
    | NumberData
    | IdData
    | GenericUntagged
)


def capabilities_in_code(code: ResponseCode | None) -> list[str] | None:
    """The capability names of a `[CAPABILITY ...]` code; None for any other code."""
    if code is None or code.name != "CAPABILITY":
        return None
    if isinstance(code.args, bytes):
        return [word.decode("ascii", "replace") for word in code.args.split()]
    return [atom_text(arg, _SIDE) for arg in code.args]


def parse_response(message: Message, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Response:
    """Parse a whole upstream message; ParseError/LimitExceeded (side UPSTREAM) if not IMAP."""
    lexer = Lexer(message, _SIDE, max_depth=max_depth)
    if lexer.peek() == ord("+"):
        if not lexer.on_last_line:
            raise lexer.error("a continuation request cannot hold a literal")
        lexer.pos += 1
        if lexer.peek() == 0x20:
            lexer.pos += 1
        return Continuation(lexer.rest_of_line())
    raw_tag = lexer.read_word()
    tag: bytes | None = None
    if raw_tag != b"*":
        if not is_valid_tag(raw_tag):
            raise lexer.error("invalid response tag")
        tag = raw_tag
    lexer.expect_space()
    word = lexer.read_word()
    if tag is None and word.isdigit():
        number = parse_number(word, _SIDE)
        lexer.expect_space()
        kind = _upper_word(lexer.read_word(), lexer)
        return _parse_numbered(number, kind, lexer)
    kind = _upper_word(word, lexer)
    if kind in STATUS_WORDS:
        if tag is not None and kind not in TAGGED_STATUS_WORDS:
            raise lexer.error(f"{kind} cannot be tagged")
        return _parse_status(tag, kind, lexer)
    if tag is not None:
        raise lexer.error(f"a tagged response must be OK, NO or BAD, not {kind[:20]}")
    return _parse_untagged(kind, lexer)


def _upper_word(word: bytes, lexer: Lexer) -> str:
    if not word or len(word) > _MAX_WORD or not word.isascii():
        raise lexer.error(f"invalid response word {word[:40]!r}")
    return word.upper().decode("ascii")


def _next_if_space(lexer: Lexer) -> None:
    if not lexer.at_line_end():
        lexer.expect_space()


def _parse_status(tag: bytes | None, status: str, lexer: Lexer) -> StatusResponse:
    if not lexer.on_last_line:
        raise lexer.error("response text cannot hold a literal")
    # Exactly one space: the text keeps any further spaces (it round-trips).
    if lexer.peek() == 0x20:  # read_word stopped at a space or the end of the line
        lexer.pos += 1
    code = None
    if lexer.peek() == ord("["):
        code = _parse_code(lexer)
        if lexer.peek() == 0x20:
            lexer.pos += 1
    return StatusResponse(tag, status, code, lexer.rest_of_line())


def _parse_code(lexer: Lexer) -> ResponseCode:
    lexer.pos += 1  # "["
    line = lexer.line
    name_end = match_end(_CODE_NAME, line, lexer.pos)
    name = _upper_word(line[lexer.pos : name_end], lexer)
    lexer.pos = name_end
    args: tuple[Value, ...] | bytes = ()
    if lexer.peek() == 0x20:
        lexer.pos += 1
        start = lexer.pos
        try:
            args = lexer.read_values(in_code=True)
        except ParseError:
            close = line.find(b"]", start)
            if close < 0:
                raise lexer.error("unterminated response code") from None
            args, lexer.pos = line[start:close], close
    if lexer.peek() != ord("]"):
        raise lexer.error("unterminated response code")
    lexer.pos += 1
    return ResponseCode(name, args)


def _parse_numbered(number: int, kind: str, lexer: Lexer) -> Response:
    _next_if_space(lexer)
    if kind in NUMBER_KINDS:
        lexer.expect_end()
        return NumberData(number, kind)
    args = lexer.read_values()
    if kind != "FETCH":
        return GenericUntagged(kind, args, number)
    if len(args) != 1 or not isinstance(args[0], ParenList):
        raise lexer.error("FETCH data must be one parenthesised list")
    items = args[0].items
    if len(items) % 2:
        raise lexer.error("FETCH items must come in name/value pairs")
    pairs = tuple(
        (atom_text(items[index], _SIDE).upper(), items[index + 1])
        for index in range(0, len(items), 2)
    )
    return FetchData(number, pairs)


def _parse_untagged(kind: str, lexer: Lexer) -> Response:
    _next_if_space(lexer)
    args = lexer.read_values()
    if kind == "CAPABILITY":
        return CapabilityData(tuple(atom_text(arg, _SIDE) for arg in args))
    list_kind = _LIST_KINDS.get(kind)
    if list_kind is not None:
        return _list_data(list_kind, args, lexer)
    if kind == "STATUS":
        return _status_data(args, lexer)
    if kind == "ID":
        if len(args) != 1:
            raise lexer.error("ID data takes one argument")
        return IdData(id_params(args[0], _SIDE))
    return GenericUntagged(kind, args)


def _list_data(kind: ListKind, args: tuple[Value, ...], lexer: Lexer) -> ListData:
    if len(args) < 3 or not isinstance(args[0], ParenList):
        raise lexer.error(f"{kind} needs attributes, a delimiter and a mailbox")
    attributes = tuple(atom_text(flag, _SIDE) for flag in args[0].items)
    delimiter = None if isinstance(args[1], Nil) else astring_bytes(args[1])
    if delimiter is None and not isinstance(args[1], Nil):
        raise lexer.error(f"invalid {kind} delimiter")
    mailbox = mailbox_bytes(args[2])
    if mailbox is None:
        raise lexer.error(f"{kind} mailbox name must be a known string")
    return ListData(kind, attributes, delimiter, mailbox, args[3:])


def _status_data(args: tuple[Value, ...], lexer: Lexer) -> StatusData:
    if len(args) != 2 or not isinstance(args[1], ParenList):
        raise lexer.error("STATUS needs a mailbox and a list of items")
    mailbox = mailbox_bytes(args[0])
    if mailbox is None:
        raise lexer.error("STATUS mailbox name must be a known string")
    items = args[1].items
    if len(items) % 2:
        raise lexer.error("STATUS items must come in name/number pairs")
    pairs = tuple(
        (atom_text(items[index], _SIDE).upper(), atom_int(items[index + 1], _SIDE))
        for index in range(0, len(items), 2)
    )
    return StatusData(mailbox, pairs)
