"""The C:/S: transcript text format: one parser and one writer for every tool that uses it.

How this works: a transcript is text, one entry per line, each with a prefix saying who
sends it and whether the proxy passes it on (the golden transcripts under
tests/transcripts, `imap-proxy fingerprint`, the session recorder and `imap-proxy replay`
all read and write this one format):

    S: …   the upstream sends it; the proxy relays it to the client unchanged
    C: …   the client sends it; the proxy relays it upstream unchanged
    s: …   the upstream sends it; the proxy consumes it (or changes it)
    c: …   the client sends it; the proxy handles it (or changes it)
    >c: …  the proxy itself sends this to the client
    >s: …  the proxy itself sends this upstream
    !: …   a directive: something that happened to the session besides bytes
           (`client-closed`, `upstream-closed`, `client-tls`, `upstream-tls`, `shutdown`,
           `timed-out`, `session {json}`); tools that only read bytes ignore it
    # …    a comment; blank lines are ignored

A text entry stands for its text plus CRLF (literal data included, so a literal's content
is written as the lines that follow its announcement). Bytes that cannot be written so —
not UTF-8, a bare CR or LF, a line break Python's `splitlines` would see, or a fragment
without its CRLF — are written base64-encoded, exactly, with `64` after the prefix
(`C64: YWJjCg==` is the four octets `abc\\n`). `format_entry` picks the form; `parse`
undoes it, so `parse(format(x)) == x` for any bytes.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

CLIENT_SENDS: Final = frozenset({"C", "c"})  # bytes the proxy read from the client
UPSTREAM_SENDS: Final = frozenset({"S", "s"})  # bytes the proxy read from the upstream
CLIENT_RECEIVES: Final = frozenset({"S", ">c"})  # bytes the proxy wrote to the client
UPSTREAM_RECEIVES: Final = frozenset({"C", ">s"})  # bytes the proxy wrote upstream
DIRECTIVE: Final = "!"
BYTE_PREFIXES: Final = frozenset({"C", "c", "S", "s", ">c", ">s"})
PREFIXES: Final = BYTE_PREFIXES | {DIRECTIVE}
ESCAPED_SUFFIX: Final = "64"

DIRECTIVES: Final = frozenset(
    {
        "client-closed",
        "upstream-closed",
        "client-tls",
        "upstream-tls",
        "shutdown",
        "timed-out",
        "session",
    }
)


@dataclass(frozen=True, slots=True)
class TraceLine:
    """One entry: `data` is the exact bytes (CRLF included for a text line); for a
    directive, its text (`b"upstream-closed"`, `b'session {"client_tls": false}'`)."""

    prefix: str
    data: bytes
    line: int = field(default=0, compare=False)  # where it was in the text (1-based; 0: made)


class TranscriptError(ValueError):
    """A line that is not a transcript entry; the message names the line."""


def parse(text: str) -> list[TraceLine]:
    """Transcript text -> entries, in order. Raises `TranscriptError` for a bad line."""
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.startswith("#"):
            continue
        prefix, sep, rest = raw.partition(":")
        rest = rest.removeprefix(" ")
        if sep and prefix in BYTE_PREFIXES:
            entries.append(TraceLine(prefix, rest.encode("utf-8") + b"\r\n", number))
        elif sep and prefix == DIRECTIVE:
            name = rest.split(" ", 1)[0]
            if name not in DIRECTIVES:
                raise TranscriptError(f"line {number}: unknown directive {name[:40]!r}")
            entries.append(TraceLine(DIRECTIVE, rest.encode("utf-8"), number))
        elif (
            sep
            and prefix.removesuffix(ESCAPED_SUFFIX) in BYTE_PREFIXES
            and prefix.endswith(ESCAPED_SUFFIX)
        ):
            try:
                data = base64.b64decode(rest.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise TranscriptError(f"line {number}: bad base64 after {prefix}:") from None
            entries.append(TraceLine(prefix.removesuffix(ESCAPED_SUFFIX), data, number))
        else:
            raise TranscriptError(f"line {number}: no C:/S:/c:/s:/>c:/>s:/!: prefix: {raw[:60]!r}")
    return entries


def load(path: Path) -> list[TraceLine]:
    """A transcript file's entries; OSError, UnicodeDecodeError or TranscriptError."""
    return parse(path.read_text(encoding="utf-8"))


# Octets (in ASCII text) that end a line for `str.splitlines`, so cannot be inside one.
_ASCII_BREAKS = re.compile(rb"[\r\n\x0b\x0c\x1c-\x1e]")


def _as_text(data: bytes) -> str | None:
    """The text form of `data` (without its CRLF), or None if it needs base64."""
    if not data.endswith(b"\r\n"):
        return None
    body = data[:-2]
    if _ASCII_BREAKS.search(body):
        return None
    if body.isascii():
        return body.decode("ascii")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.splitlines() != [text]:
        return None  # \x85, \u2028, \u2029 break lines too
    return text


def format_entry(prefix: str, data: bytes) -> str:
    """One entry as a line of text (no line end): text when it can be, else base64."""
    if prefix == DIRECTIVE:
        return f"{DIRECTIVE}: {data.decode('utf-8')}"
    if prefix not in BYTE_PREFIXES:
        raise ValueError(f"not a transcript prefix: {prefix!r}")
    text = _as_text(data)
    if text is None:
        return f"{prefix}{ESCAPED_SUFFIX}: {base64.b64encode(data).decode('ascii')}"
    return f"{prefix}: {text}" if text else f"{prefix}:"


def format_entries(entries: Iterable[TraceLine]) -> str:
    return "".join(format_entry(entry.prefix, entry.data) + "\n" for entry in entries)


def client_bytes(entries: Iterable[TraceLine]) -> bytes:
    """What the client received (`S:` and `>c:` entries), in order."""
    return b"".join(e.data for e in entries if e.prefix in CLIENT_RECEIVES)


def upstream_bytes(entries: Iterable[TraceLine]) -> bytes:
    """What the upstream received (`C:` and `>s:` entries), in order."""
    return b"".join(e.data for e in entries if e.prefix in UPSTREAM_RECEIVES)
