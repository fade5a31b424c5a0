"""The capability contract's core: what a parsing proxy can relay, and what it adds.

How this works: clients see the upstream's capabilities minus what the proxy cannot relay,
plus what the proxy itself implements; quirk rules then shape the list further (the
shipped `keep-imap4rev1` and `answer-id-in-every-state` rules put IMAP4rev1 first and add
ID). `client_capabilities()` computes the core list; `rewrite_capability_line()` puts the
final list into any line that carries capabilities - a greeting or tagged status with a
`[CAPABILITY …]` code, or `* CAPABILITY` data - touching nothing else in the line, so the
greeting text and response text reach the client byte for byte. Dropped always: IMAP4rev2
(not every rev2 feature is backed), COMPRESS=* (a parsing proxy cannot relay a compressed
stream) and SCRAM-*-PLUS (channel binding cannot cross a TLS-terminating proxy). STARTTLS
is the client listener's to offer; LITERAL+ is always offered, since the proxy converts
non-synchronizing literals for upstreams without it.

Thousands of sessions see the same few capability lines, so splitting a line's list and
computing the core list from it are remembered (bounded, small lines only): each is a
pure function of its arguments, and a login does both twice.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

_CODE = re.compile(rb"\[CAPABILITY( [^\]\r\n]*)?\]", re.IGNORECASE)
_DATA = re.compile(rb"^\* CAPABILITY(?: ([^\r\n]*))?(\r?\n)\Z", re.IGNORECASE)

# Handled by the proxy itself; the upstream's word on these never reaches the client.
_PROXY_OWNED = frozenset({"IMAP4REV2", "STARTTLS", "LOGINDISABLED", "LITERAL+", "LITERAL-"})

MEMO_ENTRIES: Final = 256  # distinct lists remembered (per kind), least recently used go
MEMO_MAX_TEXT: Final = 4096  # octets: a longer capability list is split every time


@dataclass(frozen=True, slots=True)
class ClientTransport:
    """What the client's connection can do right now."""

    tls_active: bool
    starttls_available: bool
    require_tls: bool

    @property
    def login_disabled(self) -> bool:
        return self.require_tls and not self.tls_active


def _relayable(capability: str) -> bool:
    upper = capability.upper()
    if upper in _PROXY_OWNED or upper.startswith("COMPRESS="):
        return False
    return not (upper.startswith("AUTH=SCRAM-") and upper.endswith("-PLUS"))


def client_capabilities(upstream: Iterable[str], transport: ClientTransport) -> list[str]:
    """The capability list the client sees, in the upstream's order where it has one."""
    return list(_core_capabilities(tuple(upstream), transport))


@functools.lru_cache(maxsize=MEMO_ENTRIES)
def _core_capabilities(upstream: tuple[str, ...], transport: ClientTransport) -> tuple[str, ...]:
    upstream_upper = {cap.upper() for cap in upstream}
    caps: list[str] = []
    for cap in upstream:
        if not _relayable(cap):
            continue
        if transport.login_disabled and cap.upper().startswith("AUTH="):
            continue
        caps.append(cap)
    if transport.starttls_available and not transport.tls_active:
        # Conventionally right after the version word(s).
        at = 1 if caps and caps[0].upper().startswith("IMAP4") else 0
        caps.insert(at, "STARTTLS")
    if transport.login_disabled or "LOGINDISABLED" in upstream_upper:
        caps.append("LOGINDISABLED")
    caps.append("LITERAL+")
    return tuple(caps)


def split_capabilities(text: bytes) -> list[str]:
    return list(_split_remembered(text) if len(text) <= MEMO_MAX_TEXT else _split(text))


def _split(text: bytes) -> tuple[str, ...]:
    # A name with non-ASCII octets is no capability: it cannot be relayed, so it is dropped.
    # Interned: thousands of sessions hold the same few dozen capability names.
    return tuple(sys.intern(word.decode("ascii")) for word in text.split() if word.isascii())


_split_remembered = functools.lru_cache(maxsize=MEMO_ENTRIES)(_split)


def capabilities_in_line(line: bytes) -> list[str] | None:
    """The capabilities a response line announces, or None when it announces none."""
    data = _DATA.match(line)  # anchored: fails at the first octets of any other line
    if data is not None:
        return split_capabilities(data.group(1) or b"")
    if b"[" not in line:  # no response code: the cheap test most relayed lines stop at
        return None
    code = _CODE.search(line)
    if code is not None and _is_status_line(line, code.start()):
        return split_capabilities(code.group(1) or b"")
    return None


def rewrite_capability_line(line: bytes, caps: Sequence[str]) -> bytes:
    """`line` with its capability list replaced by `caps`; other bytes unchanged."""
    listed = " ".join(caps).encode("ascii")
    data = _DATA.match(line)
    if data is not None:
        return b"* CAPABILITY " + listed + data.group(2)
    code = _CODE.search(line)
    if code is None or not _is_status_line(line, code.start()):
        return line
    return line[: code.start()] + b"[CAPABILITY " + listed + b"]" + line[code.end() :]


def _is_status_line(line: bytes, code_start: int) -> bool:
    """The code stands right after `TAG STATUS ` (so text mentioning it is left alone)."""
    words = line[:code_start].split(b" ")
    return (
        len(words) == 3
        and words[2] == b""
        and words[1].upper() in (b"OK", b"NO", b"BAD", b"PREAUTH", b"BYE")
    )


def has_capability(caps: Iterable[str], name: str) -> bool:
    wanted = name.upper()
    return any(cap.upper() == wanted for cap in caps)
