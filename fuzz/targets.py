"""Fuzz targets for the framer, the command parser, the response parser and the session.

How this works: each target is a plain function `target(data: bytes) -> None` that runs
one input through a part of the sans-IO core and checks the invariants every input must
keep; it raises (AssertionError, or whatever escaped the code) only when one is broken:

* only the project's protocol errors escape the codec (`ProtocolError` and its subclasses
  are caught here; any other exception propagates and is a finding);
* no hang: every loop in a target is bounded by the input, so a target that does not
  return is a loop in the code under test (the runner's per-input timeout catches it);
* memory bounded by the configured limits: what the framer buffers and what the session
  holds (a command or response kept whole for parsing, output deferred until a relayed
  message ends) stays under a bound computed from the small limits used here, however
  long the input is.

The same functions serve two drivers: atheris (`python -m fuzz.run TARGET --runs N`,
coverage-guided, run for millions of inputs; see docs/reliability.md) and hypothesis
(tests/wire/test_fuzz_targets.py, a bounded budget in the normal suite). The session
target decodes its input into steps (`decode_steps`): each step is one byte choosing what
happens (client bytes, upstream bytes, a dictionary word for either side, a TLS handshake
completing, a timeout, a drain, a side closing) followed by its payload; bytes for a side
the session has paused are dropped, as the I/O layer would not read them. The first
input byte also chooses require_tls and whether the shipped quirk rules are active.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from imap_proxy.quirks.model import RuleSet
from imap_proxy.quirks.store import QuirkSnapshot, load_snapshot
from imap_proxy.session.proxy import ProxySession
from imap_proxy.session.settings import SessionSettings
from imap_proxy.wire.command import parse_command, peek_command
from imap_proxy.wire.errors import ProtocolError, Side
from imap_proxy.wire.framer import NEED_DATA, FrameLimits, Framer, LinePart, LiteralData
from imap_proxy.wire.message import Message
from imap_proxy.wire.response import parse_response, peek_response

# Small limits, so that "bounded by the limits" is visible within short inputs.
CLIENT_LIMITS: Final = FrameLimits(max_line_length=96, max_literal_size=512)
UPSTREAM_LIMITS: Final = FrameLimits(max_line_length=160, max_literal_size=512)
CAPTURE_MAX: Final = 32
MAX_CHUNK: Final = 255
# What the session may hold at any time: per side a partly framed line plus the chunk
# just fed; a command kept whole for parsing (at most a line's worth of lines and a
# captured literal's worth of literals, plus the line that went over); the rest of a
# message the proxy sends upstream itself. Growth with the input length is a bug.
# (Output the session defers until a relayed message ends is not counted: it is bounded
# by the I/O layer, which stops reading a client that does not read its answers.)
HELD_COMMAND_BOUND: Final = 2 * CLIENT_LIMITS.max_line_length + CAPTURE_MAX + MAX_CHUNK
SESSION_MEMORY_BOUND: Final = (
    CLIENT_LIMITS.max_line_length
    + UPSTREAM_LIMITS.max_line_length
    + 2 * (2 + MAX_CHUNK)
    + 2 * HELD_COMMAND_BOUND
)

GREETINGS: Final = (
    b"* OK [CAPABILITY IMAP4rev1 LITERAL+ ID IDLE AUTH=PLAIN] ready\r\n",
    b"* OK [CAPABILITY IMAP4rev1 IDLE] legacy\r\n",
    b"* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n",
    b"* OK no capabilities here\r\n",
)
CLIENT_WORDS: Final = (
    b"a LOGIN u p\r\n",
    b"b AUTHENTICATE PLAIN\r\n",
    b"*\r\n",
    b"c IDLE\r\n",
    b"DONE\r\n",
    b"d APPEND INBOX {5}\r\n",
    b"e APPEND INBOX {3+}\r\nabc\r\n",
    b"f ID NIL\r\n",
    b'g ID ("name" {2}\r\n',
    b"h STARTTLS\r\n",
    b"i SELECT INBOX\r\n",
    b"{99999999999}\r\n",
    b"j LOGIN {1+}\r\n",
    b'k ID ("x" {1+}\r\n',
    b"l UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (A B)])\r\n",
    b'm LIST "" "*"\r\n',
)
UPSTREAM_WORDS: Final = (
    b"+ go\r\n",
    b"a OK [CAPABILITY IMAP4rev1 MOVE] done\r\n",
    b"b NO no\r\n",
    b"c OK\r\n",
    b"* 1 FETCH (BODY[] {4}\r\nabcd)\r\n",
    b"* CAPABILITY IMAP4rev1 X\r\n",
    b"* BYE bye\r\n",
    b"d BAD\r\n",
    b"* 3 EXISTS\r\n",
    b"* OK [CAPABILITY ] x\r\n",
    b'* LIST (\\HasNoChildren) "/" {5}\r\nTrash\r\n',
    b"* ID NIL\r\n",
    b"proxy1 OK done\r\n",
    b"* 2 FETCH (FLAGS (\\Seen) UID 7)\r\n",
)


def _frames(data: bytes, side: Side, limits: FrameLimits) -> list[Message]:
    """Frame `data` fed in uneven chunks; the complete messages (the framer's invariants
    are checked on the way). Stops at the first protocol error."""
    framer = Framer(side, limits)
    messages: list[Message] = []
    lines: list[bytes] = []
    literals: list[bytes | None] = []
    literal = bytearray()
    offset, step = 0, 1
    while offset < len(data):
        chunk = data[offset : offset + step]
        offset += len(chunk)
        step = step % 97 + 13  # deterministic, uneven chunk sizes
        framer.feed(chunk)
        for _ in range(len(chunk) + 2):  # each event consumes input, or says NEED_DATA
            try:
                event = framer.next_event()
            except ProtocolError:
                return messages
            if event is NEED_DATA:
                break
            if isinstance(event, LinePart):
                lines.append(event.raw)
                if event.literal is None:
                    messages.append(Message(tuple(lines), tuple(literals)))
                    lines, literals = [], []
                elif event.literal.size == 0:
                    literals.append(b"")
            elif isinstance(event, LiteralData):
                literal += event.data
                if event.remaining == 0:
                    literals.append(bytes(literal))
                    literal.clear()
        else:
            raise AssertionError("the framer yields events without consuming input")
        assert framer.buffered <= limits.max_line_length + 2 + len(chunk), framer.buffered
    return messages


def framer(data: bytes) -> None:
    """Both directions' framers over any bytes: only ProtocolError, bounded buffers, and
    every complete message keeps its exact bytes."""
    for side, limits in ((Side.CLIENT, CLIENT_LIMITS), (Side.UPSTREAM, UPSTREAM_LIMITS)):
        for message in _frames(data, side, limits):
            assert message.to_bytes() in data


def command_parser(data: bytes) -> None:
    """Every framed client message: peek never raises, parse gives a Command or a
    ProtocolError, and a parsed command agrees with the peek on its tag."""
    for message in _frames(data, Side.CLIENT, CLIENT_LIMITS):
        peeked = peek_command(message.first_line)
        try:
            command = parse_command(message, max_depth=8)
        except ProtocolError as error:
            assert error.side is Side.CLIENT
            continue
        assert peeked is not None and peeked[0] == command.tag, (peeked, command)


def response_parser(data: bytes) -> None:
    """Every framed upstream message: peek never raises, parse gives a Response or a
    ProtocolError from the upstream side."""
    for message in _frames(data, Side.UPSTREAM, UPSTREAM_LIMITS):
        peek_response(message.first_line)
        try:
            parse_response(message, max_depth=8)
        except ProtocolError as error:
            assert error.side is Side.UPSTREAM


# --- the whole session --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One thing that happens to a session: `what` names it, `data` is its payload."""

    what: str
    data: bytes = b""


_DATA_STEPS: Final = ("client", "client", "upstream", "upstream", "client-word", "upstream-word")
_EVENT_STEPS: Final = (
    "client-tls",
    "upstream-tls",
    "timed-out",
    "shutdown",
    "upstream-closed",
    "client-closed",
)


def decode_steps(data: bytes) -> tuple[bytes, list[Step]]:
    """Greeting and steps from fuzz input: [greeting byte] then (op byte, payload)*."""
    if not data:
        return GREETINGS[0], []
    greeting = GREETINGS[data[0] % len(GREETINGS)]
    steps: list[Step] = []
    pos = 1
    while pos < len(data):
        op = data[pos]
        pos += 1
        kind = op % 16
        if kind < 12:  # payload: the low bits choose the step, the length follows
            what = _DATA_STEPS[kind % len(_DATA_STEPS)]
            if what.endswith("-word"):
                words = CLIENT_WORDS if what == "client-word" else UPSTREAM_WORDS
                steps.append(Step(what[: -len("-word")], words[(op >> 4) % len(words)]))
                continue
            length = data[pos] if pos < len(data) else 0
            pos += 1
            steps.append(Step(what, data[pos : pos + length]))
            pos += length
        else:
            # Rare events: the high bits must agree too, so most inputs go on relaying.
            if op >> 4 < 10:
                continue
            steps.append(Step(_EVENT_STEPS[(op >> 4) % len(_EVENT_STEPS)]))
    return greeting, steps


@functools.cache
def shipped_quirks() -> QuirkSnapshot:
    """The packaged rules and fingerprints (loaded once per process)."""
    return load_snapshot(None)


def new_session(require_tls: bool = False, *, rules: bool = False) -> ProxySession:
    quirks = shipped_quirks() if rules else None
    return ProxySession(
        SessionSettings(
            client_limits=CLIENT_LIMITS,
            upstream_limits=UPSTREAM_LIMITS,
            starttls_available=True,
            require_tls=require_tls,
            capture_literal_max=CAPTURE_MAX,
            rules=quirks.rules if quirks is not None else RuleSet.empty(),
            fingerprints=quirks.fingerprints if quirks is not None else None,
        )
    )


def held_bytes(session: ProxySession) -> int:
    """What the session holds in memory now (framers, held messages, its own output)."""
    total = session._client.buffered + session._upstream.buffered
    msg = session._msg
    if msg is not None:
        total += sum(map(len, msg.lines)) + sum(len(x or b"") for x in msg.literals)
        total += len(msg.literal or b"")
    held = session._up_held
    if held is not None:
        total += sum(map(len, held.lines)) + sum(map(len, held.literals)) + len(held.literal)
    total += sum(map(len, session._deferred_upstream))
    total += sum(map(len, session._proxy_parts))
    return total


def run_session(
    greeting: bytes, steps: list[Step], *, require_tls: bool = False, rules: bool = False
) -> None:
    """Drive one session through `steps` (with the shipped rules when `rules`); check it
    never raises, memory stays bounded, and it ends with exactly one Close once both
    sides are gone."""
    from imap_proxy.session import events as ev

    session = new_session(require_tls, rules=rules)
    events = session.receive_from_upstream(greeting)
    actions: dict[str, Callable[[], list[ev.Event]]] = {
        "client-tls": session.client_tls_established,
        "upstream-tls": session.upstream_tls_established,
        "timed-out": session.timed_out,
        "shutdown": session.shutdown,
        "upstream-closed": session.upstream_closed,
        "client-closed": session.client_closed,
    }
    for step in steps:
        if step.what == "client":
            if not session.client_paused:
                events += session.receive_from_client(step.data)
        elif step.what == "upstream":
            if not session.upstream_paused:
                events += session.receive_from_upstream(step.data)
        else:
            events += actions[step.what]()
        held = held_bytes(session)
        assert held <= SESSION_MEMORY_BOUND, f"session holds {held} octets"
    events += session.upstream_closed()
    events += session.client_closed()
    closes = [event for event in events if isinstance(event, ev.Close)]
    assert len(closes) == 1, closes
    assert session.closed


def session(data: bytes) -> None:
    greeting, steps = decode_steps(data)
    flags = data[0] if data else 0
    run_session(greeting, steps, require_tls=flags >= 128, rules=bool(flags & 64))


TARGETS: Final[dict[str, Callable[[bytes], None]]] = {
    "framer": framer,
    "command": command_parser,
    "response": response_parser,
    "session": session,
}
