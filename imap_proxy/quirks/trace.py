"""Recorded client transcripts replayed into a `Fingerprinter` (`imap-proxy fingerprint`).

How this works: a transcript is text, one line per wire line, each with a prefix saying
who sent it, the format of the golden transcripts under tests/transcripts:

    C: / c:    the client sent it (relayed / answered by the proxy)
    S: / >c:   the client received it (from the upstream / from the proxy)
    s: / >s:   between proxy and upstream only (ignored here)
    !: …       a directive (ignored here)
    # …        a comment; blank lines are ignored

The format and its one parser are `imap_proxy.wire.transcript`.

Every line stands for itself plus CRLF, literal data included. Client lines go through
the wire framer, so literal octets are never mistaken for commands; each command's first
line is fed to `observe_command` (with the tag and the verb as sent), an `ID` command's
fields to `observe_id` once the command is complete, and the tagged `OK` that ends a
LOGIN or AUTHENTICATE to `observe_authenticated`, exactly as a live session would. The
lines a client sends inside an AUTHENTICATE exchange or an IDLE are not commands.
"""

from __future__ import annotations

from collections.abc import Iterable

from imap_proxy.quirks.fingerprint import (
    ClientProfile,
    Fingerprinter,
    FingerprintSet,
    TraceStep,
    verb_as_sent,
)
from imap_proxy.wire import transcript
from imap_proxy.wire.command import parse_command, parse_id_params, peek_command
from imap_proxy.wire.errors import ProtocolError, Side
from imap_proxy.wire.framer import NEED_DATA, Framer, LinePart, LiteralData
from imap_proxy.wire.message import Message
from imap_proxy.wire.transcript import CLIENT_RECEIVES, CLIENT_SENDS, TraceLine

__all__ = ["TraceLine", "load_trace", "parse_trace", "replay_transcript"]

parse_trace = transcript.parse  # one parser for every transcript tool
load_trace = transcript.load


class _Replay:
    def __init__(self, fingerprinter: Fingerprinter) -> None:
        self.fp = fingerprinter
        self.client = Framer(Side.CLIENT)
        self.server = Framer(Side.UPSTREAM)
        self.lines: list[bytes] = []  # the client message being collected
        self.literals: list[bytes] = []
        self.literal_chunks: list[bytes] = []
        self.auth_tag: bytes | None = None  # a LOGIN/AUTHENTICATE awaiting its tagged reply
        self.exchange_tag: bytes | None = None  # AUTHENTICATE or IDLE: lines are not commands
        self.server_starts_message = True
        self.authenticated = False

    def from_client(self, data: bytes) -> None:
        self.client.feed(data)
        while (event := self.client.next_event()) is not NEED_DATA:
            if isinstance(event, LiteralData):
                self.literal_chunks.append(event.data)
                if event.remaining == 0:
                    self.literals.append(b"".join(self.literal_chunks))
                    self.literal_chunks = []
            elif isinstance(event, LinePart):
                self._client_line(event)

    def _client_line(self, part: LinePart) -> None:
        if not self.lines and self.exchange_tag is not None:
            return  # a SASL response or IDLE's DONE
        if not self.lines:
            peeked = peek_command(part.raw)
            if peeked is not None:
                tag, _name = peeked
                self.fp.observe_command(
                    tag, verb_as_sent(part.raw), part.raw, authenticated=self.authenticated
                )
        self.lines.append(part.raw)
        if part.ends_message:
            message = Message(tuple(self.lines), tuple(self.literals))
            self.lines, self.literals = [], []
            self._client_message(message)

    def _client_message(self, message: Message) -> None:
        peeked = peek_command(message.first_line)
        if peeked is None:
            return
        tag, name = peeked
        if name in ("LOGIN", "AUTHENTICATE"):
            self.auth_tag = tag
        if name in ("AUTHENTICATE", "IDLE"):
            self.exchange_tag = tag
        if name == "ID":
            try:
                params = parse_id_params(parse_command(message))
            except ProtocolError:
                return
            self.fp.observe_id(params, authenticated=self.authenticated)

    def to_client(self, data: bytes) -> None:
        self.server.feed(data)
        while (event := self.server.next_event()) is not NEED_DATA:
            if not isinstance(event, LinePart):
                continue
            if self.server_starts_message:
                self._server_line(event.raw)
            self.server_starts_message = event.ends_message

    def _server_line(self, line: bytes) -> None:
        words = line.split(None, 2)
        if len(words) < 2:
            return
        tag, status = words[0], words[1].upper()
        if tag == b"*" and status == b"PREAUTH":
            self.authenticated = True
            self.fp.observe_authenticated()
            return
        if tag == self.exchange_tag and status in (b"OK", b"NO", b"BAD"):
            self.exchange_tag = None
        if tag == self.auth_tag and status in (b"OK", b"NO", b"BAD"):
            self.auth_tag = None
            if status == b"OK" and not self.authenticated:
                self.authenticated = True
                self.fp.observe_authenticated()


def replay_transcript(
    steps: Iterable[TraceStep],
    definitions: FingerprintSet | None = None,
    *,
    listener: str = "imap",
    sni: str | None = None,
) -> ClientProfile:
    """Feed a transcript's client side to a fresh Fingerprinter; its final profile.

    Raises `ProtocolError` (wire.errors) if the client side cannot be framed."""
    fingerprinter = Fingerprinter(
        definitions or FingerprintSet.packaged(), listener=listener, sni=sni
    )
    replay = _Replay(fingerprinter)
    for step in steps:
        if fingerprinter.settled:
            break
        if step.prefix in CLIENT_SENDS:
            replay.from_client(step.data)
        elif step.prefix in CLIENT_RECEIVES:
            replay.to_client(step.data)
    return fingerprinter.profile
