"""The framer: chunking never changes framing; limits give protocol errors, not crashes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imap_proxy.wire.errors import LimitExceeded, ProtocolError, Side
from imap_proxy.wire.framer import (
    NEED_DATA,
    FrameEvent,
    FrameLimits,
    Framer,
    LinePart,
    LiteralData,
)

Frame = tuple[str, bytes]


def frames(chunks: list[bytes], limits: FrameLimits | None = None) -> list[Frame]:
    """Feed chunks; return lines and literal contents (literal chunks joined). Checks on
    the way that `has_input` is False only where there is nothing to frame."""
    framer = Framer(Side.CLIENT, limits)
    out: list[Frame] = []
    literal = bytearray()
    for chunk in chunks:
        framer.feed(chunk)
        while True:
            if not framer.has_input:
                assert framer.next_event() is NEED_DATA
                break
            event: FrameEvent = framer.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, LinePart):
                out.append(("line", event.raw))
            elif isinstance(event, LiteralData):
                literal += event.data
                if event.remaining == 0:
                    out.append(("literal", bytes(literal)))
                    literal.clear()
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


line_text = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"}", b""))


@st.composite
def imap_streams(draw: st.DrawFn) -> bytes:
    """Messages made of lines, some ending in literal announcements of every kind."""
    out = bytearray()
    for _ in range(draw(st.integers(1, 6))):
        for _ in range(draw(st.integers(0, 3))):
            body = draw(st.binary(max_size=60))
            marker = draw(st.sampled_from(["{%d}", "{%d+}", "{%d-}", "~{%d}"]))
            out += draw(line_text) + b" " + (marker % len(body)).encode() + b"\r\n" + body
        out += draw(line_text) + b"\r\n"
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(imap_streams(), st.lists(st.integers(0, 10_000), max_size=30))
def test_any_chunking_frames_into_the_same_messages(data: bytes, cuts: list[int]) -> None:
    assert frames(split(data, cuts)) == frames([data])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 10_000), max_size=30))
def test_arbitrary_bytes_frame_or_raise_protocol_errors(data: bytes, cuts: list[int]) -> None:
    limits = FrameLimits(max_line_length=64, max_literal_size=100)
    try:
        whole = frames([data], limits)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            frames(split(data, cuts), limits)
        return
    assert frames(split(data, cuts), limits) == whole


def test_lines_keep_their_exact_bytes_and_literals_stream() -> None:
    data = b"a1 APPEND INBOX (\\Seen) {11}\r\nhello world tail\r\n"
    assert frames([data]) == [
        ("line", b"a1 APPEND INBOX (\\Seen) {11}\r\n"),
        ("literal", b"hello world"),
        ("line", b" tail\r\n"),
    ]


def test_literal_announcement_details() -> None:
    framer = Framer(Side.CLIENT)
    framer.feed(b"a LOGIN ~{5+}\r\n")
    event = framer.next_event()
    assert isinstance(event, LinePart) and event.literal is not None
    assert (event.literal.size, event.literal.marker, event.literal.binary) == (5, b"+", True)
    assert event.raw[event.literal.start :] == b"~{5+}\r\n"
    assert not event.literal.synchronizing and framer.in_literal


def test_literal_chunks_are_not_held_back() -> None:
    framer = Framer(Side.UPSTREAM)
    framer.feed(b"* 1 FETCH (BODY[] {1000000}\r\n")
    assert isinstance(framer.next_event(), LinePart)
    framer.feed(b"x" * 4096)
    chunk = framer.next_event()
    assert isinstance(chunk, LiteralData)
    assert len(chunk.data) == 4096 and chunk.remaining == 1000000 - 4096
    assert framer.next_event() is NEED_DATA


def test_quoted_brace_is_not_a_literal() -> None:
    assert frames([b'a SELECT "odd{5}"\r\nb NOOP\r\n']) == [
        ("line", b'a SELECT "odd{5}"\r\n'),
        ("line", b"b NOOP\r\n"),
    ]


def test_cancelled_literal_returns_to_lines() -> None:
    framer = Framer(Side.CLIENT)
    framer.feed(b"a APPEND INBOX {10}\r\nb NOOP\r\n")
    assert isinstance(framer.next_event(), LinePart)
    framer.cancel_literal()
    event = framer.next_event()
    assert isinstance(event, LinePart) and event.raw == b"b NOOP\r\n"


def test_overlong_line_is_a_limit_error_even_without_newline() -> None:
    framer = Framer(Side.CLIENT, FrameLimits(max_line_length=100))
    framer.feed(b"x" * 101)
    with pytest.raises(LimitExceeded) as raised:
        framer.next_event()
    assert raised.value.limit == "line_length" and raised.value.side is Side.CLIENT


@pytest.mark.parametrize("size", [b"1001", b"99999999999999999999999999"])
def test_oversized_literal_is_a_limit_error(size: bytes) -> None:
    framer = Framer(Side.UPSTREAM, FrameLimits(max_literal_size=1000))
    framer.feed(b"* 1 FETCH (BODY[] {" + size + b"}\r\n")
    with pytest.raises(LimitExceeded) as raised:
        framer.next_event()
    assert raised.value.limit == "literal_size"


def test_has_input_is_true_while_anything_is_buffered_or_the_framer_is_broken() -> None:
    framer = Framer(Side.CLIENT, FrameLimits(max_line_length=10))
    assert not framer.has_input
    framer.feed(b"a NOOP")
    assert framer.has_input  # a partial line: next_event() has something to look at
    assert framer.next_event() is NEED_DATA
    framer.feed(b"\r\n")
    assert isinstance(framer.next_event(), LinePart)
    assert not framer.has_input
    framer.feed(b"x" * 20)
    with pytest.raises(LimitExceeded):
        framer.next_event()
    framer.discard_buffered()
    assert framer.has_input  # broken: next_event() raises again, it must be asked


def test_discard_buffered_drops_everything() -> None:
    framer = Framer(Side.CLIENT)
    framer.feed(b"a STARTTLS\r\nb LOGIN x y\r\n")
    assert isinstance(framer.next_event(), LinePart)
    assert framer.discard_buffered() == len(b"b LOGIN x y\r\n")
    assert framer.next_event() is NEED_DATA
