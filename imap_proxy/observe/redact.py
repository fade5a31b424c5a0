"""Redaction of one direction of an IMAP byte stream, for the session recorder.

How this works: a `StreamRedactor` frames one direction (commands or responses) with the
wire framer, so it knows every line and every literal, and returns for each chunk fed
the bytes to record in place of it. Redaction keeps the stream well formed — a literal
whose content is replaced gets its announcement rewritten to the replacement's size
(`{8}` → `{10}`, marker and `~` kept) — so a recorded transcript still frames, parses
and replays like the session it came from. Each octet is looked at once; memory stays
bounded (a hashed or truncated literal is never held whole).

Credentials are never returned, whatever the literal policy:

* `LOGIN user password`: the password — atom, quoted string or literal — becomes
  `[redacted]` (quoted, or a literal of that size); the user name stays.
* `AUTHENTICATE mech [initial-response]` and every line the client sends until the
  exchange's tagged answer (`end_exchange`, told by the other direction's redactor):
  each SASL response becomes base64 of `[redacted]`, except that PLAIN keeps its
  authorization and authentication identities (the password field is replaced) and
  LOGIN keeps its first response (the user name), so a replay sees the same user.
  A client's `*` (cancel) stays.

Other literals follow the policy: `full` keeps them; otherwise literals up to
`keep_octets` are kept (mailbox names, search strings) and longer ones (message bodies)
are cut to their first `keep_octets` octets (`truncate`), replaced by their SHA-256 and
size (`hash`), or by their size only (`none`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from typing import Final

from imap_proxy.config import KeepLiterals as LiteralPolicy
from imap_proxy.wire.command import peek_command
from imap_proxy.wire.errors import ProtocolError, Side
from imap_proxy.wire.framer import NEED_DATA, FrameLimits, Framer, LinePart, LiteralData

REDACTED: Final = b"[redacted]"
REDACTED_SASL: Final = base64.b64encode(REDACTED)
_UNLIMITED: Final = FrameLimits(max_line_length=1 << 40, max_literal_size=1 << 62)


@dataclass(slots=True)
class _Literal:
    """The literal being received and what is recorded for it."""

    size: int
    synchronizing: bool
    replacement: bytes | None = None  # fixed content (a password), else the policy's
    keep: int = 0  # octets kept verbatim from the start (truncate)
    kept: bytearray = field(default_factory=bytearray)
    digest: hashlib._Hash | None = None
    received: int = 0


def _marker(policy: LiteralPolicy, size: int, digest: str = "0" * 64) -> bytes:
    if policy is LiteralPolicy.HASH:
        return f"[sha256:{digest} {size} octets]".encode("ascii")
    if policy is LiteralPolicy.TRUNCATE:
        return f"[...{size} octets]".encode("ascii")
    return f"[{size} octets]".encode("ascii")


def _tokens(line: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """Spans of the space-separated arguments (atoms, quoted strings) in line[start:end]."""
    spans = []
    i = start
    while i < end:
        if line[i] == 0x20:
            i += 1
            continue
        j = i
        if line[i] == 0x22:  # a quoted string, with \\ and \" escapes
            j += 1
            while j < end and line[j] != 0x22:
                j += 2 if line[j] == 0x5C else 1
            j = min(j + 1, end)
        else:
            while j < end and line[j] != 0x20:
                j += 1
        spans.append((i, j))
        i = j
    return spans


def _content_end(raw: bytes) -> int:
    return len(raw) - (2 if raw.endswith(b"\r\n") else 1 if raw.endswith(b"\n") else 0)


def redact_sasl_response(mechanism: str, index: int, line: bytes) -> bytes:
    """One SASL response line (terminator included) as it may be recorded."""
    end = _content_end(line)
    body, tail = line[:end], line[end:]
    if body == b"*" or not body:
        return line
    if mechanism == "LOGIN" and index == 0:
        return line  # the user name, as `login_user` would read it
    if mechanism == "PLAIN":
        try:
            fields = base64.b64decode(body, validate=True).split(b"\x00")
        except (binascii.Error, ValueError):
            fields = []
        if len(fields) == 3:
            return base64.b64encode(fields[0] + b"\x00" + fields[1] + b"\x00" + REDACTED) + tail
    return REDACTED_SASL + tail


class StreamRedactor:
    """One direction of a connection in, redacted bytes out; see the module docstring."""

    def __init__(
        self,
        *,
        commands: bool,
        policy: LiteralPolicy = LiteralPolicy.HASH,
        keep_octets: int = 64,
        refused_over: int | None = None,
    ) -> None:
        self.commands = commands
        # The session's own limit: a literal announced over it is refused before any of
        # its octets is read, so the announcement is recorded as sent (a smaller size
        # would replay as a literal the session accepts).
        self.refused_over = refused_over
        self.policy = policy
        self.keep_octets = keep_octets
        self.broken: str | None = None  # why the stream could not be framed (then: nothing)
        self._framer = Framer(Side.CLIENT if commands else Side.UPSTREAM, _UNLIMITED)
        self._literal: _Literal | None = None
        self._starts_message = True
        self._verb = ""  # the command being received (uppercase), "" if none
        self._tag = b""
        self._login_args = 0  # LOGIN arguments seen so far
        self._exchange: tuple[bytes, str] | None = None  # (tag, mechanism) of a SASL exchange
        self._exchange_responses = 0
        self.tagged: list[bytes] = []  # responses: tags of tagged lines framed (drained by caller)

    # ----------------------------------------------------------------- public

    def feed(self, data: bytes) -> bytes:
        """The bytes to record for `data` (possibly fewer, more, or held until later)."""
        if self.broken is not None:
            return b""
        out = bytearray()
        try:
            self._framer.feed(data)
            while (event := self._framer.next_event()) is not NEED_DATA:
                if isinstance(event, LiteralData):
                    out += self._literal_data(event)
                elif isinstance(event, LinePart):
                    out += self._line(event)
        except ProtocolError as error:
            self.broken = str(error)
        return bytes(out)

    def end_exchange(self, tag: bytes) -> None:
        """The other direction framed a tagged answer to `tag`: its exchange is over."""
        if self._exchange is not None and self._exchange[0] == tag:
            self._exchange = None
        literal = self._literal
        pending = literal is not None and literal.synchronizing and not literal.received
        if self._tag == tag and pending:
            # A synchronizing literal refused with NO/BAD is never sent (`cancel_literal`).
            try:
                self._framer.cancel_literal()
            except ProtocolError:
                return
            self._literal = None
            self._starts_message = True

    def discard_buffered(self) -> None:
        """Plaintext pipelined after STARTTLS: the session dropped it, so do we."""
        self._framer.discard_buffered()
        self._literal = None
        self._starts_message = True

    # ---------------------------------------------------------------- framing

    def _line(self, part: LinePart) -> bytes:
        raw = part.raw
        if self._starts_message:
            self._start_message(raw)
        self._starts_message = part.ends_message
        if not self.commands:
            return self._announce(raw, part, None)
        if self._exchange is not None and self._verb != "AUTHENTICATE":
            index = self._exchange_responses
            self._exchange_responses += 1
            return redact_sasl_response(self._exchange[1], index, raw)
        if self._verb == "AUTHENTICATE" and part.ends_message:
            return self._authenticate_line(raw)
        if self._verb == "LOGIN":
            return self._login_part(raw, part)
        return self._announce(raw, part, None)

    def _start_message(self, raw: bytes) -> None:
        if not self.commands:
            words = raw.split(b" ", 2)
            if len(words) >= 2 and words[0] not in (b"*", b"+"):
                self.tagged.append(words[0])
            return
        peeked = None if self._exchange is not None else peek_command(raw)
        self._tag, self._verb = peeked if peeked is not None else (b"", "")
        self._login_args = 0

    def _authenticate_line(self, raw: bytes) -> bytes:
        end = _content_end(raw)
        spans = _tokens(raw, 0, end)
        if len(spans) < 3:
            return raw  # no mechanism: the command is refused, nothing is exchanged
        mechanism = raw[spans[2][0] : spans[2][1]].decode("ascii", "replace").upper()
        self._exchange = (self._tag, mechanism)
        self._exchange_responses = 0
        self._verb = ""
        if len(spans) < 4:
            return raw
        start, stop = spans[3]
        self._exchange_responses = 1
        response = redact_sasl_response(mechanism, 0, raw[start:stop] + b"\r\n")[:-2]
        return raw[:start] + response + raw[stop:]

    def _login_part(self, raw: bytes, part: LinePart) -> bytes:
        header = part.literal
        end = header.start if header is not None else _content_end(raw)
        start = 0
        if self._login_args == 0:  # the first line: skip the tag and LOGIN
            spans = _tokens(raw, 0, end)
            start = spans[1][1] if len(spans) >= 2 else end  # after the tag and LOGIN
        out = bytearray()
        cursor = 0
        for token_start, token_stop in _tokens(raw, start, end):
            if self._login_args == 1:
                out += raw[cursor:token_start] + b'"' + REDACTED + b'"'
                cursor = token_stop
            self._login_args += 1
        out += raw[cursor:]
        if header is None:
            return bytes(out)
        replacement = REDACTED if self._login_args == 1 else None
        self._login_args += 1
        return self._announce(bytes(out), part, replacement, shift=len(out) - len(raw))

    # --------------------------------------------------------------- literals

    def _announce(
        self, raw: bytes, part: LinePart, replacement: bytes | None, shift: int = 0
    ) -> bytes:
        """Plan the literal `part` announces and rewrite its size if its content changes."""
        header = part.literal
        if header is None or header.size == 0:
            return raw
        if self.refused_over is not None and header.size > self.refused_over:
            return raw
        literal = _Literal(header.size, header.synchronizing, replacement=replacement)
        self._literal = literal
        if replacement is None:
            if self.policy is LiteralPolicy.FULL or header.size <= self.keep_octets:
                return raw
            if self.policy is LiteralPolicy.TRUNCATE:
                literal.keep = self.keep_octets
            if self.policy is LiteralPolicy.HASH:
                literal.digest = hashlib.sha256()
            new_size = literal.keep + len(_marker(self.policy, header.size))
        else:
            new_size = len(replacement)
        start = header.start + shift
        binary = b"~" if header.binary else b""
        ending = raw[_content_end(raw) :]
        return raw[:start] + binary + b"{%d%s}" % (new_size, header.marker) + ending

    def _literal_data(self, chunk: LiteralData) -> bytes:
        literal = self._literal
        if literal is None:
            return chunk.data
        literal.received += len(chunk.data)
        done = chunk.remaining == 0
        if done:
            self._literal = None
        if literal.replacement is not None:
            return literal.replacement if done else b""
        if literal.digest is None and literal.keep == 0 and self._is_kept(literal):
            return chunk.data
        if literal.digest is not None:
            literal.digest.update(chunk.data)
        if len(literal.kept) < literal.keep:
            literal.kept += chunk.data[: literal.keep - len(literal.kept)]
        if not done:
            return b""
        digest = literal.digest.hexdigest() if literal.digest is not None else ""
        return bytes(literal.kept) + _marker(self.policy, literal.size, digest)

    def _is_kept(self, literal: _Literal) -> bool:
        return self.policy is LiteralPolicy.FULL or literal.size <= self.keep_octets
