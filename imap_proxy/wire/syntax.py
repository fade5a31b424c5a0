"""Value types of the IMAP grammar, shared by commands, responses and the encoder.

How this works: the lexer (`imap_proxy.wire.lexer`) turns the body of a framed message into
a tuple of `Value`s, one frozen dataclass per grammar element:

* `Atom` - any bare token: keywords, numbers, sequence sets (`1:5,7,*`), flags (`\\Seen`),
  LIST wildcards (`%`), base64 SASL data. A fetch attribute or item with a section is ONE
  atom whose value contains the bracketed part verbatim, spaces included:
  `BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>` is
  `Atom(b"BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>")`.
  `split_section()` takes such an atom apart when a rule needs the pieces.
* `Quoted` - a quoted string, unescaped.
* `LiteralString` - a `{n}` / `~{n}` literal; `value` is None when the framer did not keep
  the octets (a streamed message body): it is still a string, of unknown content.
* `Nil` - the atom NIL (any case). Where the grammar wants an astring (a mailbox name),
  `mailbox_bytes()` reads NIL back as the name b"NIL".
* `ParenList` - a parenthesised list of values.

Numbers are atoms (`atom_int()` reads them). Helpers read strings regardless of their
encoding: `astring_bytes()` (None for NIL or an unkept literal) and `is_atom()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from imap_proxy.wire.errors import ParseError, Side

# Enough for a 64-bit mod-sequence; longer digit runs are refused before int() sees them.
MAX_NUMBER_DIGITS = 20


@dataclass(frozen=True, slots=True)
class Atom:
    """A bare token (keyword, number, flag, sequence set, fetch attribute with section)."""

    value: bytes


@dataclass(frozen=True, slots=True)
class Quoted:
    """A quoted string; `value` is the unescaped content."""

    value: bytes


@dataclass(frozen=True, slots=True)
class LiteralString:
    """A literal string; `value` None = the octets were streamed through, not kept."""

    value: bytes | None
    binary: bool = False


@dataclass(frozen=True, slots=True)
class Nil:
    """The NIL atom."""


@dataclass(frozen=True, slots=True)
class ParenList:
    """A parenthesised list, e.g. the items of FETCH or the flags of STORE."""

    items: tuple[Value, ...]


Value: TypeAlias = Atom | Quoted | LiteralString | Nil | ParenList

NIL = Nil()


def astring_bytes(value: Value) -> bytes | None:
    """The content of an atom, quoted string or literal; None for NIL, an unkept literal
    or a list."""
    if isinstance(value, Atom | Quoted | LiteralString):
        return value.value
    return None


def mailbox_bytes(value: Value) -> bytes | None:
    """A mailbox name (astring) as the grammar reads it: NIL here is the name b"NIL".

    None for a list or an unkept literal.
    """
    if isinstance(value, Nil):
        return b"NIL"
    return astring_bytes(value)


def is_atom(value: Value, name: bytes) -> bool:
    """True if `value` is the atom `name`, compared case-insensitively (NIL included)."""
    if isinstance(value, Nil):
        return name.upper() == b"NIL"
    return isinstance(value, Atom) and value.value.upper() == name.upper()


def parse_number(data: bytes, side: Side) -> int:
    """A non-negative decimal number, refusing anything but digits (and absurd lengths)."""
    if not data or len(data) > MAX_NUMBER_DIGITS or not data.isdigit():
        raise ParseError(side, f"expected a number, got {data[:40]!r}")
    return int(data)


def atom_int(value: Value, side: Side) -> int:
    """The number an atom holds; ParseError for anything else."""
    if not isinstance(value, Atom):
        raise ParseError(side, "expected a number")
    return parse_number(value.value, side)


def atom_text(value: Value, side: Side) -> str:
    """An atom's value as ASCII text (capabilities, item names, flags)."""
    if not isinstance(value, Atom):
        raise ParseError(side, "expected an atom")
    try:
        return value.value.decode("ascii")
    except UnicodeDecodeError:
        raise ParseError(side, "non-ASCII octets in an atom") from None


@dataclass(frozen=True, slots=True)
class SectionParts:
    """`BODY.PEEK[HEADER.FIELDS (FROM)]<0.100>` as name `BODY.PEEK`, section
    `HEADER.FIELDS (FROM)` and partial `0.100` (section/partial None when absent)."""

    name: bytes
    section: bytes | None
    partial: bytes | None


def split_section(atom: bytes) -> SectionParts:
    """Take a fetch attribute apart; an atom without `[` is all name."""
    open_at = atom.find(b"[")
    if open_at < 0:
        return SectionParts(atom, None, None)
    close_at = atom.rfind(b"]")
    if close_at < open_at:
        return SectionParts(atom, None, None)
    rest = atom[close_at + 1 :]
    partial = rest[1:-1] if rest.startswith(b"<") and rest.endswith(b">") else None
    return SectionParts(atom[:open_at], atom[open_at + 1 : close_at], partial)


def id_params(value: Value, side: Side) -> list[tuple[bytes, bytes | None]] | None:
    """The field/value pairs of an RFC 2971 ID list (command or response); None for NIL."""
    if isinstance(value, Nil):
        return None
    if not isinstance(value, ParenList):
        raise ParseError(side, "ID parameters must be a list or NIL")
    if len(value.items) % 2:
        raise ParseError(side, "ID parameters must come in field/value pairs")
    params: list[tuple[bytes, bytes | None]] = []
    for index in range(0, len(value.items), 2):
        field, field_value = value.items[index], value.items[index + 1]
        name = astring_bytes(field)
        if name is None:
            raise ParseError(side, "an ID field name must be a known string")
        if isinstance(field_value, Nil):
            params.append((name, None))
            continue
        content = astring_bytes(field_value)
        if content is None:
            raise ParseError(side, "an ID value must be a known string or NIL")
        params.append((name, content))
    return params


# --- sequence sets (RFC 9051 sequence-set) ---------------------------------------------

STAR = 0  # `*` in a sequence set: the largest number in use; numbers start at 1
MAX_SET_RANGES = 10_000  # a client's set may be long, but not unbounded


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """`1:5,7,9:*` as ranges (low, high) with `STAR` for `*`; ranges keep their order and
    are normalised so that low <= high unless one of them is `*`."""

    ranges: tuple[tuple[int, int], ...]

    def bounds(self, largest: int) -> list[tuple[int, int]]:
        """The ranges with `*` read as `largest`, each ordered (low, high)."""
        out = []
        for low, high in self.ranges:
            first = largest if low == STAR else low
            last = largest if high == STAR else high
            out.append((min(first, last), max(first, last)))
        return out

    def contains(self, number: int, largest: int) -> bool:
        return any(low <= number <= high for low, high in self.bounds(largest))

    def members(self, largest: int) -> list[int]:
        """Every number of the set up to `largest`, ascending and without repeats."""
        found: set[int] = set()
        for low, high in self.bounds(largest):
            found.update(range(max(low, 1), min(high, largest) + 1))
        return sorted(found)


def _set_number(data: bytes, side: Side) -> int:
    if data == b"*":
        return STAR
    number = parse_number(data, side)
    if number == 0:
        raise ParseError(side, "0 is not a message number")
    return number


def parse_sequence_set(data: bytes, side: Side) -> SequenceSet:
    """A sequence set (`1:5,7,*`); ParseError for anything else (`$` included: SEARCHRES
    references a saved result the proxy cannot resolve)."""
    parts = data.split(b",")
    if len(parts) > MAX_SET_RANGES:
        raise ParseError(side, "sequence set too long")
    ranges = []
    for part in parts:
        low, colon, high = part.partition(b":")
        first = _set_number(low, side)
        last = _set_number(high, side) if colon else first
        if STAR not in (first, last) and first > last:
            first, last = last, first
        ranges.append((first, last))
    return SequenceSet(tuple(ranges))


def encode_sequence_set(numbers: list[int]) -> bytes:
    """Ascending numbers as a compact set: [1, 2, 3, 7] -> b"1:3,7"."""
    parts: list[bytes] = []
    index = 0
    while index < len(numbers):
        start = end = numbers[index]
        while index + 1 < len(numbers) and numbers[index + 1] == end + 1:
            index += 1
            end = numbers[index]
        parts.append(b"%d" % start if start == end else b"%d:%d" % (start, end))
        index += 1
    return b",".join(parts)
