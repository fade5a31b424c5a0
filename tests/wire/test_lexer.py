"""The lexer and the value helpers: tokens, literals, sections, nesting, errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imap_proxy.wire.errors import LimitExceeded, ParseError, ProtocolError, Side
from imap_proxy.wire.lexer import Lexer, lex_values
from imap_proxy.wire.message import Message
from imap_proxy.wire.syntax import (
    NIL,
    Atom,
    LiteralString,
    Nil,
    ParenList,
    Quoted,
    astring_bytes,
    id_params,
    is_atom,
    mailbox_bytes,
    split_section,
)
from tests.wire import frame


def lex(line: bytes) -> tuple[object, ...]:
    return lex_values(Message.from_line(line), Side.CLIENT)


def test_atoms_numbers_flags_and_sequence_sets() -> None:
    assert lex(b"FETCH 1:5,7,* \\Seen $Junk +FLAGS.SILENT 42\r\n") == (
        Atom(b"FETCH"),
        Atom(b"1:5,7,*"),
        Atom(b"\\Seen"),
        Atom(b"$Junk"),
        Atom(b"+FLAGS.SILENT"),
        Atom(b"42"),
    )


def test_nil_is_case_insensitive_but_longer_atoms_are_not_nil() -> None:
    assert lex(b"NIL nil Nil NILS\r\n") == (NIL, NIL, NIL, Atom(b"NILS"))


def test_list_wildcards_and_mailbox_atoms() -> None:
    assert lex(b'"" % ~peter/mail/* INBOX.Sent]\r\n') == (
        Quoted(b""),
        Atom(b"%"),
        Atom(b"~peter/mail/*"),
        Atom(b"INBOX.Sent]"),
    )


def test_quoted_strings_are_unescaped() -> None:
    assert lex(b'"a \\"b\\" \\\\c" "(x)" "\xc3\xa9"\r\n') == (
        Quoted(b'a "b" \\c'),
        Quoted(b"(x)"),
        Quoted(b"\xc3\xa9"),
    )


def test_unknown_escape_in_quoted_string_is_kept_verbatim() -> None:
    assert lex(b'"C:\\dir"\r\n') == (Quoted(b"C:\\dir"),)


def test_sections_lex_as_one_atom() -> None:
    assert lex(
        b"(FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100> BODY[] BINARY[1.2] RFC822.SIZE)\r\n"
    ) == (
        ParenList(
            (
                Atom(b"FLAGS"),
                Atom(b"BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>"),
                Atom(b"BODY[]"),
                Atom(b"BINARY[1.2]"),
                Atom(b"RFC822.SIZE"),
            )
        ),
    )


def test_section_may_hold_quoted_strings_with_brackets() -> None:
    assert lex(b'BODY[HEADER.FIELDS ("X]Y" Subject)]\r\n') == (
        Atom(b'BODY[HEADER.FIELDS ("X]Y" Subject)]'),
    )


def test_split_section() -> None:
    parts = split_section(b"BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>")
    assert (parts.name, parts.section, parts.partial) == (
        b"BODY.PEEK",
        b"HEADER.FIELDS (FROM TO)",
        b"0.100",
    )
    assert split_section(b"BODY[]").section == b""
    assert split_section(b"RFC822.SIZE").section is None


def test_nested_and_adjacent_lists() -> None:
    assert lex(b'((a)(b "c") ()) x\r\n') == (
        ParenList((ParenList((Atom(b"a"),)), ParenList((Atom(b"b"), Quoted(b"c"))), ParenList(()))),
        Atom(b"x"),
    )


def test_extra_and_trailing_spaces_and_missing_crlf_are_tolerated() -> None:
    assert lex(b"a   b ") == (Atom(b"a"), Atom(b"b"))
    assert lex(b"a b\n") == (Atom(b"a"), Atom(b"b"))


def test_literals_kept_unkept_binary_and_nonsynchronizing() -> None:
    message = Message(
        (b"A {3}\r\n", b" (~{2}\r\n", b" {4+}\r\n", b" {1-}\r\n", b")\r\n"),
        (b"abc", b"\x00\x01", None, b"z"),
    )
    assert lex_values(message, Side.CLIENT) == (
        Atom(b"A"),
        LiteralString(b"abc"),
        ParenList(
            (
                LiteralString(b"\x00\x01", binary=True),
                LiteralString(None),
                LiteralString(b"z"),
            )
        ),
    )


def test_empty_literal() -> None:
    (message,) = frame(b"x {0}\r\n y\r\n")
    assert lex_values(message, Side.CLIENT) == (Atom(b"x"), LiteralString(b""), Atom(b"y"))


def test_literals_through_the_real_framer() -> None:
    (message,) = frame(b"a LOGIN {4}\r\nuser {6}\r\nsecret\r\n", Side.CLIENT)
    assert lex_values(message, Side.CLIENT) == (
        Atom(b"a"),
        Atom(b"LOGIN"),
        LiteralString(b"user"),
        LiteralString(b"secret"),
    )


def test_nesting_limit() -> None:
    ok = b"(" * 64 + b")" * 64
    assert lex(ok)
    with pytest.raises(LimitExceeded) as raised:
        lex(b"(" * 65 + b")" * 65)
    assert raised.value.limit == "nesting"
    assert raised.value.side is Side.CLIENT
    with pytest.raises(LimitExceeded):
        lex_values(Message.from_line(b"((x))"), Side.UPSTREAM, max_depth=1)
    assert lex_values(Message.from_line(b"(x)"), Side.UPSTREAM, max_depth=1)


def test_huge_nesting_is_refused_without_recursion_error() -> None:
    with pytest.raises(LimitExceeded):
        lex(b"(" * 100_000)


@pytest.mark.parametrize(
    "line",
    [
        b'"unterminated\r\n',
        b'"ends in escape\\"\r\n',
        b"(a b\r\n",
        b"a)\r\n",
        b")\r\n",
        b"a\x01b\r\n",
        b"a\tb\r\n",
        b"x\ry\r\n",
        b"a\x00\r\n",
        b"{5} x\r\n",
        b"{5}\r\n",
        b"BODY[HEADER\r\n",
        b"BODY[HEADER.FIELDS {3}\r\n",
        b"(a\x7f)\r\n",
    ],
)
def test_malformed_lines_raise_parse_error(line: bytes) -> None:
    with pytest.raises(ParseError) as raised:
        lex(line)
    assert raised.value.side is Side.CLIENT


def test_literal_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ParseError, match="announced as 5"):
        lex_values(Message((b"a {5}\r\n", b"\r\n"), (b"abc",)), Side.UPSTREAM)


def test_line_not_ending_in_an_announcement_cannot_be_followed_by_a_literal() -> None:
    with pytest.raises(ParseError, match="without announcing"):
        lex_values(Message((b"a b\r\n", b"c\r\n"), (b"",)), Side.UPSTREAM)


def test_lines_and_literals_must_match() -> None:
    with pytest.raises(ParseError):
        Lexer(Message((b"a {1}\r\n",), (b"x",)), Side.UPSTREAM)
    with pytest.raises(ParseError):
        Lexer(Message((), ()), Side.UPSTREAM)


def test_code_mode_stops_at_closing_bracket() -> None:
    lexer = Lexer(Message.from_line(b"COPYUID 1 2:3 4:5] done"), Side.UPSTREAM)
    assert lexer.read_values(in_code=True) == (
        Atom(b"COPYUID"),
        Atom(b"1"),
        Atom(b"2:3"),
        Atom(b"4:5"),
    )
    assert lexer.rest_of_line() == b"] done"


def test_value_helpers() -> None:
    assert astring_bytes(Atom(b"a")) == b"a"
    assert astring_bytes(Quoted(b"b")) == b"b"
    assert astring_bytes(LiteralString(b"c")) == b"c"
    assert astring_bytes(LiteralString(None)) is None
    assert astring_bytes(Nil()) is None
    assert astring_bytes(ParenList(())) is None
    assert mailbox_bytes(Nil()) == b"NIL"
    assert mailbox_bytes(Quoted(b"Trash")) == b"Trash"
    assert is_atom(Atom(b"uid"), b"UID")
    assert not is_atom(Quoted(b"UID"), b"UID")
    assert is_atom(NIL, b"nil")


def test_id_params_helper() -> None:
    value = ParenList((Quoted(b"name"), Quoted(b"x"), Atom(b"version"), NIL))
    assert id_params(value, Side.CLIENT) == [(b"name", b"x"), (b"version", None)]
    assert id_params(NIL, Side.CLIENT) is None
    with pytest.raises(ParseError):
        id_params(ParenList((Quoted(b"name"),)), Side.CLIENT)
    with pytest.raises(ParseError):
        id_params(Atom(b"x"), Side.CLIENT)
    with pytest.raises(ParseError):
        id_params(ParenList((NIL, Quoted(b"x"))), Side.CLIENT)


@given(st.binary(max_size=300))
def test_any_line_lexes_or_raises_protocol_error(data: bytes) -> None:
    try:
        values = lex(data)
    except ProtocolError:
        return
    assert isinstance(values, tuple)


_IMAPISH = st.lists(
    st.sampled_from(
        [
            b"(",
            b")",
            b" ",
            b'"',
            b"\\",
            b"[",
            b"]",
            b"{",
            b"}",
            b"~",
            b"+",
            b"NIL",
            b"a",
            b"1",
            b"\r\n",
            b"\n",
            b"{3}\r\n",
            b"{0}\r\n",
            b"~{2}\r\n",
            b"\x00",
            b"<0.1>",
        ]
    ),
    max_size=60,
).map(b"".join)


@given(st.one_of(_IMAPISH, st.binary(max_size=200)))
def test_any_framed_bytes_lex_or_raise_protocol_error(data: bytes) -> None:
    try:
        messages = frame(data)
    except ProtocolError:
        return
    for message in messages:
        try:
            lex_values(message, Side.UPSTREAM, max_depth=3)
        except ProtocolError as error:
            assert error.side is Side.UPSTREAM
