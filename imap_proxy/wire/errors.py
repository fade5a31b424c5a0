"""The one error hierarchy of the wire and session layers.

How this works: every protocol violation the sans-IO core detects is raised as a
`ProtocolError` that says which side misbehaved (`Side.CLIENT` or `Side.UPSTREAM`) and
carries a short text fit to be sent to a client in a BAD/BYE line. Nothing else may escape
the codec on bad input; the trio layer catches `ProtocolError` once, at the I/O boundary.
"""

from __future__ import annotations

import enum


class Side(enum.Enum):
    """Which end of the proxy a byte stream (or a misbehaviour) belongs to."""

    CLIENT = "client"
    UPSTREAM = "upstream"


class ProtocolError(Exception):
    """Bytes that do not follow IMAP (or exceed a configured limit)."""

    def __init__(self, side: Side, text: str) -> None:
        super().__init__(f"{side.value}: {text}")
        self.side = side
        self.text = text


class LimitExceeded(ProtocolError):
    """A configured hard limit was hit; `limit` names it for metrics and logs."""

    def __init__(self, side: Side, limit: str, text: str) -> None:
        super().__init__(side, text)
        self.limit = limit


class ParseError(ProtocolError):
    """A framed message does not match the IMAP grammar the parser knows."""
