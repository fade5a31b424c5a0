"""The delete-semantics rules through the real proxy against a real Dovecot, with the
mailboxes checked directly on Dovecot afterwards.

* outlook-delete-to-trash: an Outlook session's \\Deleted becomes a move to the trash -
  Dovecot's own MOVE (modern) or the MOVE emulation (legacy: no MOVE, UIDPLUS, a trash
  named by the rule's `trash_folder`); a move that fails leaves the plain flag; a
  client's COPY + \\Deleted move is not sent to the trash as well.
* scope-expunge-to-session: two sessions, B (directly on Dovecot) flags one message
  \\Deleted, A (through the proxy) another and EXPUNGEs or CLOSEs: only A's goes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from imap_proxy.config import ProxyConfig
from imap_proxy.quirks.fingerprint import FingerprintSet
from imap_proxy.quirks.model import LoadedRule, RuleSet, load_rules
from imap_proxy.quirks.store import QuirkSnapshot, RuleStore
from imap_proxy.session import events as ev
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.mailstate import flags_by_subject, seed, subjects
from tests.support.proxy import RawClient, running_proxy

NewUser = Callable[[DovecotInstance], MailUser]
TO_TRASH = "outlook-delete-to-trash"
SCOPED = "scope-expunge-to-session"


def rules(*enabled: str, **parameters: Any) -> RuleStore:
    """The shipped defaults plus `enabled`, with `parameters` set on their actions."""
    shipped = load_rules()
    chosen = shipped.only([rule.id for rule in shipped.enabled] + list(enabled))
    loaded = tuple(
        LoadedRule(
            item.rule.model_copy(
                update={
                    "actions": [
                        action.model_copy(
                            update={
                                k: v
                                for k, v in parameters.items()
                                if k in type(action).model_fields
                            }
                        )
                        for action in item.rule.actions
                    ]
                }
            ),
            item.source,
        )
        if item.rule.id in enabled
        else item
        for item in chosen.rules
    )
    return RuleStore(QuirkSnapshot(RuleSet(loaded, chosen.origin), FingerprintSet.packaged()))


@contextmanager
def client(
    upstream: DovecotInstance, store: RuleStore, events: list[object] | None = None
) -> Iterator[RawClient]:
    config = ProxyConfig.model_validate(
        {"listen": ["127.0.0.1:0"], "upstream": {"address": f"127.0.0.1:{upstream.port}"}}
    )
    observer = None if events is None else events.append
    with running_proxy(config, rules=store, observer=observer) as proxy, proxy.raw() as raw:
        raw.read_line()  # the greeting
        yield raw


def ask(raw: RawClient, tag: str, text: str) -> bytes:
    """Send one command; everything up to and including its tagged answer."""
    raw.send(f"{tag} {text}\r\n".encode())
    received = b""
    while True:
        line = raw.read_line()
        received += line
        if line.startswith(f"{tag} ".encode()):
            return received


def outlook_opens(raw: RawClient, user: MailUser) -> None:
    """Outlook classic: 4-letter tags, CAPABILITY after login, UID FETCH after SELECT."""
    raw.send(b"8eej CAPABILITY\r\n")
    raw.read_until(b"8eej OK")
    raw.read_line()
    assert b"9fk2 OK" in ask(raw, "9fk2", f"LOGIN {user.name} {user.password}")
    ask(raw, "a1b3", "CAPABILITY")
    assert b"b2c4 OK" in ask(raw, "b2c4", "SELECT INBOX")
    assert b"c3d5 OK" in ask(raw, "c3d5", "UID FETCH 1:* (UID FLAGS)")


# --- outlook-delete-to-trash ------------------------------------------------------------


def test_outlooks_delete_is_dovecots_move_to_trash(
    dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_modern)
    seed(dovecot_modern, user, 3, deleted=(3,))
    events: list[object] = []
    with client(dovecot_modern, rules(TO_TRASH), events) as raw:
        outlook_opens(raw, user)
        answer = ask(raw, "d4e6", "UID STORE 1 +FLAGS (\\Deleted)")
        assert re.search(rb"\* 1 EXPUNGE\r\n(\* \d+ RECENT\r\n)?d4e6 OK STORE completed", answer)
        assert b"COPYUID" not in answer and b"FETCH" not in answer
        # By number too, silently: the old message 2 is now number 1.
        answer = ask(raw, "e5f7", "STORE 1 +FLAGS.SILENT (\\Deleted)")
        assert re.search(rb"^\* 1 EXPUNGE\r\n(\* \d+ RECENT\r\n)?e5f7 OK", answer)
        ask(raw, "f6g8", "LOGOUT")
    assert ev.EmulationFinished(TO_TRASH, "delete_to_trash", "ok") in events
    assert subjects(dovecot_modern, user, "Trash") == ["m1", "m2"]
    # Another device's \Deleted message is neither moved nor expunged.
    assert subjects(dovecot_modern, user, "INBOX") == ["m3"]
    assert "\\Deleted" in flags_by_subject(dovecot_modern, user, "INBOX")["m3"]


def test_without_move_the_emulation_moves_to_the_configured_trash(
    dovecot_legacy: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_legacy)
    seed(dovecot_legacy, user, 3, deleted=(2,))
    with client(dovecot_legacy, rules(TO_TRASH, trash_folder="Deleted")) as raw:
        outlook_opens(raw, user)
        answer = ask(raw, "d4e6", "STORE 1 +FLAGS (\\Deleted)")
        assert re.search(rb"^\* 1 EXPUNGE\r\n(\* \d+ RECENT\r\n)?d4e6 OK STORE completed", answer)
        ask(raw, "f6g8", "LOGOUT")
    assert subjects(dovecot_legacy, user, "Deleted") == ["m1"]
    assert subjects(dovecot_legacy, user, "INBOX") == ["m2", "m3"]
    assert "\\Deleted" not in flags_by_subject(dovecot_legacy, user, "Deleted")["m1"]


def test_a_failed_move_leaves_the_message_flagged_where_it_was(
    dovecot_legacy: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_legacy)
    seed(dovecot_legacy, user, 1)
    events: list[object] = []
    with client(dovecot_legacy, rules(TO_TRASH, trash_folder="No Such Trash"), events) as raw:
        outlook_opens(raw, user)
        answer = ask(raw, "d4e6", "UID STORE 1 +FLAGS (\\Deleted)")
        assert b"EXPUNGE" not in answer
        assert re.search(rb"\* 1 FETCH \(UID 1 FLAGS \([^)]*\\Deleted", answer)
        assert b"d4e6 OK STORE completed (moving to the trash failed: NO [TRYCREATE]" in answer
        ask(raw, "f6g8", "LOGOUT")
    assert ev.EmulationFinished(TO_TRASH, "delete_to_trash", "fell_back") in events
    assert "\\Deleted" in flags_by_subject(dovecot_legacy, user, "INBOX")["m1"]


def test_a_clients_copy_then_delete_move_does_not_land_in_the_trash(
    dovecot_legacy: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_legacy)
    seed(dovecot_legacy, user, 2)
    with client(dovecot_legacy, rules(TO_TRASH, trash_folder="Deleted")) as raw:
        outlook_opens(raw, user)
        # The client's own move (no MOVE upstream for it): COPY, then \Deleted at once.
        assert b"d4e6 OK" in ask(raw, "d4e6", "UID COPY 1 Sent")
        answer = ask(raw, "e5f7", "UID STORE 1 +FLAGS (\\Deleted)")
        assert b"EXPUNGE" not in answer and b"e5f7 OK Store completed" in answer
        # The user's copy, a look at the list, then a delete: that one goes to the trash.
        assert b"f6g8 OK" in ask(raw, "f6g8", "UID COPY 2 Sent")
        ask(raw, "g7h9", "UID FETCH 1:* (FLAGS)")
        answer = ask(raw, "h8i0", "UID STORE 2 +FLAGS (\\Deleted)")
        assert b"EXPUNGE" in answer and b"h8i0 OK STORE completed" in answer
        ask(raw, "i9j1", "LOGOUT")
    assert subjects(dovecot_legacy, user, "Sent") == ["m1", "m2"]
    assert subjects(dovecot_legacy, user, "Deleted") == ["m2"]
    assert subjects(dovecot_legacy, user, "INBOX") == ["m1"]
    assert "\\Deleted" in flags_by_subject(dovecot_legacy, user, "INBOX")["m1"]


# --- scope-expunge-to-session -----------------------------------------------------------


def other_device_flags(upstream: DovecotInstance, user: MailUser, number: str) -> Any:
    """Session B, directly on Dovecot: flags `number` \\Deleted and stays logged in."""
    session_b = upstream.imap(user.name)
    session_b.select("INBOX")
    typ, _data = session_b.store(number, "+FLAGS.SILENT", "(\\Deleted)")
    assert typ == "OK"
    return session_b


def login(raw: RawClient, user: MailUser) -> None:
    assert b"a1 OK" in ask(raw, "a1", f"LOGIN {user.name} {user.password}")
    assert b"a2 OK" in ask(raw, "a2", "SELECT INBOX")


def test_expunge_removes_only_what_this_session_deleted(
    dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_modern)
    seed(dovecot_modern, user, 2)
    with client(dovecot_modern, rules(SCOPED)) as raw:
        login(raw, user)
        session_b = other_device_flags(dovecot_modern, user, "1")
        try:
            assert b"a3 OK" in ask(raw, "a3", "FETCH 1:* (UID FLAGS)")
            assert b"a4 OK" in ask(raw, "a4", "STORE 2 +FLAGS (\\Deleted)")
            answer = ask(raw, "a5", "EXPUNGE")
            assert re.findall(rb"\* \d+ EXPUNGE", answer) == [b"* 2 EXPUNGE"]
            assert re.search(rb"\r\na5 OK Expunge completed[^\r]*\r\n$", answer)
            # Nothing more of A's to expunge: answered without touching B's message.
            answer = ask(raw, "a6", "EXPUNGE")
            assert b"EXPUNGE\r\n" not in answer and b"a6 OK" in answer
            ask(raw, "a7", "LOGOUT")
        finally:
            session_b.logout()
    assert subjects(dovecot_modern, user, "INBOX") == ["m1"]
    assert "\\Deleted" in flags_by_subject(dovecot_modern, user, "INBOX")["m1"]


def test_a_sequence_store_without_known_uids_is_still_scoped(
    dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    """The client never fetched UIDs: the proxy learns them before its STORE."""
    user = fresh_mail_user(dovecot_modern)
    seed(dovecot_modern, user, 3, deleted=(1,))
    with client(dovecot_modern, rules(SCOPED)) as raw:
        login(raw, user)
        answer = ask(raw, "a3", "STORE 2:3 +FLAGS (\\Deleted)")
        assert b"UID" not in answer and b"a3 OK" in answer
        answer = ask(raw, "a4", "EXPUNGE")
        assert sorted(re.findall(rb"\* \d+ EXPUNGE", answer)) == [b"* 2 EXPUNGE", b"* 3 EXPUNGE"]
        ask(raw, "a5", "LOGOUT")
    assert subjects(dovecot_modern, user, "INBOX") == ["m1"]


def _close_keeps_the_other_devices_deletion(upstream: DovecotInstance, user: MailUser) -> None:
    seed(upstream, user, 2)
    events: list[object] = []
    with client(upstream, rules(SCOPED), events) as raw:
        login(raw, user)
        session_b = other_device_flags(upstream, user, "1")
        try:
            assert b"a3 OK" in ask(raw, "a3", "UID STORE 2 +FLAGS (\\Deleted)")
            answer = ask(raw, "a4", "CLOSE")
            assert b"EXPUNGE" not in answer and answer.endswith(b"a4 OK CLOSE completed\r\n")
            # The mailbox is closed (a command needing one is refused), and opens again.
            assert b"a5 BAD" in ask(raw, "a5", "FETCH 1 (FLAGS)")
            answer = ask(raw, "a6", "SELECT INBOX")
            assert b"* 1 EXISTS" in answer and b"a6 OK" in answer
            ask(raw, "a7", "LOGOUT")
        finally:
            session_b.logout()
    assert ev.EmulationFinished(SCOPED, "scope_close", "ok") in events
    assert subjects(upstream, user, "INBOX") == ["m1"]


def test_close_with_unselect_upstream(
    dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    _close_keeps_the_other_devices_deletion(dovecot_modern, fresh_mail_user(dovecot_modern))


def test_close_without_unselect_upstream(
    dovecot_legacy: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    _close_keeps_the_other_devices_deletion(dovecot_legacy, fresh_mail_user(dovecot_legacy))
