"""Framing: split one direction of an IMAP byte stream into lines and literal data.

How this works: IMAP messages (commands and responses alike) are lines ending in CRLF,
except that a line may end with a literal announcement (`{n}`, `{n+}`, `{n-}`, `~{n}`);
then exactly n octets of literal data follow and the message continues with another line.
The framer knows nothing else of the grammar. It is fed bytes with `feed()` and yields
events from `next_event()`:

* `LinePart(raw, literal)` - one line, with its original terminator. `literal` is the
  announcement at its end, or None when this line ends the message.
* `LiteralData(data, remaining)` - a chunk of literal octets, streamed as it arrives and
  never buffered whole; `remaining` is how many octets of this literal are still to come.
* `NEED_DATA` - nothing more can be framed until more bytes are fed.

`peek_run(pattern)` and `skip(n)` let a consumer take a whole run of lines at once (many
one-line FETCH responses, say) when it has checked that none needs a look of its own.

The consumer pulls events at its own pace, so it can stop pulling (for backpressure, or
while a synchronizing literal waits for the peer's `+`) and the bytes stay buffered here.
`cancel_literal()` forgets a synchronizing literal the server refused before any of it
was sent; `discard_buffered()` drops what is buffered (plaintext pipelined after STARTTLS).
Limits (line length, literal size) raise `LimitExceeded`, with the side that broke them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from imap_proxy.wire.errors import LimitExceeded, ProtocolError, Side

# `~{123+}` at the very end of a line, before CRLF (or a bare LF, which some clients send).
_ANNOUNCEMENT = re.compile(rb"(~?)\{([0-9]+)([+-]?)\}\r?\n\Z")
_MAX_DIGITS: Final = 20


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """Hard limits for one direction; exceeding one is a protocol error, not a crash."""

    max_line_length: int = 64 * 1024
    max_literal_size: int = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LiteralHeader:
    """A literal announcement at the end of a line.

    `marker` is b"" for a synchronizing literal, b"+" (LITERAL+) or b"-" (LITERAL-) for a
    non-synchronizing one. `start` is the offset in the line where the announcement
    begins (the `~` or `{`), so it can be rewritten without reparsing the line.
    """

    size: int
    marker: bytes
    binary: bool
    start: int

    @property
    def synchronizing(self) -> bool:
        return self.marker == b""


@dataclass(frozen=True, slots=True)
class LinePart:
    """One line as received, terminator included; `literal` is None on a message's last line."""

    raw: bytes
    literal: LiteralHeader | None

    @property
    def ends_message(self) -> bool:
        return self.literal is None


@dataclass(frozen=True, slots=True)
class LiteralData:
    """A chunk of literal octets; `remaining` counts what is still to come after it."""

    data: bytes
    remaining: int


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()

FrameEvent = LinePart | LiteralData | _NeedData


def parse_announcement(line: bytes, side: Side, limits: FrameLimits) -> LiteralHeader | None:
    """The literal announced at the end of `line` (terminator included), if any."""
    if not line.endswith(b"}\r\n") and not line.endswith(b"}\n"):
        return None
    found = _ANNOUNCEMENT.search(line)
    if found is None:
        return None
    digits = found.group(2)
    if len(digits) > _MAX_DIGITS or int(digits) > limits.max_literal_size:
        raise LimitExceeded(
            side,
            "literal_size",
            f"literal of {digits[:_MAX_DIGITS].decode()} octets exceeds the limit of "
            f"{limits.max_literal_size}",
        )
    return LiteralHeader(
        size=int(digits),
        marker=found.group(3),
        binary=found.group(1) == b"~",
        start=found.start(),
    )


class Framer:
    """Frames one direction of a connection; see the module docstring.

    Buffer discipline (every FETCH body passes here): bytes are consumed by moving a read
    offset, and the buffer is compacted only once the consumed part dominates, so a read
    holding thousands of short lines costs linear time. Fed data that lies wholly inside
    a literal bypasses the buffer and is handed on without a copy.
    """

    def __init__(self, side: Side, limits: FrameLimits | None = None) -> None:
        self.side = side
        self.limits = limits or FrameLimits()
        self._buffer = bytearray()
        self._start = 0  # bytes of _buffer before this offset are consumed
        self._scanned = 0  # absolute offset in _buffer up to which no LF was found
        self._direct: bytes = b""  # fed while in a literal with nothing buffered
        self._literal_remaining = 0
        self._literal_started = False
        self._broken: ProtocolError | None = None

    @property
    def in_literal(self) -> bool:
        """True while the octets of an announced literal are expected."""
        return self._literal_remaining > 0

    @property
    def has_input(self) -> bool:
        """Whether `next_event()` may return something other than NEED_DATA (it raises
        once the framer is broken)."""
        return self._broken is not None or self._start < len(self._buffer) or bool(self._direct)

    @property
    def buffered(self) -> int:
        return len(self._buffer) - self._start + len(self._direct)

    def feed(self, data: bytes) -> None:
        if self._direct or self._start < len(self._buffer) or not self._literal_remaining:
            self._absorb_direct()
            self._buffer += data
        else:
            self._direct = data

    def _absorb_direct(self) -> None:
        if self._direct:
            self._buffer += self._direct
            self._direct = b""

    def cancel_literal(self) -> None:
        """Forget an announced synchronizing literal the peer will now never send."""
        if self._literal_started:
            raise ProtocolError(self.side, "cannot cancel a literal that has begun")
        self._literal_remaining = 0

    def discard_buffered(self) -> int:
        """Drop every buffered byte (and any literal state); return how many were dropped."""
        dropped = self.buffered
        self._buffer.clear()
        self._direct = b""
        self._start = self._scanned = 0
        self._literal_remaining = 0
        self._literal_started = False
        return dropped

    def next_event(self) -> FrameEvent:
        if self._broken is not None:
            raise self._broken
        if self._literal_remaining:
            return self._next_literal_chunk()
        self._absorb_direct()
        return self._next_line()

    def peek_run(self, run: re.Pattern[bytes]) -> bytes:
        """The bytes `run` matches at the current position, left buffered (`skip()` them
        once handled), for a consumer that handles many lines at once; b"" when it does
        not match or a literal is under way. `run` must match only whole lines ending in
        CRLF, none announcing a literal; the run is at most `max_line_length` octets, so
        no line in it is longer than a line may be."""
        if self._broken is not None or self._literal_remaining:
            return b""
        self._absorb_direct()
        begin = self._start
        found = run.match(self._buffer, begin, begin + self.limits.max_line_length)
        if found is None:
            return b""
        return bytes(self._buffer[begin : found.end()])

    def skip(self, count: int) -> None:
        """Consume `count` octets that `peek_run` returned."""
        self._consume(count)
        self._scanned = self._start

    def _next_literal_chunk(self) -> FrameEvent:
        if self._start < len(self._buffer):
            take = min(self._literal_remaining, len(self._buffer) - self._start)
            data = bytes(self._buffer[self._start : self._start + take])
            self._consume(take)
        elif self._direct:
            take = min(self._literal_remaining, len(self._direct))
            data = self._direct[:take]  # the whole chunk: no copy
            rest = self._direct[take:]
            self._direct = b""
            if rest:
                self._buffer += rest
        else:
            return NEED_DATA
        self._literal_remaining -= take
        self._literal_started = self._literal_remaining > 0
        return LiteralData(data, self._literal_remaining)

    def _consume(self, count: int) -> None:
        self._start += count
        if self._start >= len(self._buffer):
            self._buffer.clear()
            self._start = self._scanned = 0
        elif self._start > 65536 and self._start * 2 > len(self._buffer):
            del self._buffer[: self._start]
            self._scanned = max(0, self._scanned - self._start)
            self._start = 0

    def _line_too_long(self) -> LimitExceeded:
        self._broken = LimitExceeded(
            self.side, "line_length", f"line longer than {self.limits.max_line_length} octets"
        )
        return self._broken

    def _next_line(self) -> FrameEvent:
        begin = self._start
        end = self._buffer.find(b"\n", max(self._scanned, begin))
        if end < 0:
            self._scanned = len(self._buffer)
            if self._scanned - begin > self.limits.max_line_length:
                raise self._line_too_long()
            return NEED_DATA
        end += 1
        if end - begin > self.limits.max_line_length + 2:
            raise self._line_too_long()
        raw = bytes(self._buffer[begin:end])
        self._consume(end - begin)
        self._scanned = self._start
        try:
            literal = parse_announcement(raw, self.side, self.limits)
        except ProtocolError as error:
            self._broken = error
            raise
        if literal is not None and literal.size:
            self._literal_remaining = literal.size
            self._literal_started = False
        return LinePart(raw, literal)
