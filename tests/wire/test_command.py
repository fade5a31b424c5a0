"""Client commands: the fast peek, the generic parse, mailbox arguments and ID."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imap_proxy.wire import command as command_module
from imap_proxy.wire.command import (
    Command,
    is_valid_tag,
    mailbox_args,
    parse_command,
    parse_fetch,
    parse_id_params,
    peek_command,
)
from imap_proxy.wire.errors import LimitExceeded, ParseError, ProtocolError, Side
from imap_proxy.wire.lexer import DEFAULT_MAX_DEPTH
from imap_proxy.wire.message import Message
from imap_proxy.wire.syntax import (
    Atom,
    LiteralString,
    ParenList,
    Quoted,
    astring_bytes,
    mailbox_bytes,
)
from tests.wire import frame


def command(data: bytes) -> Command:
    (message,) = frame(data, Side.CLIENT)
    return parse_command(message)


# --- peek ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a001 LOGIN smith sesame\r\n", (b"a001", "LOGIN")),
        (b"A1 uid fetch 1:* (FLAGS)\r\n", (b"A1", "UID FETCH")),
        (b"x UID MOVE 4 Trash\n", (b"x", "UID MOVE")),
        (b"3 noop\r\n", (b"3", "NOOP")),
        (b"t]1 CAPABILITY\r\n", (b"t]1", "CAPABILITY")),
        (b"a LOGIN {4}\r\n", (b"a", "LOGIN")),
        (b'a XLIST "" *\r\n', (b"a", "XLIST")),
        (b"a NOOP", (b"a", "NOOP")),
    ],
)
def test_peek_command(line: bytes, expected: tuple[bytes, str]) -> None:
    assert peek_command(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        b"DONE\r\n",
        b"dXNlcgB1c2VyAHBhc3M=\r\n",
        b"* OK x\r\n",
        b"+ go\r\n",
        b"a+b NOOP\r\n",
        b"a* NOOP\r\n",
        b"a\r\n",
        b"a \r\n",
        b" NOOP\r\n",
        b"a UID\r\n",
        b"a UID \r\n",
        b"a (NOOP)\r\n",
        b"a N\xc3\xa9\r\n",
        b"\r\n",
        b"",
    ],
)
def test_peek_command_refuses_lines_without_tag_and_name(line: bytes) -> None:
    assert peek_command(line) is None


def test_tag_alphabet() -> None:
    assert is_valid_tag(b"a.b-c_1]")
    for bad in (b"", b"+", b"*", b"a b", b"a(", b"a%", b'a"', b"a\\", b"a{", b"\xc3\xa9"):
        assert not is_valid_tag(bad), bad


# --- parse -----------------------------------------------------------------------------


def test_login_with_literals() -> None:
    cmd = command(b"a1 LOGIN {11}\r\nFRED FOOBAR {7}\r\nfat man\r\n")
    assert cmd == Command(
        b"a1", "LOGIN", (LiteralString(b"FRED FOOBAR"), LiteralString(b"fat man"))
    )


def test_login_with_quoted_password() -> None:
    cmd = command(b'a001 login SMITH "se\\"same"\r\n')
    assert cmd.name == "LOGIN"
    assert cmd.args == (Atom(b"SMITH"), Quoted(b'se"same'))


def test_append_with_flags_date_and_literal() -> None:
    body = b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\nSubject: afternoon meeting\r\n\r\nHi\r\n"
    data = (
        b'A003 APPEND saved-messages (\\Seen) "07-Feb-1994 21:52:25 -0800" {%d}\r\n' % len(body)
        + body
        + b"\r\n"
    )
    cmd = command(data)
    assert cmd == Command(
        b"A003",
        "APPEND",
        (
            Atom(b"saved-messages"),
            ParenList((Atom(b"\\Seen"),)),
            Quoted(b"07-Feb-1994 21:52:25 -0800"),
            LiteralString(body),
        ),
    )
    assert mailbox_args(cmd) == [0]


def test_append_with_unkept_message_body() -> None:
    message = Message((b"a APPEND INBOX {99999}\r\n", b"\r\n"), (None,))
    assert parse_command(message).args == (Atom(b"INBOX"), LiteralString(None))


def test_uid_fetch_with_sections() -> None:
    cmd = command(
        b"a UID FETCH 1:5,7,* (UID FLAGS BODY.PEEK[HEADER.FIELDS (From Subject)]<0.2048> "
        b"BODY.PEEK[])\r\n"
    )
    assert cmd == Command(
        b"a",
        "UID FETCH",
        (
            Atom(b"1:5,7,*"),
            ParenList(
                (
                    Atom(b"UID"),
                    Atom(b"FLAGS"),
                    Atom(b"BODY.PEEK[HEADER.FIELDS (From Subject)]<0.2048>"),
                    Atom(b"BODY.PEEK[]"),
                )
            ),
        ),
    )
    assert cmd.uid


def test_search_with_literal_charset_string() -> None:
    cmd = command(b"A284 SEARCH CHARSET UTF-8 TEXT {6}\r\nXXXXXX\r\n")
    assert cmd.args == (
        Atom(b"CHARSET"),
        Atom(b"UTF-8"),
        Atom(b"TEXT"),
        LiteralString(b"XXXXXX"),
    )


def test_store_and_noop_and_lowercase_verbs() -> None:
    assert command(b"A003 store 2:4 +FLAGS (\\Deleted)\r\n") == Command(
        b"A003", "STORE", (Atom(b"2:4"), Atom(b"+FLAGS"), ParenList((Atom(b"\\Deleted"),)))
    )
    assert command(b"a NOOP\r\n") == Command(b"a", "NOOP", ())


def test_id_params() -> None:
    cmd = command(b'a023 ID ("name" "x" "version" NIL)\r\n')
    assert parse_id_params(cmd) == [(b"name", b"x"), (b"version", None)]
    assert parse_id_params(command(b"a ID NIL\r\n")) is None
    with pytest.raises(ParseError):
        parse_id_params(command(b'a ID ("name")\r\n'))
    with pytest.raises(ParseError):
        parse_id_params(command(b"a NOOP\r\n"))


def test_id_params_with_literal_value() -> None:
    cmd = command(b'a ID ("name" {4}\r\nMutt)\r\n')
    assert parse_id_params(cmd) == [(b"name", b"Mutt")]


@pytest.mark.parametrize(
    ("line", "names"),
    [
        (b"a SELECT INBOX\r\n", [b"INBOX"]),
        (b'a EXAMINE "Deleted Items"\r\n', [b"Deleted Items"]),
        (b"a CREATE Trash\r\n", [b"Trash"]),
        (b"a DELETE Trash\r\n", [b"Trash"]),
        (b'a RENAME "Old" "New"\r\n', [b"Old", b"New"]),
        (b"a SUBSCRIBE Bin\r\n", [b"Bin"]),
        (b"a UNSUBSCRIBE Bin\r\n", [b"Bin"]),
        (b'a LIST "" "*"\r\n', [b"", b"*"]),
        (b'a LSUB "" %\r\n', [b"", b"%"]),
        (b"a STATUS Trash (MESSAGES UNSEEN)\r\n", [b"Trash"]),
        (b"a COPY 1:2 Trash\r\n", [b"Trash"]),
        (b"a MOVE 1:2 Trash\r\n", [b"Trash"]),
        (b'a UID COPY 4:5 "[Gmail]/Trash"\r\n', [b"[Gmail]/Trash"]),
        (b"a UID MOVE 4:5 NIL\r\n", [b"NIL"]),
        (b'a LIST (SUBSCRIBED) "" "Sent"\r\n', [b"", b"Sent"]),
        (b"a FETCH 1 FLAGS\r\n", []),
        (b"a SELECT\r\n", []),
    ],
)
def test_mailbox_args(line: bytes, names: list[bytes]) -> None:
    cmd = command(line)
    assert [mailbox_bytes(cmd.args[index]) for index in mailbox_args(cmd)] == names


def test_list_extended_pattern_list() -> None:
    cmd = command(b'a LIST "" ("INBOX" "Trash") RETURN (CHILDREN)\r\n')
    indices = mailbox_args(cmd)
    assert indices == [0, 1]
    assert cmd.args[1] == ParenList((Quoted(b"INBOX"), Quoted(b"Trash")))


@pytest.mark.parametrize(
    "line",
    [
        b"* NOOP\r\n",
        b"+ NOOP\r\n",
        b"a+ NOOP\r\n",
        b"a\r\n",
        b"a (x)\r\n",
        b"a UID\r\n",
        b"a UID (x)\r\n",
        b'a LOGIN "x\r\n',
        b"  \r\n",
    ],
)
def test_malformed_commands(line: bytes) -> None:
    with pytest.raises(ParseError) as raised:
        parse_command(Message.from_line(line))
    assert raised.value.side is Side.CLIENT


def test_nesting_limit_is_a_parameter() -> None:
    message = Message.from_line(b"a STORE 1 FLAGS ((x))\r\n")
    with pytest.raises(LimitExceeded):
        parse_command(message, max_depth=1)
    assert parse_command(message, max_depth=2).name == "STORE"


def test_astring_of_login_arguments() -> None:
    cmd = command(b"a LOGIN user {4}\r\npass\r\n")
    assert [astring_bytes(arg) for arg in cmd.args] == [b"user", b"pass"]


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    try:
        messages = frame(data, Side.CLIENT)
    except ProtocolError:
        return
    for message in messages:
        try:
            cmd = parse_command(message)
        except ProtocolError as error:
            assert error.side is Side.CLIENT
            continue
        assert peek_command(message.first_line) == (cmd.tag, cmd.name)


_WORD = st.text(alphabet="abcXYZ019.-", min_size=1, max_size=8)


@given(
    tag=st.text(alphabet="aZ09.]-_", min_size=1, max_size=6),
    verb=_WORD,
    uid=st.booleans(),
    rest=st.sampled_from(["", " 1:*", ' "x y"', " (FLAGS)", " {3}"]),
)
def test_peek_agrees_with_parse(tag: str, verb: str, uid: bool, rest: str) -> None:
    line = f"{tag} {'uid ' if uid else ''}{verb}{rest}\r\n".encode()
    literals: tuple[bytes, ...] = (b"abc",) if rest == " {3}" else ()
    lines = (line, b"\r\n") if literals else (line,)
    cmd = parse_command(Message(lines, literals))
    expected = ("UID " if uid else "") + verb.upper()
    assert cmd.name == expected
    assert peek_command(line) == (tag.encode(), expected)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a  LOGIN u p\r\n", (b"a", "LOGIN")),
        (b"a UID   FETCH 1 FLAGS\r\n", (b"a", "UID FETCH")),
        (b"Jz  Jz \n \x10", (b"Jz", "JZ")),  # the atheris finding, verbatim
    ],
)
def test_peek_takes_runs_of_spaces_as_the_parser_does(
    line: bytes, expected: tuple[bytes, str]
) -> None:
    # Regression (found by the `command` fuzz target): the parser read these as commands
    # while the peek, which decides what the session tracks, did not.
    assert peek_command(line) == expected
    lines = line.split(b"\n", 1)
    command = parse_command(Message.from_line(lines[0] + b"\n"))
    assert (command.tag, command.name) == expected


_REPEATED = st.sampled_from(
    [
        b"FETCH 1:* (FLAGS)",
        b"UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE 5)",
        b"uid  store 1 +FLAGS (\\Seen)",
        b'SELECT "INBOX"',
        b"NOOP",
        b"SEARCH (x",  # an error, remembered never
        b"STORE 1 FLAGS ((((((((((((((((((((((((((((((((((((((x))))))))))))))))))))))))))))))))))))",
        b'LOGIN joe "secret"',  # never remembered: credentials
    ]
)


@given(
    tags=st.lists(st.text(alphabet="aZ09.-_[]", min_size=1, max_size=6), min_size=2), rest=_REPEATED
)
def test_a_remembered_parse_is_the_parse(tags: list[str], rest: bytes) -> None:
    """Whatever the tag and however often the same text comes, the parse (or the error,
    with its text) is the one a fresh parse of the whole line gives."""
    for tag in tags:
        message = Message.from_line(tag.encode() + b" " + rest + b"\r\n")
        try:
            fresh: Command | str = command_module._parse(message, DEFAULT_MAX_DEPTH)
        except ProtocolError as error:
            fresh = str(error)
        try:
            got: Command | str = parse_command(message)
        except ProtocolError as error:
            got = str(error)
        assert got == fresh


def test_credentials_are_never_remembered() -> None:
    parse_command(Message.from_line(b'a LOGIN joe "secret"\r\n'))
    parse_command(Message.from_line(b"a2 AUTHENTICATE PLAIN AGpvZQBzZWNyZXQ=\r\n"))
    remembered = command_module._parse_after_tag.cache_info()
    parse_command(Message.from_line(b'b LOGIN joe "secret"\r\n'))
    assert command_module._parse_after_tag.cache_info() == remembered


def test_a_remembered_fetch_request_is_the_same_and_errors_stay_errors() -> None:
    first = parse_fetch(parse_command(Message.from_line(b"a FETCH 1:5 (FLAGS UID)\r\n")))
    again = parse_fetch(parse_command(Message.from_line(b"b FETCH 1:5 (FLAGS UID)\r\n")))
    assert again == first and first.items == (b"FLAGS", b"UID") and not first.uid
    for tag in (b"c", b"d"):
        with pytest.raises(ParseError):
            parse_fetch(parse_command(Message.from_line(tag + b" FETCH 1:5 ()\r\n")))
    remembered = command_module._parse_fetch.cache_info().currsize
    long_set = b",".join(b"%d" % n for n in range(1, 400))
    request = parse_fetch(parse_command(Message.from_line(b"e FETCH " + long_set + b" FLAGS\r\n")))
    assert request.items == (b"FLAGS",)
    assert command_module._parse_fetch.cache_info().currsize == remembered  # too long to keep
