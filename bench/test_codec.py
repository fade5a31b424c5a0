"""Codec micro-benchmarks (pytest-benchmark): `python -m pytest bench --benchmark-only`.

How this works: each benchmark builds its input once (a FETCH response stream with large
literals, thousands of short untagged lines, typical commands and responses), then times
one pass of the sans-IO code over it: the framer alone, the grammar parsers, and the whole
`ProxySession` relaying a FETCH stream or answering small round trips (no sockets, so
this is the proxy's own CPU cost per byte and per message). After timing, throughput is
put in `extra_info` (MB/s, messages/s, from the fastest round) for the JSON/table output.
Every benchmark also asserts what it processed, so a broken codec cannot look fast.
`bench/` is outside the default test paths: these run only when asked for.
"""

from __future__ import annotations

from typing import Any

import pytest

from imap_proxy.session.proxy import ProxySession
from imap_proxy.session.settings import SessionSettings
from imap_proxy.wire.command import parse_command
from imap_proxy.wire.errors import Side
from imap_proxy.wire.framer import NEED_DATA, FrameLimits, Framer, LinePart, LiteralData
from imap_proxy.wire.message import Message
from imap_proxy.wire.response import parse_response

READ_SIZE = 256 * 1024
BODY_SIZE = 1_000_000
BODIES = 10
SMALL_LINES = 10_000


def _fetch_stream(count: int, size: int) -> bytes:
    body = (b"0123456789abcdefghijklmnopqrstuvwxyz" * (size // 36 + 1))[: size - 2] + b"\r\n"
    parts = [
        b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (n, n, len(body)) + body + b")\r\n"
        for n in range(1, count + 1)
    ]
    return b"".join(parts)


def _chunks(data: bytes, size: int = READ_SIZE) -> list[bytes]:
    return [data[offset : offset + size] for offset in range(0, len(data), size)]


def _throughput(benchmark: Any, octets: int, messages: int) -> None:
    fastest = benchmark.stats.stats.min
    benchmark.extra_info["MB/s"] = round(octets / fastest / 1e6, 1)
    benchmark.extra_info["messages/s"] = round(messages / fastest)


def test_framer_large_literals(benchmark: Any) -> None:
    chunks = _chunks(_fetch_stream(BODIES, BODY_SIZE))
    limits = FrameLimits(max_line_length=16 * 1024 * 1024, max_literal_size=1 << 32)

    def frame() -> tuple[int, int]:
        framer = Framer(Side.UPSTREAM, limits)
        literal_octets = lines = 0
        for chunk in chunks:
            framer.feed(chunk)
            while (event := framer.next_event()) is not NEED_DATA:
                if isinstance(event, LiteralData):
                    literal_octets += len(event.data)
                else:
                    lines += 1
        return literal_octets, lines

    literal_octets, lines = benchmark(frame)
    assert literal_octets == BODIES * BODY_SIZE
    assert lines == 2 * BODIES
    _throughput(benchmark, sum(map(len, chunks)), BODIES)


def test_framer_small_lines(benchmark: Any) -> None:
    stream = b"".join(
        b"* %d FETCH (UID %d FLAGS (\\Seen \\Answered))\r\n" % (n, n)
        for n in range(1, SMALL_LINES + 1)
    )
    chunks = _chunks(stream, 64 * 1024)

    def frame() -> int:
        framer = Framer(Side.UPSTREAM)
        count = 0
        for chunk in chunks:
            framer.feed(chunk)
            while isinstance(framer.next_event(), LinePart):
                count += 1
        return count

    assert benchmark(frame) == SMALL_LINES
    _throughput(benchmark, len(stream), SMALL_LINES)


COMMANDS = (
    b"a1 SELECT INBOX\r\n",
    b"a2 UID FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])\r\n",
    b"a3 UID STORE 17,19:23 +FLAGS.SILENT (\\Deleted \\Seen)\r\n",
    b'a4 LIST "" "Deleted Items/*"\r\n',
    b'a5 STATUS "Deleted Items" (MESSAGES UNSEEN UIDNEXT)\r\n',
)


def test_parse_commands(benchmark: Any) -> None:
    messages = [Message.from_line(line) for line in COMMANDS * 200]

    def parse() -> int:
        return sum(1 for message in messages if parse_command(message).tag)

    assert benchmark(parse) == len(messages)
    _throughput(benchmark, sum(len(m.first_line) for m in messages), len(messages))


RESPONSES = (
    b"* 12 FETCH (UID 4827 FLAGS (\\Seen \\Flagged) RFC822.SIZE 48213)\r\n",
    b'* LIST (\\HasNoChildren \\Trash) "." "Deleted Items"\r\n',
    b'* STATUS "INBOX" (MESSAGES 231 UNSEEN 3 UIDNEXT 44292)\r\n',
    b"a2 OK [COPYUID 1700000000 4:7 100:103] Copy completed (0.002 + 0.000 secs).\r\n",
    b"* 3 EXPUNGE\r\n",
)


def test_parse_responses(benchmark: Any) -> None:
    messages = [Message.from_line(line) for line in RESPONSES * 200]

    def parse() -> int:
        return sum(1 for message in messages if parse_response(message) is not None)

    assert benchmark(parse) == len(messages)
    _throughput(benchmark, sum(len(m.first_line) for m in messages), len(messages))


GREETING = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE UIDPLUS MOVE ID] Dovecot ready.\r\n"


def _logged_in_session() -> ProxySession:
    session = ProxySession(SessionSettings())
    session.receive_from_upstream(GREETING)
    session.receive_from_client(b"a0 LOGIN user pass\r\n")
    session.receive_from_upstream(b"a0 OK Logged in\r\n")
    session.receive_from_client(b"a1 SELECT INBOX\r\n")
    session.receive_from_upstream(b"* 10 EXISTS\r\na1 OK [READ-WRITE] Select completed\r\n")
    return session


def _sent_to_client(events: list[Any]) -> int:
    return sum(len(event.data) for event in events if type(event).__name__ == "SendToClient")


def test_session_relays_large_fetch(benchmark: Any) -> None:
    """Upstream FETCH stream through the whole sans-IO session (what a big FETCH costs)."""
    stream = _fetch_stream(BODIES, BODY_SIZE)
    chunks = _chunks(stream + b"f1 OK Fetch completed\r\n")
    session = _logged_in_session()

    def relay() -> int:
        session.receive_from_client(b"f1 UID FETCH 1:* (UID BODY.PEEK[])\r\n")
        return sum(_sent_to_client(session.receive_from_upstream(chunk)) for chunk in chunks)

    assert benchmark(relay) == sum(map(len, chunks))
    _throughput(benchmark, len(stream), BODIES)


def test_session_small_round_trips(benchmark: Any) -> None:
    """NOOP in, NOOP upstream, OK back: the session's cost per small command."""
    session = _logged_in_session()
    rounds = 1000

    def round_trips() -> int:
        relayed = 0
        for _ in range(rounds):
            session.receive_from_client(b"n1 NOOP\r\n")
            relayed += _sent_to_client(session.receive_from_upstream(b"n1 OK NOOP completed.\r\n"))
        return relayed

    assert benchmark(round_trips) == rounds * len(b"n1 OK NOOP completed.\r\n")
    _throughput(benchmark, rounds * 31, rounds)


@pytest.mark.parametrize("size", [4096, 65536, READ_SIZE])
def test_framer_read_size(benchmark: Any, size: int) -> None:
    """How the read size changes the framer's cost per octet of literal data."""
    chunks = _chunks(_fetch_stream(4, BODY_SIZE), size)

    def frame() -> int:
        framer = Framer(Side.UPSTREAM)
        octets = 0
        for chunk in chunks:
            framer.feed(chunk)
            while (event := framer.next_event()) is not NEED_DATA:
                if isinstance(event, LiteralData):
                    octets += len(event.data)
        return octets

    assert benchmark(frame) == 4 * BODY_SIZE
    _throughput(benchmark, sum(map(len, chunks)), 4)
