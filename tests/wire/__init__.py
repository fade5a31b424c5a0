"""Tests of the sans-IO wire layer; `frame()` turns raw bytes into messages with the real Framer."""

from __future__ import annotations

from imap_proxy.wire.errors import Side
from imap_proxy.wire.framer import NEED_DATA, Framer, LinePart, LiteralData
from imap_proxy.wire.message import Message


def frame(data: bytes, side: Side = Side.UPSTREAM) -> list[Message]:
    """Every complete message in `data` (a trailing partial message is dropped)."""
    framer = Framer(side)
    framer.feed(data)
    messages: list[Message] = []
    lines: list[bytes] = []
    literals: list[bytes] = []
    chunks = bytearray()
    while True:
        event = framer.next_event()
        if event is NEED_DATA:
            return messages
        if isinstance(event, LiteralData):
            chunks += event.data
            if event.remaining == 0:
                literals.append(bytes(chunks))
                chunks.clear()
        elif isinstance(event, LinePart):
            lines.append(event.raw)
            if event.literal is None:
                messages.append(Message(tuple(lines), tuple(literals)))
                lines, literals = [], []
            elif event.literal.size == 0:
                literals.append(b"")
