"""Sequence sets, FETCH requests, and the stub FETCH responses built from them."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imap_proxy.wire.command import FetchRequest, command_set, parse_command, parse_fetch
from imap_proxy.wire.errors import ParseError, Side
from imap_proxy.wire.fetchstub import stub_fetch, stub_item
from imap_proxy.wire.response import FetchData, parse_response
from imap_proxy.wire.syntax import (
    STAR,
    Atom,
    LiteralString,
    Nil,
    ParenList,
    Quoted,
    encode_sequence_set,
    parse_sequence_set,
)
from tests.wire import frame


def fetch_of(line: bytes) -> FetchRequest:
    (message,) = frame(line, Side.CLIENT)
    return parse_fetch(parse_command(message))


def parsed_stub(data: bytes) -> FetchData:
    messages = frame(data)
    assert len(messages) == 1, data  # one whole response, nothing left over
    response = parse_response(messages[0])
    assert isinstance(response, FetchData)
    return response


# --- sequence sets -------------------------------------------------------------------


def test_sequence_set_ranges_star_and_members() -> None:
    found = parse_sequence_set(b"1:3,7,9:*,5:4", Side.CLIENT)
    assert found.ranges == ((1, 3), (7, 7), (9, STAR), (4, 5))
    assert found.members(10) == [1, 2, 3, 4, 5, 7, 9, 10]
    assert found.contains(10, 10) and not found.contains(6, 10)
    assert parse_sequence_set(b"*:3", Side.CLIENT).members(5) == [3, 4, 5]
    assert parse_sequence_set(b"*", Side.CLIENT).members(0) == []


@pytest.mark.parametrize("bad", [b"", b"0", b"1:0", b"a", b"1,,2", b"$", b"1:", b"-1", b"1:2:3"])
def test_sequence_set_refuses_what_is_not_one(bad: bytes) -> None:
    with pytest.raises(ParseError):
        parse_sequence_set(bad, Side.CLIENT)


@given(st.sets(st.integers(min_value=1, max_value=300), max_size=60))
def test_encoded_sequence_sets_read_back_as_the_same_numbers(numbers: set[int]) -> None:
    ordered = sorted(numbers)
    if not ordered:
        assert encode_sequence_set(ordered) == b""
        return
    encoded = encode_sequence_set(ordered)
    assert parse_sequence_set(encoded, Side.CLIENT).members(300) == ordered
    # compact: no two ranges that could have been one
    assert encoded.count(b",") + 1 == sum(
        1 for i, n in enumerate(ordered) if i == 0 or ordered[i - 1] != n - 1
    )


# --- FETCH requests ---------------------------------------------------------------------


def test_parse_fetch_items_sections_and_uid() -> None:
    request = fetch_of(b"a uid fetch 4:* (uid flags body.peek[HEADER.FIELDS (From)]<0.10>)\r\n")
    assert request.uid
    assert request.messages.ranges == ((4, STAR),)
    assert request.items == (b"UID", b"FLAGS", b"BODY.PEEK[HEADER.FIELDS (From)]<0.10>")


def test_parse_fetch_modifiers() -> None:
    request = fetch_of(b"t UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n")
    assert request.modifiers == (b"CHANGEDSINCE", b"VANISHED")
    assert fetch_of(b"t FETCH 1 FLAGS\r\n").modifiers == ()


@pytest.mark.parametrize(
    ("macro", "items"),
    [
        (b"ALL", (b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE")),
        (b"fast", (b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE")),
        (b"FULL", (b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY")),
        (b"rfc822.size", (b"RFC822.SIZE",)),
    ],
)
def test_parse_fetch_expands_macros(macro: bytes, items: tuple[bytes, ...]) -> None:
    assert fetch_of(b"t FETCH 1 " + macro + b"\r\n").items == items


@pytest.mark.parametrize(
    "line", [b"t FETCH\r\n", b"t FETCH 1\r\n", b"t FETCH x (FLAGS)\r\n", b"t FETCH 1 ()\r\n"]
)
def test_parse_fetch_refuses_malformed(line: bytes) -> None:
    with pytest.raises(ParseError):
        fetch_of(line)


def test_command_set_of_message_commands() -> None:
    (store,) = frame(b"t UID STORE 5,9 +FLAGS (\\Seen)\r\n", Side.CLIENT)
    found = command_set(parse_command(store))
    assert found is not None and found.ranges == ((5, 5), (9, 9))
    (noop,) = frame(b"t NOOP\r\n", Side.CLIENT)
    assert command_set(parse_command(noop)) is None


# --- stubs ------------------------------------------------------------------------------

EVERY_ITEM = (
    b"UID",
    b"FLAGS",
    b"RFC822.SIZE",
    b"INTERNALDATE",
    b"ENVELOPE",
    b"BODYSTRUCTURE",
    b"BODY",
    b"BODY[]",
    b"BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]",
    b"BODY.PEEK[1.2]<100.50>",
    b"BINARY.PEEK[1]",
    b"BINARY.SIZE[1]",
    b"RFC822",
    b"RFC822.HEADER",
    b"RFC822.TEXT",
    b"MODSEQ",
)


def test_stub_for_every_item_type_parses_with_the_right_types() -> None:
    stub = parsed_stub(stub_fetch(7, 42, EVERY_ITEM))
    assert stub.number == 7
    names = [name for name, _ in stub.items]
    assert names[0] == "UID" and names.count("UID") == 1  # first, once, though requested
    values = dict(stub.items)
    assert values["UID"].value == b"42"  # type: ignore[union-attr]
    assert values["FLAGS"] == ParenList(())
    assert values["RFC822.SIZE"].value == b"0"  # type: ignore[union-attr]
    assert values["INTERNALDATE"] == Quoted(b"01-Jan-1970 00:00:00 +0000")
    assert values["ENVELOPE"] == ParenList((Nil(),) * 10)
    for name in ("BODY", "BODYSTRUCTURE"):
        body = values[name]
        assert isinstance(body, ParenList)
        assert body.items[:2] == (Quoted(b"TEXT"), Quoted(b"PLAIN"))
        assert len(body.items) == 8  # type, subtype, params, id, desc, encoding, octets, lines
    for name in (
        "BODY[]",
        "BODY[HEADER.FIELDS (SUBJECT FROM)]",
        "BODY[1.2]<100>",
        "BINARY[1]",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.TEXT",
    ):
        assert values[name] == LiteralString(b""), name
    assert values["BINARY.SIZE[1]"].value == b"0"  # type: ignore[union-attr]
    assert values["MODSEQ"] == ParenList((Atom(b"1"),))


def test_stub_internaldate_is_valid_date_time() -> None:
    # RFC 2180's "00-Jan-0000" is not a date; strict parsers refuse it.
    date = parsed_stub(stub_fetch(1, 1, [b"INTERNALDATE"])).get("INTERNALDATE")
    assert isinstance(date, Quoted)
    parsed = datetime.datetime.strptime(date.value.decode(), "%d-%b-%Y %H:%M:%S %z")
    assert parsed.year == 1970


def test_stub_without_uid_or_known_items_is_still_a_valid_response() -> None:
    stub = parsed_stub(stub_fetch(3, None, [b"X-GM-MSGID", b"EMAILID"]))
    assert stub.items == (("FLAGS", ParenList(())),)
    assert stub_item(b"X-GM-LABELS") is None


def test_stub_keeps_one_value_per_response_item() -> None:
    stub = parsed_stub(stub_fetch(1, 5, [b"BODY[]", b"BODY.PEEK[]", b"FLAGS", b"FLAGS"]))
    assert [name for name, _ in stub.items] == ["UID", "BODY[]", "FLAGS"]


@given(st.lists(st.sampled_from(EVERY_ITEM), min_size=1, max_size=8), st.integers(1, 2**32 - 1))
def test_any_stub_parses(items: list[bytes], uid: int) -> None:
    stub = parsed_stub(stub_fetch(9, uid, items))
    assert stub.items[0][1].value == str(uid).encode()  # type: ignore[union-attr]


@given(st.binary(max_size=30))
def test_any_bytes_are_a_sequence_set_or_a_parse_error(data: bytes) -> None:
    try:
        found = parse_sequence_set(data, Side.CLIENT)
    except ParseError:
        return
    assert all(n >= 1 for n in found.members(50))
