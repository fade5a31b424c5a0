"""The encoder: string forms, whole messages, and parse(encode(x)) == x round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imap_proxy.wire.command import Command, parse_command
from imap_proxy.wire.encode import (
    MessageBuilder,
    astring_value,
    encode_astring,
    encode_capability_data,
    encode_command,
    encode_id_response,
    encode_mailbox,
    encode_response,
    encode_status_response,
    encode_untagged,
    encode_value,
    mailbox_value,
)
from imap_proxy.wire.errors import Side
from imap_proxy.wire.lexer import lex_values
from imap_proxy.wire.message import Message
from imap_proxy.wire.response import (
    CapabilityData,
    Continuation,
    FetchData,
    GenericUntagged,
    IdData,
    ListData,
    NumberData,
    Response,
    ResponseCode,
    StatusData,
    StatusResponse,
    parse_response,
)
from imap_proxy.wire.syntax import NIL, Atom, LiteralString, ParenList, Quoted, Value
from tests.wire import frame

# --- strings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"INBOX", (b"INBOX", None)),
        (b"a]b", (b"a]b", None)),
        (b"[", (b'"["', None)),
        (b"a[b]", (b'"a[b]"', None)),
        (b"Deleted Items", (b'"Deleted Items"', None)),
        (b'say "hi" \\o/', (b'"say \\"hi\\" \\\\o/"', None)),
        (b"", (b'""', None)),
        (b"NIL", (b'"NIL"', None)),
        (b"nil", (b'"nil"', None)),
        (b"a%", (b'"a%"', None)),
        (b"Entw\xc3\xbcrfe", (b"{9}", b"Entw\xc3\xbcrfe")),
        (b"two\r\nlines", (b"{10}", b"two\r\nlines")),
        (b"tab\there", (b"{8}", b"tab\there")),
    ],
)
def test_encode_astring(value: bytes, expected: tuple[bytes, bytes | None]) -> None:
    assert encode_astring(value) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (b"INBOX", (b"INBOX", None)),
        (b"inbox", (b"inbox", None)),
        (b"Trash", (b'"Trash"', None)),
        (b"Deleted Items", (b'"Deleted Items"', None)),
        (b"[Gmail]/Trash", (b'"[Gmail]/Trash"', None)),
        (b"&U,BTFw-", (b'"&U,BTFw-"', None)),
        (b"Caf\xc3\xa9", (b"{5}", b"Caf\xc3\xa9")),
    ],
)
def test_encode_mailbox(name: bytes, expected: tuple[bytes, bytes | None]) -> None:
    assert encode_mailbox(name) == expected


def test_value_constructors() -> None:
    assert astring_value(b"x") == Atom(b"x")
    assert astring_value(b"x y") == Quoted(b"x y")
    assert astring_value(b"\xff") == LiteralString(b"\xff")
    assert mailbox_value(b"Inbox") == Atom(b"Inbox")
    assert mailbox_value(b"Sent") == Quoted(b"Sent")


# --- messages --------------------------------------------------------------------------


def test_encode_command_with_literal_is_a_framed_message() -> None:
    message = encode_command(b"A1", "UID MOVE", [Atom(b"1:3"), LiteralString(b"Entw\xc3\xbcrfe")])
    assert message == Message((b"A1 UID MOVE 1:3 {9}\r\n", b"\r\n"), (b"Entw\xc3\xbcrfe",))
    assert frame(message.to_bytes(), Side.CLIENT) == [message]


def test_encode_command_literal_plus_and_binary() -> None:
    message = encode_command(
        b"a",
        "APPEND",
        [Atom(b"INBOX"), LiteralString(b"x\x00y", binary=True)],
        literal_marker=b"+",
    )
    assert message.to_bytes() == b"a APPEND INBOX ~{3+}\r\nx\x00y\r\n"
    with pytest.raises(ValueError):
        MessageBuilder(b"*")


def test_encode_command_without_args() -> None:
    assert encode_command(b"a", "NOOP", []).to_bytes() == b"a NOOP\r\n"


def test_encode_values() -> None:
    value = ParenList((Atom(b"FLAGS"), Atom(b"BODY.PEEK[HEADER.FIELDS (FROM TO)]"), NIL))
    assert encode_value(value) == Message.from_line(
        b"(FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO)] NIL)"
    )
    assert encode_value(Quoted(b"a\nb")) == Message((b"{3}\r\n", b""), (b"a\nb",))


@pytest.mark.parametrize("atom", [b"", b"a b", b"(x", b"a[b", b'a"', b"x\r\n", b"~{3}", b"x{3}"])
def test_unsendable_atoms_are_refused(atom: bytes) -> None:
    with pytest.raises(ValueError):
        encode_value(Atom(atom))


def test_unkept_literal_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        encode_command(b"a", "APPEND", [Atom(b"INBOX"), LiteralString(None)])


def test_untagged_capability_id_and_status_lines() -> None:
    assert encode_capability_data(["IMAP4rev1", "IDLE"]) == b"* CAPABILITY IMAP4rev1 IDLE\r\n"
    assert encode_id_response([("name", "x"), (b"version", None)]) == (
        b'* ID ("name" "x" "version" NIL)\r\n'
    )
    assert encode_id_response(None) == b"* ID NIL\r\n"
    assert encode_id_response([("name", "Caf\u00e9")]) == b'* ID ("name" {5}\r\nCaf\xc3\xa9)\r\n'
    assert encode_status_response(b"a1", "ok", None, "done") == b"a1 OK done\r\n"
    assert encode_status_response(None, "OK", "CAPABILITY IMAP4rev1 MOVE", "ready") == (
        b"* OK [CAPABILITY IMAP4rev1 MOVE] ready\r\n"
    )
    assert encode_status_response(b"a", "NO", "TRYCREATE", "") == b"a NO [TRYCREATE]\r\n"
    with pytest.raises(ValueError):
        encode_status_response(b"a", "OK", None, "two\r\nlines")
    assert encode_untagged("FETCH", [ParenList((Atom(b"UID"), Atom(b"7")))], number=3) == (
        Message.from_line(b"* 3 FETCH (UID 7)\r\n")
    )


def test_stub_fetch_response_encodes_and_parses() -> None:
    stub = FetchData(
        4,
        (
            ("UID", Atom(b"17")),
            ("FLAGS", ParenList(())),
            ("RFC822.SIZE", Atom(b"0")),
            ("BODY[HEADER.FIELDS (FROM)]", Quoted(b"")),
            ("INTERNALDATE", Quoted(b"01-Jan-1970 00:00:00 +0000")),
        ),
    )
    encoded = encode_response(stub)
    assert encoded.to_bytes() == (
        b'* 4 FETCH (UID 17 FLAGS () RFC822.SIZE 0 BODY[HEADER.FIELDS (FROM)] "" '
        b'INTERNALDATE "01-Jan-1970 00:00:00 +0000")\r\n'
    )
    assert parse_response(encoded) == stub


def test_list_response_with_renamed_mailbox() -> None:
    listed = ListData("LIST", ("\\HasNoChildren", "\\Trash"), b"/", b"Deleted Items")
    assert encode_response(listed).to_bytes() == (
        b'* LIST (\\HasNoChildren \\Trash) "/" "Deleted Items"\r\n'
    )
    inbox = ListData("LIST", (), None, b"INBOX")
    assert encode_response(inbox).to_bytes() == b"* LIST () NIL INBOX\r\n"


# --- round trips -----------------------------------------------------------------------

_ATOM_BYTES = st.from_regex(rb"[A-Za-z0-9\\$.:,*%+_\-\]<>=&/!#']+", fullmatch=True).filter(
    lambda value: value.upper() != b"NIL"
)
_SECTION_ATOMS = st.sampled_from(
    [
        b"BODY[]",
        b"BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>",
        b'BODY[HEADER.FIELDS ("A]")]',
        b"BINARY[1.2]",
        b"BODY[1.MIME]",
    ]
)
_QUOTED_BYTES = st.binary(max_size=20).filter(lambda v: not any(c in v for c in b"\x00\r\n"))

_scalars: st.SearchStrategy[Value] = st.one_of(
    st.builds(Atom, st.one_of(_ATOM_BYTES, _SECTION_ATOMS)),
    st.builds(Quoted, _QUOTED_BYTES),
    st.builds(LiteralString, st.binary(max_size=20), st.booleans()),
    st.just(NIL),
)
values: st.SearchStrategy[Value] = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4).map(lambda items: ParenList(tuple(items))),
    max_leaves=20,
)
_TAGS = st.from_regex(rb"[A-Za-z0-9.\]_-]{1,8}", fullmatch=True)
_NAMES = st.sampled_from(["NOOP", "LOGIN", "FETCH", "UID FETCH", "APPEND", "X-FOO", "ID"])


@given(tag=_TAGS, name=_NAMES, args=st.lists(values, max_size=5))
def test_command_round_trip(tag: bytes, name: str, args: list[Value]) -> None:
    message = encode_command(tag, name, args)
    assert parse_command(message) == Command(tag, name, tuple(args))
    assert frame(message.to_bytes(), Side.CLIENT) == [message]


@given(values)
def test_value_round_trip(value: Value) -> None:
    fragment = encode_value(value)
    message = Message((*fragment.lines[:-1], fragment.lines[-1] + b"\r\n"), fragment.literals)
    assert lex_values(message, Side.CLIENT) == (value,)


@given(st.binary(max_size=40))
def test_astring_round_trip(data: bytes) -> None:
    for token, literal in (encode_astring(data), encode_mailbox(data)):
        if literal is None:
            message = Message.from_line(b"a SELECT " + token + b"\r\n")
        else:
            message = Message((b"a SELECT " + token + b"\r\n", b"\r\n"), (literal,))
        (arg,) = parse_command(message).args
        assert isinstance(arg, Atom | Quoted | LiteralString)
        assert arg.value == data


_TEXT = st.binary(max_size=30).filter(lambda v: not any(c in v for c in b"\x00\r\n"))
_WORDS = st.from_regex(r"[A-Z][A-Z0-9-]{0,10}", fullmatch=True).filter(lambda w: w != "NIL")
_code_scalars: st.SearchStrategy[Value] = st.one_of(
    st.builds(Atom, _ATOM_BYTES.filter(lambda v: b"]" not in v)),
    st.builds(Quoted, _QUOTED_BYTES),
    st.just(NIL),
)
_code_values = st.recursive(
    _code_scalars,
    lambda children: st.lists(children, max_size=3).map(lambda items: ParenList(tuple(items))),
    max_leaves=8,
)
_codes = st.builds(ResponseCode, _WORDS, st.lists(_code_values, max_size=4).map(tuple))
_FLAGS = st.from_regex(r"\\?[A-Za-z][A-Za-z0-9]{0,8}", fullmatch=True).filter(
    lambda w: w.upper() != "NIL"
)
_RESERVED_KINDS = {
    "OK",
    "NO",
    "BAD",
    "BYE",
    "PREAUTH",
    "CAPABILITY",
    "LIST",
    "LSUB",
    "XLIST",
    "STATUS",
    "ID",
    "FETCH",
    "EXISTS",
    "EXPUNGE",
    "RECENT",
}


@st.composite
def _status_responses(draw: st.DrawFn) -> StatusResponse:
    tag = draw(st.one_of(st.none(), _TAGS))
    statuses = ["OK", "NO", "BAD"] if tag is not None else ["OK", "NO", "BAD", "BYE", "PREAUTH"]
    code = draw(st.one_of(st.none(), _codes))
    text = draw(_TEXT)
    if code is None and text.startswith(b"["):
        text = b"x" + text
    return StatusResponse(tag, draw(st.sampled_from(statuses)), code, text)


_numbers = st.integers(min_value=0, max_value=2**63)
responses: st.SearchStrategy[Response] = st.one_of(
    st.builds(Continuation, _TEXT),
    _status_responses(),
    st.builds(CapabilityData, st.lists(_WORDS, max_size=5).map(tuple)),
    st.builds(
        ListData,
        st.sampled_from(["LIST", "LSUB", "XLIST"]),
        st.lists(_FLAGS, max_size=3).map(tuple),
        st.one_of(st.none(), st.sampled_from([b"/", b".", b"\\", b'"'])),
        st.binary(max_size=20),
        st.lists(values, max_size=2).map(tuple),
    ),
    st.builds(
        StatusData,
        st.binary(max_size=20),
        st.lists(st.tuples(_WORDS, _numbers), max_size=4).map(tuple),
    ),
    st.builds(
        FetchData,
        _numbers,
        st.lists(
            st.tuples(st.one_of(_WORDS, _SECTION_ATOMS.map(lambda a: a.decode().upper())), values),
            max_size=4,
        ).map(tuple),
    ),
    st.builds(NumberData, _numbers, st.sampled_from(["EXISTS", "EXPUNGE", "RECENT"])),
    st.builds(
        IdData,
        st.one_of(
            st.none(),
            st.lists(
                st.tuples(st.binary(max_size=10), st.one_of(st.none(), st.binary(max_size=10))),
                max_size=4,
            ),
        ),
    ),
    st.builds(
        GenericUntagged,
        _WORDS.filter(lambda w: w not in _RESERVED_KINDS),
        st.lists(values, max_size=4).map(tuple),
        st.one_of(st.none(), _numbers),
    ),
)


@given(responses)
def test_response_round_trip(response: Response) -> None:
    message = encode_response(response)
    assert parse_response(message) == response
    assert frame(message.to_bytes()) == [message]
