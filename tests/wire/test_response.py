"""Server responses: the fast peek and the typed parse, on RFC and Dovecot examples."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imap_proxy.wire.errors import LimitExceeded, ParseError, ProtocolError, Side
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
    ResponseKind,
    ResponseType,
    StatusData,
    StatusResponse,
    capabilities_in_code,
    parse_response,
    peek_response,
)
from imap_proxy.wire.syntax import NIL, Atom, LiteralString, ParenList, Quoted
from tests.wire import frame

DOVECOT_GREETING = (
    b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS "
    b"AUTH=PLAIN] Dovecot (Debian) ready.\r\n"
)


def response(data: bytes) -> Response:
    (message,) = frame(data)
    return parse_response(message)


def responses(data: bytes) -> list[Response]:
    return [parse_response(message) for message in frame(data)]


# --- RFC 3501 section 8 sample session ---------------------------------------------------

RFC3501_HEADER = (
    b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
    b"From: Terry Gray <gray@cac.washington.edu>\r\n"
    b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
    b"To: imap@cac.washington.edu\r\n"
    b"cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\r\n"
    b"Message-Id: <B27397-0100000@cac.washington.edu>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
    b"\r\n"
)

RFC3501_FETCH = (
    b'* 12 FETCH (FLAGS (\\Seen) INTERNALDATE "17-Jul-1996 02:44:25 -0700" '
    b'RFC822.SIZE 4286 ENVELOPE ("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" '
    b'"IMAP4rev1 WG mtg summary and minutes" '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'((NIL NIL "imap" "cac.washington.edu")) '
    b'((NIL NIL "minutes" "CNRI.Reston.VA.US")'
    b'("John Klensin" NIL "KLENSIN" "MIT.EDU")) NIL NIL '
    b'"<B27397-0100000@cac.washington.edu>") '
    b'BODY ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92))\r\n'
)


def test_rfc3501_sample_session_status_and_numbers() -> None:
    transcript = (
        b"* OK IMAP4rev1 Service Ready\r\n"
        b"a001 OK LOGIN completed\r\n"
        b"* 18 EXISTS\r\n"
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
        b"* 2 RECENT\r\n"
        b"* OK [UNSEEN 17] Message 17 is the first unseen message\r\n"
        b"* OK [UIDVALIDITY 3857529045] UIDs valid\r\n"
        b"a002 OK [READ-WRITE] SELECT completed\r\n"
        b"* BYE IMAP4rev1 server terminating connection\r\n"
    )
    assert responses(transcript) == [
        StatusResponse(None, "OK", None, b"IMAP4rev1 Service Ready"),
        StatusResponse(b"a001", "OK", None, b"LOGIN completed"),
        NumberData(18, "EXISTS"),
        GenericUntagged(
            "FLAGS",
            (
                ParenList(
                    tuple(
                        Atom(flag)
                        for flag in (
                            b"\\Answered",
                            b"\\Flagged",
                            b"\\Deleted",
                            b"\\Seen",
                            b"\\Draft",
                        )
                    )
                ),
            ),
        ),
        NumberData(2, "RECENT"),
        StatusResponse(
            None,
            "OK",
            ResponseCode("UNSEEN", (Atom(b"17"),)),
            b"Message 17 is the first unseen message",
        ),
        StatusResponse(
            None, "OK", ResponseCode("UIDVALIDITY", (Atom(b"3857529045"),)), b"UIDs valid"
        ),
        StatusResponse(b"a002", "OK", ResponseCode("READ-WRITE", ()), b"SELECT completed"),
        StatusResponse(None, "BYE", None, b"IMAP4rev1 server terminating connection"),
    ]


def test_rfc3501_fetch_with_envelope_and_body() -> None:
    fetch = response(RFC3501_FETCH)
    assert isinstance(fetch, FetchData)
    assert fetch.number == 12
    assert [name for name, _ in fetch.items] == [
        "FLAGS",
        "INTERNALDATE",
        "RFC822.SIZE",
        "ENVELOPE",
        "BODY",
    ]
    assert fetch.get("FLAGS") == ParenList((Atom(b"\\Seen"),))
    assert fetch.get("INTERNALDATE") == Quoted(b"17-Jul-1996 02:44:25 -0700")
    assert fetch.get("RFC822.SIZE") == Atom(b"4286")
    envelope = fetch.get("ENVELOPE")
    assert isinstance(envelope, ParenList)
    assert len(envelope.items) == 10
    assert envelope.items[7] == NIL
    cc = envelope.items[6]
    assert isinstance(cc, ParenList)
    assert cc.items[1] == ParenList(
        (Quoted(b"John Klensin"), NIL, Quoted(b"KLENSIN"), Quoted(b"MIT.EDU"))
    )
    body = fetch.get("BODY")
    assert isinstance(body, ParenList)
    assert body.items[:2] == (Quoted(b"TEXT"), Quoted(b"PLAIN"))
    assert fetch.get("UID") is None


def test_rfc3501_fetch_with_header_literal() -> None:
    data = b"* 12 FETCH (BODY[HEADER] {%d}\r\n" % len(RFC3501_HEADER) + RFC3501_HEADER + b")\r\n"
    assert response(data) == FetchData(12, (("BODY[HEADER]", LiteralString(RFC3501_HEADER)),))


def test_fetch_with_unkept_body_literal_still_parses() -> None:
    message = Message((b"* 3 FETCH (UID 9 BODY[] {500000}\r\n", b" FLAGS ())\r\n"), (None,))
    assert parse_response(message) == FetchData(
        3, (("UID", Atom(b"9")), ("BODY[]", LiteralString(None)), ("FLAGS", ParenList(())))
    )


def test_fetch_item_names_are_uppercased_with_their_sections() -> None:
    fetch = response(b'* 1 FETCH (uid 4 body[header.fields (from)]<0> "x" Body[] "")\r\n')
    assert isinstance(fetch, FetchData)
    assert [name for name, _ in fetch.items] == ["UID", "BODY[HEADER.FIELDS (FROM)]<0>", "BODY[]"]


def test_rfc3501_list_and_store_echo() -> None:
    transcript = (
        b"* 12 FETCH (FLAGS (\\Seen \\Deleted))\r\n"
        b'* LIST () "/" blurdybloop\r\n'
        b'* LIST (\\Noselect) "/" foo\r\n'
        b'* LIST () "/" foo/bar\r\n'
    )
    assert responses(transcript) == [
        FetchData(12, (("FLAGS", ParenList((Atom(b"\\Seen"), Atom(b"\\Deleted")))),)),
        ListData("LIST", (), b"/", b"blurdybloop"),
        ListData("LIST", ("\\Noselect",), b"/", b"foo"),
        ListData("LIST", (), b"/", b"foo/bar"),
    ]


# --- Dovecot and other servers -------------------------------------------------------


def test_dovecot_greeting() -> None:
    greeting = response(DOVECOT_GREETING)
    assert isinstance(greeting, StatusResponse)
    assert (greeting.tag, greeting.status, greeting.text) == (
        None,
        "OK",
        b"Dovecot (Debian) ready.",
    )
    assert capabilities_in_code(greeting.code) == [
        "IMAP4rev1",
        "SASL-IR",
        "LOGIN-REFERRALS",
        "ID",
        "ENABLE",
        "IDLE",
        "LITERAL+",
        "STARTTLS",
        "AUTH=PLAIN",
    ]
    assert peek_response(DOVECOT_GREETING) == ResponseKind(
        ResponseType.UNTAGGED, None, "OK", None, capability_code=True
    )


def test_capability_code_in_tagged_ok_and_capability_data() -> None:
    tagged = response(b"a1 OK [CAPABILITY IMAP4rev1 IDLE MOVE] Logged in\r\n")
    assert isinstance(tagged, StatusResponse)
    assert capabilities_in_code(tagged.code) == ["IMAP4rev1", "IDLE", "MOVE"]
    assert capabilities_in_code(ResponseCode("ALERT", ())) is None
    assert capabilities_in_code(None) is None
    assert capabilities_in_code(ResponseCode("CAPABILITY", b"A  B")) == ["A", "B"]
    assert response(b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=GSSAPI LOGINDISABLED\r\n") == (
        CapabilityData(("IMAP4rev1", "STARTTLS", "AUTH=GSSAPI", "LOGINDISABLED"))
    )


def test_list_with_quoted_literal_and_nil_delimiter() -> None:
    transcript = (
        b'* LIST (\\HasNoChildren \\Trash) "." "Deleted Items"\r\n'
        b'* LIST (\\HasNoChildren) "/" {13}\r\nSent & Drafts\r\n'
        b"* LIST (\\Noselect) NIL INBOX\r\n"
        b'* LSUB () "\\\\" "a\\\\b"\r\n'
        b'* XLIST (\\Inbox) "/" Inbox\r\n'
        b'* LIST (\\Subscribed) "/" "Foo" ("CHILDINFO" ("SUBSCRIBED"))\r\n'
        b'* LIST () "/" NIL\r\n'
    )
    assert responses(transcript) == [
        ListData("LIST", ("\\HasNoChildren", "\\Trash"), b".", b"Deleted Items"),
        ListData("LIST", ("\\HasNoChildren",), b"/", b"Sent & Drafts"),
        ListData("LIST", ("\\Noselect",), None, b"INBOX"),
        ListData("LSUB", (), b"\\", b"a\\b"),
        ListData("XLIST", ("\\Inbox",), b"/", b"Inbox"),
        ListData(
            "LIST",
            ("\\Subscribed",),
            b"/",
            b"Foo",
            (ParenList((Quoted(b"CHILDINFO"), ParenList((Quoted(b"SUBSCRIBED"),)))),),
        ),
        ListData("LIST", (), b"/", b"NIL"),
    ]


def test_list_literal_mailbox_keeps_its_exact_octets() -> None:
    name = b"Entw\xc3\xbcrfe"
    assert response(b'* LIST () "/" {%d}\r\n' % len(name) + name + b"\r\n") == ListData(
        "LIST", (), b"/", name
    )


def test_status_data() -> None:
    assert response(b"* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\r\n") == StatusData(
        b"blurdybloop", (("MESSAGES", 231), ("UIDNEXT", 44292))
    )
    assert response(b'* STATUS "Deleted Items" (highestmodseq 18446744073709551615)\r\n') == (
        StatusData(b"Deleted Items", (("HIGHESTMODSEQ", 18446744073709551615),))
    )


def test_id_data() -> None:
    assert response(b'* ID ("name" "Dovecot" "version" NIL)\r\n') == IdData(
        [(b"name", b"Dovecot"), (b"version", None)]
    )
    assert response(b"* ID NIL\r\n") == IdData(None)


def test_generic_untagged_data() -> None:
    assert response(b"* SEARCH 2 84 882\r\n") == GenericUntagged(
        "SEARCH", (Atom(b"2"), Atom(b"84"), Atom(b"882"))
    )
    assert response(b"* SEARCH\r\n") == GenericUntagged("SEARCH", ())
    assert response(b"* ENABLED CONDSTORE\r\n") == GenericUntagged("ENABLED", (Atom(b"CONDSTORE"),))
    assert response(b'* NAMESPACE (("" "/")) NIL NIL\r\n') == GenericUntagged(
        "NAMESPACE", (ParenList((ParenList((Quoted(b""), Quoted(b"/"))),)), NIL, NIL)
    )
    assert response(b"* 5 XFOO a\r\n") == GenericUntagged("XFOO", (Atom(b"a"),), number=5)
    assert response(b"* 3 expunge\r\n") == NumberData(3, "EXPUNGE")


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (
            b"* OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n",
            ResponseCode("COPYUID", (Atom(b"38505"), Atom(b"304,319:320"), Atom(b"3956:3958"))),
        ),
        (
            b"* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\r\n",
            ResponseCode(
                "PERMANENTFLAGS", (ParenList((Atom(b"\\Deleted"), Atom(b"\\Seen"), Atom(b"\\*"))),)
            ),
        ),
        (
            b"a NO [BADCHARSET (UTF-8 US-ASCII)] x\r\n",
            ResponseCode("BADCHARSET", (ParenList((Atom(b"UTF-8"), Atom(b"US-ASCII"))),)),
        ),
        (b"a NO [TRYCREATE] No such mailbox\r\n", ResponseCode("TRYCREATE", ())),
        (b"* NO [ALERT] x\r\n", ResponseCode("ALERT", ())),
        (
            b"* BYE [REFERRAL imap://u@[::1]/] x\r\n",
            ResponseCode("REFERRAL", (Atom(b"imap://u@[::1]/"),)),
        ),
        (b'* OK [X-ODD "unterminated] x\r\n', ResponseCode("X-ODD", b'"unterminated')),
        (b"* OK [uidnext 4392] Predicted next UID\r\n", ResponseCode("UIDNEXT", (Atom(b"4392"),))),
    ],
)
def test_response_codes(line: bytes, code: ResponseCode) -> None:
    parsed = response(line)
    assert isinstance(parsed, StatusResponse)
    assert parsed.code == code


def test_status_text_edge_cases() -> None:
    assert response(b"* OK\r\n") == StatusResponse(None, "OK", None, b"")
    assert response(b"a ok [ALERT]\r\n") == StatusResponse(b"a", "OK", ResponseCode("ALERT"), b"")
    assert response(b"* PREAUTH ready\r\n") == StatusResponse(None, "PREAUTH", None, b"ready")
    assert response(b"a BAD  two spaces\r\n") == StatusResponse(b"a", "BAD", None, b" two spaces")


def test_continuations() -> None:
    assert response(b"+ idling\r\n") == Continuation(b"idling")
    assert response(b"+ \r\n") == Continuation(b"")
    assert response(b"+\r\n") == Continuation(b"")
    assert response(b"+ dXNlcg==\r\n") == Continuation(b"dXNlcg==")


@pytest.mark.parametrize(
    "line",
    [
        b"a BYE x\r\n",
        b"a PREAUTH x\r\n",
        b"a FETCH (x)\r\n",
        b"a+ OK x\r\n",
        b"* OK [ALERT x\r\n",
        b"* OK []\r\n",
        b"* 12 FETCH FLAGS\r\n",
        b"* 12 FETCH (FLAGS)\r\n",
        b"* 12 FETCH ((x) y)\r\n",
        b"* 12 EXISTS x\r\n",
        b"* 123456789012345678901 EXISTS\r\n",
        b"* STATUS x (MESSAGES many)\r\n",
        b"* STATUS x (MESSAGES)\r\n",
        b'* LIST () "/"\r\n',
        b'* LIST x "/" y\r\n',
        b'* LIST ("\\\\x") "/" y\r\n',
        b'* ID ("a")\r\n',
        b'* CAPABILITY "IMAP4rev1"\r\n',
        b"*\r\n",
        b"* \r\n",
        b"\r\n",
    ],
)
def test_malformed_responses(line: bytes) -> None:
    with pytest.raises(ParseError) as raised:
        parse_response(Message.from_line(line))
    assert raised.value.side is Side.UPSTREAM


def test_status_response_with_literal_is_refused() -> None:
    with pytest.raises(ParseError):
        response(b"* OK text {3}\r\nabc\r\n")
    with pytest.raises(ParseError):
        response(b"+ text {3}\r\nabc\r\n")


def test_nesting_limit() -> None:
    deep = b"* 1 FETCH (BODYSTRUCTURE " + b"(" * 70 + b")" * 70 + b")\r\n"
    with pytest.raises(LimitExceeded) as raised:
        response(deep)
    assert raised.value.side is Side.UPSTREAM
    assert isinstance(parse_response(Message.from_line(deep), max_depth=80), FetchData)


# --- peek ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"+ go ahead\r\n", ResponseKind(ResponseType.CONTINUATION)),
        (b"+\r\n", ResponseKind(ResponseType.CONTINUATION)),
        (b"* 12 FETCH (FLAGS ())\r\n", ResponseKind(ResponseType.UNTAGGED, None, "FETCH", 12)),
        (b"* 3 expunge\r\n", ResponseKind(ResponseType.UNTAGGED, None, "EXPUNGE", 3)),
        (b'* list () "/" x\r\n', ResponseKind(ResponseType.UNTAGGED, None, "LIST")),
        (b"* BYE bye\r\n", ResponseKind(ResponseType.UNTAGGED, None, "BYE")),
        (b"* CAPABILITY IMAP4rev1\r\n", ResponseKind(ResponseType.UNTAGGED, None, "CAPABILITY")),
        (b"a1 OK done\r\n", ResponseKind(ResponseType.TAGGED, b"a1", "OK")),
        (
            b"a1 no [capability IMAP4rev1] x\r\n",
            ResponseKind(ResponseType.TAGGED, b"a1", "NO", None, capability_code=True),
        ),
        (
            b"* OK [CAPABILITY IMAP4rev1]\n",
            ResponseKind(ResponseType.UNTAGGED, None, "OK", None, capability_code=True),
        ),
        (b"* OK see [CAPABILITY x]\r\n", ResponseKind(ResponseType.UNTAGGED, None, "OK")),
        (
            b"* 1 FETCH (BODY[CAPABILITY] x)\r\n",
            ResponseKind(ResponseType.UNTAGGED, None, "FETCH", 1),
        ),
        (b"a1 BYE x\r\n", ResponseKind(ResponseType.MALFORMED)),
        (b"a+1 OK x\r\n", ResponseKind(ResponseType.MALFORMED)),
        (b"* 12\r\n", ResponseKind(ResponseType.MALFORMED)),
        (b"*\r\n", ResponseKind(ResponseType.MALFORMED)),
        (b"* \r\n", ResponseKind(ResponseType.MALFORMED)),
        (b"\r\n", ResponseKind(ResponseType.MALFORMED)),
        (b"* " + b"X" * 100 + b"\r\n", ResponseKind(ResponseType.MALFORMED)),
    ],
)
def test_peek_response(line: bytes, kind: ResponseKind) -> None:
    assert peek_response(line) == kind


def test_peek_is_status() -> None:
    assert peek_response(b"* PREAUTH x\r\n").is_status
    assert peek_response(b"a OK x\r\n").is_status
    assert not peek_response(b"* 1 EXISTS\r\n").is_status
    assert not peek_response(b"+ x\r\n").is_status


# --- properties ------------------------------------------------------------------------

_RESPONSE_PIECES = st.lists(
    st.sampled_from(
        [
            b"* ",
            b"a1 ",
            b"+ ",
            b"OK ",
            b"NO ",
            b"BYE ",
            b"12 ",
            b"FETCH ",
            b"LIST ",
            b"STATUS ",
            b"ID ",
            b"CAPABILITY ",
            b"EXISTS",
            b"[",
            b"]",
            b"(",
            b")",
            b'"',
            b"NIL ",
            b"\\Seen ",
            b"{2}\r\nab",
            b"\r\n",
            b"BODY[HEADER] ",
            b"x ",
            b"7 ",
        ]
    ),
    max_size=40,
).map(b"".join)


@given(st.one_of(_RESPONSE_PIECES, st.binary(max_size=200)))
def test_any_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    try:
        messages = frame(data)
    except ProtocolError:
        return
    for message in messages:
        kind = peek_response(message.first_line)
        try:
            parsed = parse_response(message)
        except ProtocolError as error:
            assert error.side is Side.UPSTREAM
            continue
        if isinstance(parsed, StatusResponse):
            expected = ResponseType.UNTAGGED if parsed.tag is None else ResponseType.TAGGED
            assert (kind.type, kind.tag, kind.word) == (expected, parsed.tag, parsed.status)
        elif isinstance(parsed, Continuation):
            assert kind.type is ResponseType.CONTINUATION
        else:
            assert kind.type is ResponseType.UNTAGGED


@given(st.binary(max_size=300))
def test_peek_never_raises(data: bytes) -> None:
    assert isinstance(peek_response(data), ResponseKind)
