"""The UTF-8 / modified UTF-7 bridge (RFC 6855 UTF8=ACCEPT for IMAP4rev1 upstreams)
through a sans-IO session, and its action on its own for the octets a transcript cannot
hold (names that are not UTF-8).

Transcripts (tests/support/transcript.py) are replayed whole, byte at a time and in
random chunks, with shipped rules whose client match is lifted.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from imap_proxy.quirks.actions.base import LocalAnswer, Rewrite
from imap_proxy.quirks.actions.utf8 import Utf8Accept
from imap_proxy.quirks.engine import SessionView
from imap_proxy.quirks.model import Utf8AcceptAction
from imap_proxy.session import events as ev
from imap_proxy.wire.command import Command
from imap_proxy.wire.mutf7 import decode_mutf7, encode_mutf7
from imap_proxy.wire.response import ListData, StatusData
from imap_proxy.wire.syntax import Atom, LiteralString, ParenList, Quoted, mailbox_bytes
from tests.quirks.test_liststatus import GREETING, LOGIN, check, rules

UTF8 = rules("utf8-accept")
RAW = rules("raw-8bit-mailbox-names")
ENABLED = "c: e1 ENABLE UTF8=ACCEPT\n>c: * ENABLED UTF8=ACCEPT\n>c: e1 OK ENABLE completed\n"


def test_utf8_accept_and_enable_are_advertised_after_login() -> None:
    check(
        GREETING
        + r"""
C: a1 CAPABILITY
S: * CAPABILITY IMAP4rev1 UIDPLUS LITERAL+
S: a1 OK done
C: a2 LOGIN alice secret
S: a2 OK Logged in
C: a3 CAPABILITY
s: * CAPABILITY IMAP4rev1 UIDPLUS LITERAL+
>c: * CAPABILITY IMAP4rev1 UIDPLUS LITERAL+ UTF8=ACCEPT ENABLE
S: a3 OK done
""",
        UTF8,
    )


def test_the_raw_name_rule_advertises_and_enables_nothing() -> None:
    check(
        GREETING
        + LOGIN
        + r"""
C: a3 CAPABILITY
S: * CAPABILITY IMAP4rev1 UIDPLUS LITERAL+
S: a3 OK done
C: e1 ENABLE UTF8=ACCEPT
S: e1 BAD Unknown command
""",
        RAW,
    )


def test_enable_is_answered_here_when_the_upstream_lacks_it() -> None:
    check(
        GREETING
        + LOGIN
        + r"""
c: e0 ENABLE CONDSTORE
>c: * ENABLED
>c: e0 OK ENABLE completed
c: e1 ENABLE CONDSTORE UTF8=ACCEPT
>c: * ENABLED UTF8=ACCEPT
>c: e1 OK ENABLE completed
""",
        rules("utf8-accept", "answer-enable"),
    )


def test_enable_with_other_names_goes_upstream_without_utf8_accept() -> None:
    check(
        "S: * OK [CAPABILITY IMAP4rev1 ENABLE CONDSTORE LITERAL+] hi\n"
        + LOGIN
        + r"""
c: e1 ENABLE CONDSTORE utf8=accept
>s: e1 ENABLE CONDSTORE
S: * ENABLED CONDSTORE
s: e1 OK Enabled
>c: * ENABLED UTF8=ACCEPT
>c: e1 OK Enabled
c: s1 SELECT "Entwürfe"
>s: s1 SELECT "Entw&APw-rfe"
S: s1 OK done
""",
        UTF8,
    )


def test_a_refused_enable_enables_nothing() -> None:
    check(
        "S: * OK [CAPABILITY IMAP4rev1 ENABLE LITERAL+] hi\n"
        + LOGIN
        + r"""
c: e1 ENABLE CONDSTORE UTF8=ACCEPT
>s: e1 ENABLE CONDSTORE
S: e1 BAD no
C: s1 SELECT "A&B"
S: s1 OK done
""",
        UTF8,
    )


def test_names_are_utf8_text_both_ways_once_enabled() -> None:
    events = check(
        GREETING
        + LOGIN
        + ENABLED
        + r"""
c: c1 CREATE "Entwürfe"
>s: c1 CREATE "Entw&APw-rfe"
S: c1 OK done
c: c2 SELECT "A&B"
>s: c2 SELECT "A&-B"
S: c2 OK done
C: c3 SELECT INBOX
S: c3 OK done
c: c4 RENAME "Entwürfe" "Brouillons d'été"
>s: c4 RENAME "Entw&APw-rfe" "Brouillons d'&AOk-t&AOk-"
S: c4 OK done
c: l1 LIST "" "Entw*"
>s: l1 LIST "" "Entw*"
s: * LIST (\HasNoChildren) "." "Entw&APw-rfe"
>c: * LIST (\HasNoChildren) "." {9}
>c: Entwürfe
S: * LIST (\HasNoChildren) "." Plain
s: * LIST (\HasNoChildren) "." "A&-B"
>c: * LIST (\HasNoChildren) "." "A&B"
S: l1 OK done
c: s1 STATUS "Entwürfe" (MESSAGES)
>s: s1 STATUS "Entw&APw-rfe" (MESSAGES)
s: * STATUS "Entw&APw-rfe" (MESSAGES 2)
>c: * STATUS {9}
>c: Entwürfe (MESSAGES 2)
S: s1 OK done
""",
        UTF8,
    )
    assert {e.rule_id for e in events if isinstance(e, ev.RuleApplied)} == {"utf8-accept"}


def test_without_enable_only_8bit_names_are_converted_and_replies_stay_mutf7() -> None:
    check(
        GREETING
        + LOGIN
        + r"""
c: c1 CREATE "Entwürfe"
>s: c1 CREATE "Entw&APw-rfe"
S: c1 OK done
C: c2 SELECT "Entw&APw-rfe"
S: c2 OK done
C: l1 LIST "" "*"
S: * LIST (\HasNoChildren) "." "Entw&APw-rfe"
S: l1 OK done
c: m1 UID COPY 1:3 "Entwürfe"
>s: m1 UID COPY 1:3 "Entw&APw-rfe"
S: m1 OK done
c: a1 APPEND "Entwürfe" {5+}
>s: a1 APPEND "Entw&APw-rfe" {5+}
C: hello
S: a1 OK done
""",
        RAW,
    )


def test_the_mapping_sees_mutf7_and_the_client_utf8() -> None:
    # The upstream's drafts folder is "Entwürfe"; Thunderbird's name for it is "Drafts".
    check(
        GREETING
        + LOGIN
        + ENABLED
        + r"""
C: l1 LIST "" "*"
s: * LIST (\HasNoChildren) "." "Entw&APw-rfe"
>c: * LIST (\HasNoChildren \Drafts) "." "Drafts"
s: * LIST (\HasNoChildren) "." "Entw&APw-rfe.&AMQ-"
>c: * LIST (\HasNoChildren) "." {9}
>c: Drafts.Ä
S: l1 OK done
c: s1 SELECT "Drafts.Ä"
>s: s1 SELECT "Entw&APw-rfe.&AMQ-"
S: s1 OK done
""",
        rules("utf8-accept", "common-special-folders"),
    )


def test_list_status_emulated_answers_are_converted_too() -> None:
    check(
        GREETING
        + LOGIN
        + ENABLED
        + r"""
c: l1 LIST "" "*" RETURN (STATUS (MESSAGES))
>s: ipx1 LIST "" "*"
s: * LIST () "." "&ZeVnLIqe-"
s: ipx1 OK done
>s: ipx2 STATUS "&ZeVnLIqe-" (MESSAGES)
s: * STATUS "&ZeVnLIqe-" (MESSAGES 5)
s: ipx2 OK done
>c: * LIST () "." {9}
>c: 日本語
>c: * STATUS {9}
>c: 日本語 (MESSAGES 5)
>c: l1 OK LIST completed
""",
        rules("utf8-accept", "list-status-emulation"),
    )


# --- the action alone --------------------------------------------------------------------


def _enabled_action() -> tuple[Utf8Accept, SessionView]:
    view = SessionView(authenticated=True, upstream_capabilities=["IMAP4rev1"])
    action = Utf8Accept("utf8-accept", Utf8AcceptAction(type="utf8_accept"))
    answer = action.on_command(Command(b"e", "ENABLE", (Atom(b"UTF8=ACCEPT"),)), view)
    assert answer == LocalAnswer(b"* ENABLED UTF8=ACCEPT\r\n", b"OK ENABLE completed")
    return action, view


def test_a_name_that_is_not_utf8_gets_no_and_never_reaches_the_upstream() -> None:
    view = SessionView(authenticated=True, upstream_capabilities=["IMAP4rev1"])
    action = Utf8Accept("raw", Utf8AcceptAction(type="utf8_accept", advertise=False))
    for command in (
        Command(b"a", "SELECT", (Quoted(b"Entw\xfcrfe"),)),  # Latin-1, not UTF-8
        Command(b"a", "LIST", (Quoted(b""), ParenList((Quoted(b"ok"), Quoted(b"\xc3("))))),
        Command(b"a", "RENAME", (Quoted(b"ok"), LiteralString(b"\xff"))),
    ):
        answer = action.on_command(command, view)
        assert answer == LocalAnswer(b"", b"NO [CANNOT] Mailbox name is not valid UTF-8")


def test_upstream_names_that_are_not_mutf7_are_shown_and_taken_back_verbatim() -> None:
    action, view = _enabled_action()
    odd = ListData("LIST", (), b".", b"Caf&-\xe9 &bad")
    assert action.on_response(odd, view) is None
    assert action.on_response(StatusData(b"x&AOk", (("MESSAGES", 1),)), view) is None
    select = Command(b"s", "SELECT", (Quoted(b"Caf&-\xe9 &bad"),))
    assert action.on_command(select, view) is None
    other = action.on_command(Command(b"s", "SELECT", (Quoted(b"Caf\xc3\xa9"),)), view)
    assert other == Rewrite(Command(b"s", "SELECT", (Quoted(b"Caf&AOk-"),)))


def test_nothing_happens_where_the_upstream_has_utf8_accept() -> None:
    view = SessionView(authenticated=True, upstream_capabilities=["IMAP4rev1", "UTF8=ACCEPT"])
    action = Utf8Accept("utf8-accept", Utf8AcceptAction(type="utf8_accept"))
    assert action.capabilities(["IMAP4rev1"], view) == ["IMAP4rev1"]
    assert action.on_command(Command(b"e", "ENABLE", (Atom(b"UTF8=ACCEPT"),)), view) is None
    assert action.on_command(Command(b"s", "SELECT", (Quoted("é".encode()),)), view) is None


def test_an_ascii_append_streams_untouched_and_its_errors_are_the_upstreams() -> None:
    check(
        GREETING
        + LOGIN
        + r"""
C: a1 APPEND INBOX (\Seen) {5+}
C: hello
S: a1 OK done
C: a2 APPEND INBOX {-5}
S: a2 BAD Invalid literal size
""",
        RAW,
    )


@given(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40))
@settings(max_examples=200, deadline=None)
def test_any_name_goes_up_as_mutf7_and_comes_back_as_the_same_utf8(name: str) -> None:
    action, view = _enabled_action()
    raw = name.encode()
    command = action.on_command(Command(b"s", "SELECT", (Quoted(raw),)), view)
    upstream = encode_mutf7(name)
    if upstream == raw:
        assert command is None
    else:
        assert isinstance(command, Rewrite)
        assert mailbox_bytes(command.command.args[0]) == upstream
    reply = action.on_response(ListData("LIST", (), b".", upstream), view)
    shown = upstream if reply is None else reply.mailbox  # type: ignore[union-attr]
    assert shown == raw
    assert decode_mutf7(upstream) == name
