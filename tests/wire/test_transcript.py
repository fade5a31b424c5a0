"""The transcript text format: every byte string survives format -> parse, lines read back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imap_proxy.wire import transcript
from imap_proxy.wire.transcript import TraceLine, TranscriptError

PREFIXES = sorted(transcript.BYTE_PREFIXES)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(PREFIXES), st.binary(max_size=60)), max_size=12))
def test_any_bytes_round_trip(entries: list[tuple[str, bytes]]) -> None:
    lines = [TraceLine(prefix, data) for prefix, data in entries if data]
    assert transcript.parse(transcript.format_entries(lines)) == lines


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60).filter(lambda t: "\r" not in t and "\n" not in t))
def test_text_lines_are_written_as_text_when_they_can_be(text: str) -> None:
    data = text.encode() + b"\r\n"
    written = transcript.format_entry("S", data)
    if len(text.splitlines()) <= 1 and text.splitlines() == ([text] if text else []):
        assert written == (f"S: {text}" if text else "S:")
    else:
        assert written.startswith("S64: ")
    assert transcript.parse(written) == [TraceLine("S", data)]


@pytest.mark.parametrize(
    "data",
    [b"no line end", b"bare\nLF\r\n", b"a\rb\r\n", b"\xff\xfe\r\n", b"form\x0cfeed\r\n"],
)
def test_what_text_cannot_hold_is_base64(data: bytes) -> None:
    written = transcript.format_entry("C", data)
    assert written.startswith("C64: ")
    assert transcript.parse(written) == [TraceLine("C", data)]


def test_the_golden_transcript_conventions_hold() -> None:
    text = "# comment\n\ns: * OK hi\n>c: * OK [CAPABILITY IMAP4rev1] hi\nC: a NOOP\n!: shutdown\n"
    entries = transcript.parse(text)
    assert [(e.prefix, e.line) for e in entries] == [("s", 3), (">c", 4), ("C", 5), ("!", 6)]
    assert transcript.client_bytes(entries) == b"* OK [CAPABILITY IMAP4rev1] hi\r\n"
    assert transcript.upstream_bytes(entries) == b"a NOOP\r\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("X: nope", "line 1: no C:/S:"),
        ("S: ok\nC64: %%%", "line 2: bad base64"),
        ("!: reboot", "line 1: unknown directive"),
    ],
)
def test_bad_lines_name_their_line(text: str, message: str) -> None:
    with pytest.raises(TranscriptError, match=message):
        transcript.parse(text)
