"""A complete framed message, as the parser sees it.

How this works: the framer yields a message piece by piece (lines, literal chunks). Whoever
needs to parse a whole message collects it into a `Message`: its raw lines (terminators
and literal announcements included) and, between them, the literal octets. A literal too
large to keep (a message body being streamed) is recorded as None and parses as a string
whose value is unknown; everything else about the message can still be parsed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Message:
    """`literals[i]` follows `lines[i]`; there is one literal fewer than there are lines."""

    lines: tuple[bytes, ...]
    literals: tuple[bytes | None, ...] = ()

    @classmethod
    def from_line(cls, line: bytes) -> Message:
        return cls((line,), ())

    @property
    def first_line(self) -> bytes:
        return self.lines[0]

    def to_bytes(self) -> bytes:
        """The original bytes (only when every literal was kept)."""
        out = bytearray()
        for index, line in enumerate(self.lines):
            out += line
            if index < len(self.literals):
                literal = self.literals[index]
                if literal is None:
                    raise ValueError("a literal of this message was not kept")
                out += literal
        return bytes(out)
