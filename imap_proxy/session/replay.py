"""Replaying a transcript through a fresh `ProxySession`, offline.

How this works: `replay(entries, rules=…)` builds a session from the transcript's
`!: session {…}` directive (the settings the recorded session had; defaults for a
hand-written transcript) and the given rules, then makes the recorded calls in the
recorded order: what the client sent (`C:`/`c:`) goes to `receive_from_client`, what
the upstream sent (`S:`/`s:`) to `receive_from_upstream`, and each directive to its
method (`!: upstream-closed` → `upstream_closed()`, …). The upstream is therefore the
recording itself: it answers the session's upstream commands with the recorded
responses, in order. What the session sends each way is collected.

With the rules of the recording the replay reproduces the recorded bytes exactly. Rules
that change only what the client sees keep the upstream dialogue the same. Rules that
make the session send the upstream something else (an injected command, a rewritten
one) get the recorded answers to what was recorded, not to what they sent: the replay
says so — `upstream_divergence` names the first transcript entry where the upstream
bytes differ — and everything the client sees after that point is a best guess.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from imap_proxy.quirks.fingerprint import FingerprintSet
from imap_proxy.quirks.model import RuleSet
from imap_proxy.session import events as ev
from imap_proxy.session.proxy import ProxySession
from imap_proxy.session.settings import PeerInfo, SessionSettings
from imap_proxy.wire.framer import FrameLimits
from imap_proxy.wire.transcript import (
    CLIENT_SENDS,
    DIRECTIVE,
    UPSTREAM_RECEIVES,
    UPSTREAM_SENDS,
    TraceLine,
    TranscriptError,
    upstream_bytes,
)

T = TypeVar("T")
Chunker = Callable[[bytes], Iterator[bytes]]


def whole(data: bytes) -> Iterator[bytes]:
    yield data


@dataclass(frozen=True, slots=True)
class Divergence:
    """The first place where the replayed session sent the upstream other bytes."""

    entry: int  # index in the transcript's entries of the recorded entry that differs
    line: int  # that entry's line in the transcript file (0: past the end, or not from a file)
    recorded: bytes  # that entry's bytes (what was sent live)
    replayed: bytes  # what the replayed session sent there instead (up to a line)


@dataclass
class ReplayResult:
    to_client: bytes = b""
    to_upstream: bytes = b""
    events: list[ev.Event] = field(default_factory=list)
    session: ProxySession | None = None
    upstream_divergence: Divergence | None = None

    def of_type(self, kind: type[T]) -> list[T]:
        return [e for e in self.events if isinstance(e, kind)]


def recorded_settings(entries: list[TraceLine]) -> dict[str, Any]:
    """The values of the `!: session {…}` directive ({} when there is none)."""
    for entry in entries:
        if entry.prefix == DIRECTIVE and entry.data.startswith(b"session"):
            try:
                values = json.loads(entry.data[len(b"session") :] or b"{}")
            except ValueError:
                raise TranscriptError("the session directive is not JSON") from None
            if not isinstance(values, dict):
                raise TranscriptError("the session directive is not a JSON object")
            return values
    return {}


def settings_for(
    entries: list[TraceLine], rules: RuleSet, fingerprints: FingerprintSet | None
) -> SessionSettings:
    values = recorded_settings(entries)
    peer_values = values.get("peer") or ["replay", 0, "replay"]
    try:
        return SessionSettings(
            client_limits=FrameLimits(*values.get("client_limits", (64 * 1024, 256 << 20))),
            upstream_limits=FrameLimits(*values.get("upstream_limits", (16 << 20, 4 << 30))),
            client_tls=bool(values.get("client_tls", False)),
            starttls_available=bool(values.get("starttls_available", False)),
            require_tls=bool(values.get("require_tls", False)),
            upstream_starttls=bool(values.get("upstream_starttls", False)),
            forward_originating=bool(values.get("forward_originating", False)),
            capture_literal_max=int(values.get("capture_literal_max", 8 * 1024)),
            peer=PeerInfo(
                str(peer_values[0]),
                int(peer_values[1]),
                str(values.get("listener", "imap")),
                str(peer_values[2]),
            ),
            rules=rules,
            fingerprints=fingerprints,
            sni=values.get("sni"),
        )
    except (TypeError, ValueError, IndexError):
        raise TranscriptError("the session directive has values of the wrong kind") from None


_DIRECTIVE_CALLS: dict[bytes, Callable[[ProxySession], list[ev.Event]]] = {
    b"client-closed": ProxySession.client_closed,
    b"upstream-closed": ProxySession.upstream_closed,
    b"client-tls": ProxySession.client_tls_established,
    b"upstream-tls": ProxySession.upstream_tls_established,
    b"shutdown": ProxySession.shutdown,
    b"timed-out": ProxySession.timed_out,
}


def replay(
    entries: list[TraceLine],
    *,
    rules: RuleSet | None = None,
    fingerprints: FingerprintSet | None = None,
    settings: SessionSettings | None = None,
    chunker: Chunker = whole,
) -> ReplayResult:
    """Drive a fresh session through the transcript's calls; see the module docstring."""
    if settings is None:
        settings = settings_for(entries, rules or RuleSet.empty(), fingerprints)
    session = ProxySession(settings)
    result = ReplayResult(session=session)
    # Gathered in buffers: `bytes += …` copied everything so far on every event, which
    # doubled the replay of a 1 MB recording and grows with the square of its size.
    to_client = bytearray()
    to_upstream = bytearray()

    def take(events: list[ev.Event]) -> None:
        for event in events:
            if isinstance(event, ev.SendToClient):
                to_client.extend(event.data)
            elif isinstance(event, ev.SendToUpstream):
                to_upstream.extend(event.data)
            result.events.append(event)

    for entry in entries:
        if entry.prefix in CLIENT_SENDS:
            for chunk in chunker(entry.data):
                take(session.receive_from_client(chunk))
        elif entry.prefix in UPSTREAM_SENDS:
            for chunk in chunker(entry.data):
                take(session.receive_from_upstream(chunk))
        elif entry.prefix == DIRECTIVE:
            call = _DIRECTIVE_CALLS.get(entry.data.split(b" ", 1)[0])
            if call is not None:
                take(call(session))
    result.to_client = bytes(to_client)
    result.to_upstream = bytes(to_upstream)
    result.upstream_divergence = find_divergence(entries, result.to_upstream)
    return result


def _common_prefix(a: bytes, b: bytes) -> int:
    """How many leading octets `a` and `b` share: blocks compared in C, then octet by octet."""
    offset = 0
    limit = min(len(a), len(b))
    block = 4096
    while offset + block <= limit and a[offset : offset + block] == b[offset : offset + block]:
        offset += block
    while offset < limit and a[offset] == b[offset]:
        offset += 1
    return offset


def find_divergence(entries: list[TraceLine], sent: bytes) -> Divergence | None:
    """Where `sent` (what a replayed session sent upstream) leaves the recorded upstream bytes."""
    recorded = upstream_bytes(entries)
    if sent == recorded:
        return None
    offset = _common_prefix(sent, recorded)
    position = 0
    last = -1
    for index, entry in enumerate(entries):
        if entry.prefix not in UPSTREAM_RECEIVES:
            continue
        last = index
        if position + len(entry.data) > offset:
            end = sent.find(b"\n", position)
            replayed = sent[position : end + 1 if end >= 0 else None]
            return Divergence(index, entry.line, entry.data, replayed)
        position += len(entry.data)
    # Everything recorded was sent, and then more.
    return Divergence(last + 1, 0, b"", sent[len(recorded) :].split(b"\n", 1)[0])
