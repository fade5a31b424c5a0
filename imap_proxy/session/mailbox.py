"""The selected mailbox as the client sees it, for rules that need message numbers.

How this works: a `MailboxState` exists only when an active rule asks for one (the
stub-FETCH action builds it), so sessions without such a rule pay nothing. It is fed
what passes through, never bodies:

* the client's SELECT/EXAMINE (a new, empty map) and CLOSE/UNSELECT;
* `* n EXISTS` (the message count) and `* n EXPUNGE` (the count drops and the numbers
  above n shift down), as the client receives them, and QRESYNC's `* VANISHED uids`
  (exact when the UIDs were learnt; otherwise the state says it is no longer `reliable`);
* the first line of every untagged FETCH (`fetch_first_line`): its message number, and
  its UID when the line carries one before any literal.

From that it keeps a sequence-number -> UID map (`array('I')`, 4 bytes a message, 0 for
"not learnt yet") and a queue of untagged EXPUNGE lines held back while a FETCH, STORE or
SEARCH runs (RFC 9051 §7.5.1 forbids sending them then); `release_expunges()` gives
them back, in order, and applies them to the map.

`FetchWatch` follows one FETCH of the client (by number, or UID FETCH) from its command
to its tagged completion: which numbers got a FETCH response (a bitmap over the message
count), and the upstream's own stub lines (`looks_expunged`: Dovecot answers an expunged
message's body as NIL, its size as 0, its date as the epoch), held back until the tagged
line says whether they are stubs (`[EXPUNGEISSUED]`) or real data.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, cast

from imap_proxy.wire.command import FetchRequest
from imap_proxy.wire.errors import ProtocolError
from imap_proxy.wire.message import Message
from imap_proxy.wire.response import FetchData, parse_response
from imap_proxy.wire.syntax import (
    Atom,
    Nil,
    ParenList,
    Quoted,
    SequenceSet,
    Value,
    split_section,
)

MAX_MESSAGES: Final = 10_000_000  # a count beyond this is not believed (memory bound)
MAX_HELD_LINES: Final = 100_000  # held EXPUNGE or stub lines per command, then pass on
# The number, and the part of the line before any quoted string or literal: UID is taken
# only from there, as an item name (so a subject reading "UID 5" is never taken for one).
_FETCH_HEAD: Final = re.compile(rb'\* (\d{1,10}) FETCH \(([^"{\r\n]*)')
_UID_ITEM: Final = re.compile(rb"(?:^|[( ])UID (\d{1,10})(?=[ )]|$)")
# The same over a whole run, searched in b"\n" + run: a pattern that opens with a literal
# is scanned for it in C, where `^` in MULTILINE mode tries every position (6x slower).
# The optional group is the first _UID_ITEM within the head: tried first where it stands
# in the usual answers (first; or after FLAGS and MODSEQ, whose flags hold no "UID "),
# then by the general lazy scan (a lookbehind for `^|[( ]`), which costs 2x per line.
_RUN_NUMBERS: Final = re.compile(rb"\n\* (\d{1,10}) FETCH \(")
_UID_END: Final = rb'(?=[ )"{\r\n]|\Z)'
_RUN_HEADS: Final = re.compile(
    rb"\n\* (\d{1,10}) FETCH \((?:"
    rb'(?:FLAGS \([^()"{\r\nU]*(?:U(?!ID )[^()"{\r\nU]*)*\) )?(?:MODSEQ \(\d{1,20}\) )?'
    rb"UID (\d{1,10})" + _UID_END + rb'|[^"{\r\n]*?(?<=[( ])UID (\d{1,10})' + _UID_END + rb")?"
)
# What an upstream's own stub for an expunged message looks like (Dovecot 2.3): a body
# item that is NIL, a zero size, an all-NIL envelope, the epoch. Lines without any of
# these are never parsed (an ENVELOPE line has NILs, but not ten in a row).
_STUB_SIGNS: Final = re.compile(
    rb"(?:\]|<\d+>|RFC822|RFC822\.HEADER|RFC822\.TEXT) NIL[ )]|RFC822\.SIZE 0[ )]"
    rb'|ENVELOPE \(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL\)|"01-Jan-1970 00:00:00 \+0000"'
)
_STRING_ITEMS: Final = frozenset({b"BODY", b"BINARY", b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT"})
_EPOCH: Final = b"01-Jan-1970 00:00:00 +0000"
# A literal part of each of the signs, for a first look in C: one regex alternation over
# a run of envelopes costs ten times as much as these substring searches.
_STUB_SIGN_PARTS: Final = (
    b"] NIL",
    b"> NIL",
    b"RFC822 NIL",
    b"RFC822.HEADER NIL",
    b"RFC822.TEXT NIL",
    b"RFC822.SIZE 0",
    b"ENVELOPE (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)",
    b'"' + _EPOCH + b'"',
)


def fetch_first_line(line: bytes) -> tuple[int, int | None] | None:
    """(message number, UID or None) of an untagged FETCH's first line; None if it is
    not one."""
    head = _FETCH_HEAD.match(line)
    if head is None:
        return None
    found = _UID_ITEM.search(head.group(2))
    return int(head.group(1)), None if found is None else int(found.group(1))


def fetch_run_heads(run: bytes) -> tuple[list[int], list[int | None]]:
    """`fetch_first_line` of every line of a run of one-line FETCH responses, in order,
    as two lists: the message numbers, and the UIDs (None where a line names none)."""
    run = b"\n" + run  # a copy, much cheaper than the scan it saves
    if b"UID " not in run:  # no line names its UID: the numbers alone, in one pass
        numbers = list(map(int, _RUN_NUMBERS.findall(run)))
        return numbers, [None] * len(numbers)
    found: list[tuple[bytes, bytes, bytes]] = _RUN_HEADS.findall(run)
    number_texts = [number for number, _, _ in found]
    uid_texts = [usual or elsewhere for _, usual, elsewhere in found]
    uids: list[int | None] = (
        list(map(int, uid_texts))
        if b"" not in uid_texts
        else [int(uid) if uid else None for uid in uid_texts]
    )
    return list(map(int, number_texts)), uids


def in_order(numbers: list[int]) -> bool:
    """Whether `numbers` is first, first + 1, …, last (as a `1:*` answer is)."""
    return (
        bool(numbers)
        and numbers[-1] - numbers[0] == len(numbers) - 1  # most others fail here, cheaply
        and numbers == list(range(numbers[0], numbers[-1] + 1))
    )


def looks_like_stub(data: bytes) -> bool:
    """Whether any FETCH line in `data` has one of the signs `looks_expunged` checks
    further (a cheap search, for many lines at once: plain substring tests first, since
    every sign holds one of them, `_STUB_SIGN_PARTS`)."""
    if not any(part in data for part in _STUB_SIGN_PARTS):
        return False
    return _STUB_SIGNS.search(data) is not None


def looks_expunged(line: bytes) -> bool:
    """True for a one-line FETCH response that has the look of an upstream's own stub for
    an expunged message: a body item that is NIL, RFC822.SIZE 0, an all-NIL ENVELOPE or
    the epoch as INTERNALDATE (Dovecot's 4.1.3 answer). Real data never has the first;
    the others are confirmed by the tagged `[EXPUNGEISSUED]` before anything is changed."""
    if not looks_like_stub(line):
        return False
    try:
        response = parse_response(Message.from_line(line))
    except ProtocolError:
        return False
    if not isinstance(response, FetchData):
        return False
    for name, value in response.items:
        base = split_section(name.encode("ascii")).name
        if base in _STRING_ITEMS and isinstance(value, Nil):
            return True
        if name == "RFC822.SIZE" and value == Atom(b"0"):
            return True
        if name == "INTERNALDATE" and value == Quoted(_EPOCH):
            return True
        if _all_nil_envelope(name, value):
            return True
    return False


def _all_nil_envelope(name: str, value: Value) -> bool:
    if name != "ENVELOPE" or not isinstance(value, ParenList):
        return False
    return all(isinstance(item, Nil) for item in value.items)


class MailboxState:
    """See the module docstring. Numbers are the client's (what it has been told)."""

    def __init__(self) -> None:
        self.selected: bytes | None = None
        self._uids: array[int] = array("I")
        self.held_expunges: list[bytes] = []
        self.expunges_delivered = 0  # EXPUNGE responses the client got so far
        # False once the client's numbers can no longer be followed (a VANISHED naming a
        # UID never learnt): rules must then not speak for message numbers until the
        # next SELECT.
        self.reliable = True

    @property
    def exists(self) -> int:
        return len(self._uids)

    def select(self, mailbox: bytes | None) -> None:
        """A SELECT/EXAMINE starts (the old map is void), or (None) the mailbox closes."""
        self.selected = mailbox
        self._uids = array("I")
        self.held_expunges.clear()
        self.reliable = True

    def exists_now(self, count: int) -> None:
        count = min(count, MAX_MESSAGES)
        if count > len(self._uids):
            self._uids.frombytes(bytes(self._uids.itemsize * (count - len(self._uids))))
        elif count < len(self._uids):
            del self._uids[count:]  # only a broken server shrinks by EXISTS

    def expunged(self, number: int) -> None:
        """`* number EXPUNGE` reached the client."""
        if 1 <= number <= len(self._uids):
            del self._uids[number - 1]
        self.expunges_delivered += 1

    def vanished(self, uids: SequenceSet) -> None:
        """`* VANISHED uids` (RFC 7162, not EARLIER) reached the client: those messages
        are gone and the count drops by as many. Exact when every UID of the mailbox
        was learnt (UIDs of the set not among them never existed), or when every UID of
        the set was found; otherwise the numbers are no longer known (`reliable`)."""
        complete = 0 not in self._uids
        count = sum(high - low + 1 for low, high in uids.bounds(0))
        positions = [index for index, uid in enumerate(self._uids) if uid and uids.contains(uid, 0)]
        for index in reversed(positions):
            del self._uids[index]
        if not complete and len(positions) != count:
            self.reliable = False
            del self._uids[max(0, len(self._uids) - (count - len(positions))) :]
        self.expunges_delivered += 1

    def learn(self, number: int, uid: int | None) -> None:
        if uid is None or number < 1:
            return
        if number > len(self._uids):
            self.exists_now(number)  # a FETCH names a message: it exists
        if number <= len(self._uids) and 0 < uid < 2**32:
            self._uids[number - 1] = uid

    def learn_all(
        self, numbers: list[int], uids: list[int | None], ordered: bool | None = None
    ) -> None:
        """`learn` each number's UID (`fetch_run_heads`' lists; `ordered`: `in_order(numbers)`
        if the caller knows it). The usual run, every message of a range in order, each
        with a valid UID, is stored in one slice."""
        known = self._uids  # exists_now grows and shrinks this same array in place
        if (in_order(numbers) if ordered is None else ordered) and None not in uids:
            every = cast(list[int], uids)
            if (
                numbers[0] >= 1
                and numbers[-1] <= len(known)
                and 0 < min(every) <= max(every) < 2**32
            ):
                known[numbers[0] - 1 : numbers[-1]] = array("I", every)
                return
        learn = self.learn
        for number, uid in zip(numbers, uids, strict=True):
            learn(number, uid)

    def uid(self, number: int) -> int | None:
        if 1 <= number <= len(self._uids):
            return self._uids[number - 1] or None
        return None

    def hold_expunge(self, line: bytes) -> bool:
        """Queue an EXPUNGE line; False (send it now) when the queue is full."""
        if len(self.held_expunges) >= MAX_HELD_LINES:
            return False
        self.held_expunges.append(line)
        return True

    def release_expunges(self) -> bytes:
        out = b"".join(self.held_expunges)
        for line in self.held_expunges:
            self.expunged(int(line.split(b" ", 2)[1]))
        self.held_expunges.clear()
        return out


def _bits(low: int, high: int, base: int) -> int:
    """A mask of the bits for messages low..high in a bitmap span starting at `base`."""
    return ((1 << (high - low + 1)) - 1) << (low - base)


@dataclass(slots=True)
class FetchWatch:
    """One client FETCH (by message number, or UID FETCH), from command to completion."""

    tag: bytes
    request: FetchRequest
    largest: int  # the message count when the command started (for `*`)
    answered: bytearray = field(default_factory=bytearray)  # bitmap over 1..largest
    held: dict[int, bytes] = field(default_factory=dict)  # number -> upstream stub line
    dropped: int = 0  # held lines voided by an EXPUNGE of their message
    _starts: list[int] = field(default_factory=list)  # merged requested ranges
    _ends: list[int] = field(default_factory=list)
    _wanted: int = 0  # requested numbers within the count
    _got: int = 0  # of those, answered

    def __post_init__(self) -> None:
        self.answered = bytearray((self.largest + 8) // 8)
        largest = 2**32 - 1 if self.request.uid else self.largest
        for low, high in sorted(self.request.messages.bounds(largest)):
            if self._ends and low <= self._ends[-1] + 1:
                self._ends[-1] = max(self._ends[-1], high)
            else:
                self._starts.append(low)
                self._ends.append(high)
        if not self.request.uid:
            self._wanted = sum(
                max(0, min(end, self.largest) - start + 1)
                for start, end in zip(self._starts, self._ends, strict=True)
            )

    def _requested(self, number: int) -> bool:
        index = bisect_right(self._starts, number) - 1
        return index >= 0 and number <= self._ends[index]

    def saw(self, number: int) -> None:
        self._saw_each((number,))

    def saw_all(self, numbers: list[int], ordered: bool | None = None) -> None:
        """`saw` each of `numbers` (a run of FETCH responses; `ordered` as for `learn_all`).
        A run that answers every message of a range in order (`1:*`) is marked with
        integer masks over the bitmap (bit n of the little-endian bitmap is message n),
        not number by number."""
        if not (in_order(numbers) if ordered is None else ordered):
            self._saw_each(numbers)
            return
        low, high = max(numbers[0], 1), min(numbers[-1], self.largest)
        if low > high:
            return
        first_byte, last_byte = low >> 3, high >> 3
        base = first_byte << 3  # the message number of the span's bit 0
        span = int.from_bytes(self.answered[first_byte : last_byte + 1], "little")
        new = _bits(low, high, base) & ~span
        self.answered[first_byte : last_byte + 1] = (span | new).to_bytes(
            last_byte - first_byte + 1, "little"
        )
        for start, end in zip(self._starts, self._ends, strict=True):
            if start <= high and end >= low:
                self._got += (new & _bits(max(start, low), min(end, high), base)).bit_count()

    def _saw_each(self, numbers: Iterable[int]) -> None:
        answered, largest = self.answered, self.largest
        # One requested range (the usual `1:*`, `5:20`): bounds compared, not searched.
        low, high = (self._starts[0], self._ends[0]) if len(self._starts) == 1 else (0, -1)
        got = 0
        for number in numbers:
            if 1 <= number <= largest:
                byte, bit = number >> 3, 1 << (number & 7)
                if not answered[byte] & bit:
                    answered[byte] |= bit
                    got += low <= number <= high or (high < 0 and self._requested(number))
        self._got += got

    def was_answered(self, number: int) -> bool:
        return 1 <= number <= self.largest and bool(self.answered[number >> 3] & 1 << (number & 7))

    def missing(self) -> list[int]:
        """Requested numbers (within the count) that got no FETCH response at all. A
        fetch modifier (CHANGEDSINCE) leaves messages out on purpose: none then."""
        if self.request.uid or self.request.modifiers or self._got >= self._wanted:
            return []
        return [
            number
            for start, end in zip(self._starts, self._ends, strict=True)
            for number in range(start, min(end, self.largest) + 1)
            if not self.was_answered(number)
        ]

    def covers(self, number: int, uid: int | None) -> bool:
        """Whether a FETCH response for this message answers this command."""
        if self.request.uid:
            return uid is not None and self._requested(uid)
        return self._requested(number)

    def expunged(self, number: int) -> None:
        """An EXPUNGE reached the client (allowed during UID FETCH): the held line of
        that message is void, and those of higher numbers move down by one."""
        moved: dict[int, bytes] = {}
        self.dropped += number in self.held
        for held_number, line in self.held.items():
            if held_number < number:
                moved[held_number] = line
            elif held_number > number:
                rest = line.split(b" ", 2)[2]
                moved[held_number - 1] = b"* %d " % (held_number - 1) + rest
        self.held = moved

    def hold(self, number: int, line: bytes) -> bool:
        if len(self.held) >= MAX_HELD_LINES:
            return False
        self.held[number] = line
        return True
