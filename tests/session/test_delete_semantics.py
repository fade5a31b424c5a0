"""The delete-semantics rules in the sans-IO session: EXPUNGE scoped by UID, an emulation's
EXPUNGEs followed by the rules that map numbers to UIDs, and an emulated CLOSE that
leaves the session out of the selected state."""

from __future__ import annotations

from imap_proxy.quirks.model import load_rules
from imap_proxy.session import events as ev
from imap_proxy.session.proxy import ProxySession
from imap_proxy.session.settings import SessionSettings

SHIPPED = load_rules()
# The shipped defaults plus the opt-in scoping rule.
RULES = SHIPPED.only([r.id for r in SHIPPED.enabled] + ["scope-expunge-to-session"])
GREETING = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE NAMESPACE UIDPLUS AUTH=PLAIN] ready\r\n"


def _session() -> ProxySession:
    session = ProxySession(SessionSettings(rules=RULES))
    session.receive_from_upstream(GREETING)
    session.receive_from_client(b"a LOGIN u p\r\n")
    session.receive_from_upstream(b"a OK [CAPABILITY IMAP4rev1 UIDPLUS] Logged in\r\n")
    session.receive_from_client(b"b SELECT INBOX\r\n")
    session.receive_from_upstream(b"* 3 EXISTS\r\nb OK [READ-WRITE] Select completed\r\n")
    session.receive_from_client(b"c UID FETCH 1:* (UID)\r\n")
    session.receive_from_upstream(
        b"* 1 FETCH (UID 10)\r\n* 2 FETCH (UID 11)\r\n* 3 FETCH (UID 12)\r\nc OK Fetched\r\n"
    )
    return session


def _up(events: list[ev.Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, ev.SendToUpstream))


def _client(events: list[ev.Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, ev.SendToClient))


def test_expunge_goes_upstream_as_uid_expunge_of_this_sessions_deletions() -> None:
    session = _session()
    out = session.receive_from_client(b"d STORE 2 +FLAGS (\\Deleted)\r\n")
    assert _up(out) == b"d STORE 2 +FLAGS (\\Deleted)\r\n"
    session.receive_from_upstream(b"* 2 FETCH (FLAGS (\\Deleted))\r\nd OK Store completed\r\n")
    out = session.receive_from_client(b"e EXPUNGE\r\n")
    assert _up(out) == b"ipx1 UID EXPUNGE 11\r\n"
    out = session.receive_from_upstream(b"* 2 EXPUNGE\r\nipx1 OK Expunge completed\r\n")
    assert _client(out) == b"* 2 EXPUNGE\r\ne OK Expunge completed\r\n"
    assert ev.EmulationFinished("scope-expunge-to-session", "scope_expunge", "ok") in out


def test_the_expunges_of_an_emulated_move_shift_the_numbers_rules_follow() -> None:
    session = _session()
    session.receive_from_client(b"d UID MOVE 10 Sent\r\n")
    session.receive_from_upstream(b"ipx1 OK [COPYUID 5 10 1] Copy completed\r\n")
    session.receive_from_upstream(b"ipx2 OK Store completed\r\n")
    out = session.receive_from_upstream(b"* 1 EXPUNGE\r\nipx3 OK Expunge completed\r\n")
    assert b"* 1 EXPUNGE\r\nd OK Move completed\r\n" in _client(out)
    # Message 1 is now the one with UID 11, for the scoping rule too.
    session.receive_from_client(b"e STORE 1 +FLAGS.SILENT (\\Deleted)\r\n")
    session.receive_from_upstream(b"e OK Store completed\r\n")
    out = session.receive_from_client(b"f EXPUNGE\r\n")
    assert _up(out) == b"ipx4 UID EXPUNGE 11\r\n"


def test_an_emulated_close_leaves_the_selected_state() -> None:
    session = _session()
    session.receive_from_client(b"d UID STORE 12 +FLAGS (\\Deleted)\r\n")
    session.receive_from_upstream(b"* 3 FETCH (UID 12 FLAGS (\\Deleted))\r\nd OK Stored\r\n")
    out = session.receive_from_client(b"e CLOSE\r\n")
    assert _up(out) == b"ipx1 UID EXPUNGE 12\r\n"
    out = session.receive_from_upstream(b"* 3 EXPUNGE\r\nipx1 OK Expunge completed\r\n")
    assert _up(out) == b'ipx2 EXAMINE "imap-proxy/no such mailbox/unselect"\r\n'
    out = session.receive_from_upstream(b"ipx2 NO Mailbox doesn't exist\r\n")
    assert _client(out) == b"e OK CLOSE completed\r\n"  # CLOSE sends no EXPUNGE
    # Nothing is selected any more: the UNSELECT emulation says so at once.
    out = session.receive_from_client(b"f UNSELECT\r\n")
    assert _up(out) == b""
    assert _client(out) == b"f BAD No mailbox selected\r\n"
