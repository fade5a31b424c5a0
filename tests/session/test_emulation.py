"""Emulated commands in the sans-IO session: MOVE run as a script of injected upstream
commands, with the ordering guarantees around it (earlier commands finish first, later
ones wait), untagged data routing, literals, and the upstream lost mid-way."""

from __future__ import annotations

from imap_proxy.session import events as ev
from imap_proxy.session.proxy import ProxySession
from imap_proxy.session.settings import SessionSettings
from tests.support.transcript import (
    CHUNKERS_FOR_UNIT,
    SHIPPED_RULES,
    expected_outputs,
    parse,
    replay,
)

UIDPLUS_GREETING = "* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE NAMESPACE UIDPLUS AUTH=PLAIN] ready"
OPENING = f"""
s: {UIDPLUS_GREETING}
>c: * OK [CAPABILITY IMAP4rev1 IDLE NAMESPACE UIDPLUS AUTH=PLAIN LITERAL+ ID] ready
C: a LOGIN u p
s: a OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE NAMESPACE UIDPLUS] Logged in
>c: a OK [CAPABILITY IMAP4rev1 IDLE NAMESPACE UIDPLUS LITERAL+ ID UNSELECT LIST-STATUS MOVE] Logged in
C: b SELECT INBOX
S: b OK [READ-WRITE] Select completed
"""


def check(text: str, **settings: object) -> list[ev.Event]:
    steps = parse(text.replace("\n    ", "\n"))
    chosen = SessionSettings(**{"rules": SHIPPED_RULES, **settings})  # type: ignore[arg-type]
    for chunker in CHUNKERS_FOR_UNIT:
        result = replay(steps, chunker, chosen)
        want_client, want_upstream = expected_outputs(steps)
        assert result.to_client.decode() == want_client.decode()
        assert result.to_upstream.decode() == want_upstream.decode()
    return result.events


def test_uid_move_looks_native_to_the_client() -> None:
    events = check(
        OPENING
        + """
    c: c UID MOVE 4:5 Sent
    >s: ipx1 UID COPY 4:5 Sent
    s: ipx1 OK [COPYUID 77 4:5 10:11] Copy completed.
    >s: ipx2 UID STORE 4:5 +FLAGS.SILENT (\\Deleted)
    s: * 4 FETCH (UID 4 MODSEQ (5))
    s: ipx2 OK Store completed.
    >s: ipx3 UID EXPUNGE 4:5
    s: * 9 EXISTS
    s: * 4 EXPUNGE
    s: * 4 EXPUNGE
    s: ipx3 OK Expunge completed.
    >c: * OK [COPYUID 77 4:5 10:11] Moved UIDs.
    >c: * 9 EXISTS
    >c: * 4 EXPUNGE
    >c: * 4 EXPUNGE
    >c: c OK Move completed
    """
    )
    assert ev.RuleApplied("move-emulation", "emulate_move") in events
    assert ev.EmulationFinished("move-emulation", "move", "ok") in events
    assert ev.CommandCompleted("c", "UID MOVE", "OK", by_proxy=True) in events


def test_a_literal_mailbox_name_goes_upstream_as_a_literal() -> None:
    check(
        OPENING
        + """
    c: c UID MOVE 1 {4}
    >c: + Ready for literal data
    c: Tr
    c:
    >s: ipx1 UID COPY 1 {4+}
    >s: Tr
    >s:
    s: ipx1 NO [TRYCREATE] Mailbox doesn't exist
    >c: c NO [TRYCREATE] Mailbox doesn't exist
    """
    )


def test_a_multipart_response_during_an_emulation_reaches_the_client() -> None:
    check(
        OPENING
        + """
    c: c UID MOVE 1 Sent
    >s: ipx1 UID COPY 1 Sent
    S: * 3 FETCH (BODY[HEADER.FIELDS (X)] {4}
    S: ab
    S: )
    s: ipx1 NO [OVERQUOTA] Quota exceeded
    >c: c NO [OVERQUOTA] Quota exceeded
    """
    )


def _session() -> tuple[ProxySession, list[ev.Event]]:
    session = ProxySession(SessionSettings(rules=SHIPPED_RULES))
    events = session.receive_from_upstream(UIDPLUS_GREETING.encode() + b"\r\n")
    events += session.receive_from_client(b"a LOGIN u p\r\n")
    events += session.receive_from_upstream(b"a OK [CAPABILITY IMAP4rev1 UIDPLUS] Logged in\r\n")
    return session, events


def _up(events: list[ev.Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, ev.SendToUpstream))


def _client(events: list[ev.Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, ev.SendToClient))


def test_pipelined_commands_around_a_move_are_answered_in_order() -> None:
    session, _ = _session()
    out = session.receive_from_client(
        b"b FETCH 1 FLAGS\r\nc MOVE 1 Sent\r\nd FETCH 1 FLAGS\r\ne NOOP\r\n"
    )
    # The MOVE waits for b, and d waits for the MOVE.
    assert _up(out) == b"b FETCH 1 FLAGS\r\n"
    assert session.client_paused
    out = session.receive_from_upstream(b"* 1 FETCH (FLAGS ())\r\nb OK Fetch completed.\r\n")
    assert _client(out) == b"* 1 FETCH (FLAGS ())\r\nb OK Fetch completed.\r\n"
    assert _up(out) == b"ipx1 FETCH 1 (UID)\r\n"
    out = session.receive_from_upstream(b"* 1 FETCH (UID 8)\r\nipx1 OK Fetch completed.\r\n")
    assert _up(out) == b"ipx2 UID COPY 8 Sent\r\n"
    out = session.receive_from_upstream(b"ipx2 OK [COPYUID 5 8 1] Copy completed.\r\n")
    out += session.receive_from_upstream(b"ipx3 OK Store completed.\r\n")
    assert _up(out) == b"ipx3 UID STORE 8 +FLAGS.SILENT (\\Deleted)\r\nipx4 UID EXPUNGE 8\r\n"
    out = session.receive_from_upstream(b"* 1 EXPUNGE\r\nipx4 OK Expunge completed.\r\n")
    assert (
        _client(out)
        == b"* OK [COPYUID 5 8 1] Moved UIDs.\r\n* 1 EXPUNGE\r\nc OK Move completed\r\n"
    )
    # Only now do the commands behind the MOVE go upstream.
    assert _up(out) == b"d FETCH 1 FLAGS\r\ne NOOP\r\n"
    assert not session.client_paused


def test_upstream_lost_mid_move_says_bye_and_ends_the_session() -> None:
    session, _ = _session()
    session.receive_from_client(b"c UID MOVE 1 Sent\r\n")
    out = session.receive_from_upstream(b"ipx1 OK [COPYUID 5 1 1] Copy completed.\r\n")
    assert _up(out) == b"ipx2 UID STORE 1 +FLAGS.SILENT (\\Deleted)\r\n"
    out = session.upstream_closed()
    assert _client(out) == (
        b"* BYE [UNAVAILABLE] Upstream server closed the connection during UID MOVE\r\n"
    )
    assert ev.EmulationFinished("move-emulation", "move", "failed") in out
    assert ev.Close("upstream-lost") in out
    assert session.closed


def test_drain_waits_for_a_running_emulation() -> None:
    session, _ = _session()
    session.receive_from_client(b"c UID MOVE 1 Sent\r\n")
    out = session.shutdown()
    assert _client(out) == b""
    out = session.receive_from_upstream(b"ipx1 NO [TRYCREATE] No such mailbox\r\n")
    assert _client(out) == (
        b"c NO [TRYCREATE] No such mailbox\r\n* BYE [UNAVAILABLE] Server shutting down\r\n"
    )
    assert ev.EmulationFinished("move-emulation", "move", "failed") in out


def test_move_passes_through_where_the_upstream_has_move() -> None:
    session = ProxySession(SessionSettings(rules=SHIPPED_RULES))
    session.receive_from_upstream(UIDPLUS_GREETING.encode() + b"\r\n")
    session.receive_from_client(b"a LOGIN u p\r\n")
    session.receive_from_upstream(b"a OK [CAPABILITY IMAP4rev1 UIDPLUS MOVE] Logged in\r\n")
    out = session.receive_from_client(b"c UID MOVE 1 Sent\r\n")
    assert _up(out) == b"c UID MOVE 1 Sent\r\n"


def test_move_is_advertised_in_capabilities_sent_during_login_not_before() -> None:
    session = ProxySession(SessionSettings(rules=SHIPPED_RULES))
    out = session.receive_from_upstream(UIDPLUS_GREETING.encode() + b"\r\n")
    assert b"MOVE" not in _client(out)  # pre-login lists are partial: nothing promised
    session.receive_from_client(b"a LOGIN u wrong\r\n")
    out = session.receive_from_upstream(b"a NO [AUTHENTICATIONFAILED] Failed\r\n")
    session.receive_from_client(b"b CAPABILITY\r\n")
    out = session.receive_from_upstream(b"* CAPABILITY IMAP4rev1 UIDPLUS\r\nb OK done\r\n")
    assert b"MOVE" not in _client(out)
    session.receive_from_client(b"c LOGIN u p\r\n")
    out = session.receive_from_upstream(b"* CAPABILITY IMAP4rev1 UIDPLUS\r\nc OK Logged in\r\n")
    assert _client(out).startswith(
        b"* CAPABILITY IMAP4rev1 UIDPLUS LITERAL+ ID NAMESPACE UNSELECT LIST-STATUS MOVE\r\n"
    )


def test_a_held_exists_is_released_before_the_moves_expunges() -> None:
    rules = SHIPPED_RULES.only(["delay-newmail", "move-emulation"])
    session = ProxySession(SessionSettings(rules=rules))
    session.receive_from_upstream(UIDPLUS_GREETING.encode() + b"\r\n")
    session.receive_from_client(b"a LOGIN u p\r\n")
    session.receive_from_upstream(b"a OK [CAPABILITY IMAP4rev1 UIDPLUS] Logged in\r\n")
    session.receive_from_client(b"b STATUS Sent (MESSAGES)\r\n")
    out = session.receive_from_upstream(b"* 5 EXISTS\r\n* STATUS Sent (MESSAGES 0)\r\nb OK\r\n")
    assert b"EXISTS" not in _client(out)  # held, as delay-newmail wants
    session.receive_from_client(b"c UID MOVE 1 Sent\r\n")
    session.receive_from_upstream(b"ipx1 OK [COPYUID 5 1 1] Copy completed.\r\n")
    session.receive_from_upstream(b"ipx2 OK Store completed.\r\n")
    out = session.receive_from_upstream(b"* 1 EXPUNGE\r\nipx3 OK Expunge completed.\r\n")
    # The client must count message 5 before it is told one message went away.
    assert _client(out) == (
        b"* 5 EXISTS\r\n* OK [COPYUID 5 1 1] Moved UIDs.\r\n* 1 EXPUNGE\r\nc OK Move completed\r\n"
    )


def test_client_gone_mid_move_ends_the_session_and_reports_it() -> None:
    session, _ = _session()
    session.receive_from_client(b"c UID MOVE 1 Sent\r\n")
    out = session.client_closed()
    assert ev.EmulationFinished("move-emulation", "move", "failed") in out
    assert ev.Close("client-closed") in out
    # What the upstream says afterwards goes nowhere and breaks nothing.
    assert session.receive_from_upstream(b"ipx1 OK [COPYUID 5 1 1] Done\r\n") == []
