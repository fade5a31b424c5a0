"""MOVE emulation through the real proxy against a real Dovecot that does not announce MOVE.

The legacy profile hides MOVE (and still executes it when asked directly), so every
scenario is run twice on identically prepared mailboxes: through the proxy, which
emulates MOVE with UID COPY / UID STORE / UID EXPUNGE, and directly against Dovecot's
native MOVE. The client-visible bytes must be the same (RFC 6851 §3.3), bar the UIDVALIDITY
in COPYUID and the tagged text; the mailbox state is then checked directly on Dovecot.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

import imapclient

from imap_proxy.config import ProxyConfig
from imap_proxy.quirks.fingerprint import FingerprintSet
from imap_proxy.quirks.model import LoadedRule, MoveEmulationAction, RuleSet, load_rules
from imap_proxy.quirks.store import QuirkSnapshot, RuleStore
from imap_proxy.session import events as ev
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.mailstate import flags_by_subject, seed, subjects
from tests.support.proxy import RawClient, running_proxy

NewUser = Callable[[DovecotInstance], MailUser]


def config(upstream: DovecotInstance) -> ProxyConfig:
    return ProxyConfig.model_validate(
        {"listen": ["127.0.0.1:0"], "upstream": {"address": f"127.0.0.1:{upstream.port}"}}
    )


def rules_with_mode(mode: str) -> RuleStore:
    shipped = load_rules()
    rules = tuple(
        LoadedRule(
            loaded.rule.model_copy(
                update={
                    "actions": [
                        MoveEmulationAction.model_validate({"type": "emulate_move", "mode": mode})
                    ]
                }
            ),
            loaded.source,
        )
        if loaded.rule.id == "move-emulation"
        else loaded
        for loaded in shipped.rules
    )
    return RuleStore(QuirkSnapshot(RuleSet(rules, shipped.origin), FingerprintSet.packaged()))


def converse(sock: socket.socket, user: MailUser, commands: list[bytes]) -> list[bytes]:
    """Log in, SELECT INBOX, then send each command and return each one's answer."""
    raw = RawClient(sock)
    with raw:
        raw.read_line()
        for line in (
            b"L LOGIN %s %s" % (user.name.encode(), user.password.encode()),
            b"S SELECT INBOX",
        ):
            raw.send(line + b"\r\n")
            raw.read_until(line.split(b" ")[0] + b" OK")
            raw.read_line()
        answers = []
        for command in commands:
            raw.send(command + b"\r\n")
            tag = command.split(b" ", 1)[0]
            answer = b""
            while True:
                line = raw.read_line()
                answer += line
                if line.startswith(tag + b" "):
                    break
            answers.append(answer)
        raw.send(b"Z LOGOUT\r\n")
        raw.read_all()
        return answers


def normalised(answer: bytes) -> bytes:
    """The answer without what legitimately differs: UIDVALIDITY and the tagged text."""
    answer = re.sub(rb"\[COPYUID \d+ ", b"[COPYUID V ", answer)
    return re.sub(rb"(^|\n)(\w+) (OK|NO|BAD)( \[[^\]]*\])?[^\r\n]*\r\n$", rb"\1\2 \3\4\r\n", answer)


def native_and_emulated(
    upstream: DovecotInstance, fresh_mail_user: NewUser, commands: list[bytes], **seeding: object
) -> tuple[list[bytes], list[bytes], MailUser, list[ev.Event]]:
    native_user, proxied_user = fresh_mail_user(upstream), fresh_mail_user(upstream)
    for user in (native_user, proxied_user):
        seed(upstream, user, **seeding)  # type: ignore[arg-type]
    native = converse(
        socket.create_connection((upstream.host, upstream.port), timeout=30), native_user, commands
    )
    observed: list[ev.Event] = []
    with running_proxy(config(upstream), observer=observed.append) as proxy:
        emulated = converse(
            socket.create_connection(("127.0.0.1", proxy.port), timeout=30), proxied_user, commands
        )
    return native, emulated, proxied_user, observed


def test_move_and_uid_move_look_exactly_like_native_move(
    dovecot_legacy: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    commands = [b"a UID MOVE 2 Sent", b"b UID MOVE 3:4 Sent", b"c MOVE 1 Sent", b"d MOVE 1:2 Sent"]
    native, emulated, user, observed = native_and_emulated(
        dovecot_legacy, fresh_mail_user, commands, count=7, deleted=(5,)
    )
    assert [normalised(a) for a in emulated] == [normalised(a) for a in native]
    # And what that is, spelled out (RFC 6851 §3.3): COPYUID first, EXPUNGEs, tagged OK.
    assert re.fullmatch(
        rb"\* OK \[COPYUID \d+ 2 1\] Moved UIDs\.\r\n\* 2 EXPUNGE\r\n(\* \d+ RECENT\r\n)?a OK Move completed\r\n",
        emulated[0],
    )
    assert re.fullmatch(
        rb"\* OK \[COPYUID \d+ 3:4 2:3\] Moved UIDs\.\r\n\* 3 EXPUNGE\r\n\* 2 EXPUNGE\r\n(\* \d+ RECENT\r\n)?b OK Move completed\r\n",
        emulated[1],
    )
    assert all(b"FETCH" not in answer for answer in emulated)
    # INBOX was m1..m7 with m5 \Deleted by another session: m1, m2, m3, m4 moved by UID,
    # then by number 1 (m1) and 1:2 (m5, m6). The \Deleted m5 is moved, never expunged
    # away: it is in Sent, with its flag.
    assert subjects(dovecot_legacy, user, "INBOX") == ["m7"]
    assert subjects(dovecot_legacy, user, "Sent") == ["m2", "m3", "m4", "m1", "m5", "m6"]
    outcomes = [e for e in observed if isinstance(e, ev.EmulationFinished)]
    assert [e.outcome for e in outcomes] == ["ok"] * 4


def test_other_sessions_deleted_messages_are_never_expunged(
    dovecot_legacy: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    commands = [b"a UID MOVE 1:2 Sent", b"b UID MOVE 4 Sent"]
    _native, emulated, user, _observed = native_and_emulated(
        dovecot_legacy, fresh_mail_user, commands, count=5, deleted=(3, 5)
    )
    assert b"a OK" in emulated[0] and b"b OK" in emulated[1]
    assert subjects(dovecot_legacy, user, "INBOX") == ["m3", "m5"]
    assert all("\\Deleted" in f for f in flags_by_subject(dovecot_legacy, user, "INBOX").values())
    assert subjects(dovecot_legacy, user, "Sent") == ["m1", "m2", "m4"]
    assert all(
        "\\Deleted" not in f for f in flags_by_subject(dovecot_legacy, user, "Sent").values()
    )


def test_move_into_a_missing_mailbox_or_of_missing_messages_changes_nothing(
    dovecot_legacy: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    commands = [b"a UID MOVE 1 Nowhere", b"b MOVE 1:2 Nowhere", b"c MOVE 7 Sent"]
    native, emulated, user, observed = native_and_emulated(
        dovecot_legacy, fresh_mail_user, commands, count=2
    )
    assert [normalised(a) for a in emulated] == [normalised(a) for a in native]
    assert emulated[0].startswith(b"a NO [TRYCREATE] ")
    assert emulated[2].startswith(b"c BAD ")  # no message 7: as native MOVE says
    assert subjects(dovecot_legacy, user, "INBOX") == ["m1", "m2"]
    assert all(
        "\\Deleted" not in f for f in flags_by_subject(dovecot_legacy, user, "INBOX").values()
    )
    assert [e.outcome for e in observed if isinstance(e, ev.EmulationFinished)] == ["failed"] * 3


def test_commands_pipelined_behind_a_move_are_answered_in_order(
    dovecot_legacy: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_legacy)
    seed(dovecot_legacy, user, count=3)
    with running_proxy(config(dovecot_legacy)) as proxy, proxy.raw() as raw:
        raw.read_line()
        raw.send(
            b"L LOGIN %s %s\r\nS SELECT INBOX\r\n" % (user.name.encode(), user.password.encode())
        )
        raw.read_until(b"S OK")
        raw.read_line()
        raw.send(b"a FETCH 1 (UID)\r\nb UID MOVE 1 Sent\r\nc FETCH 1:* (UID)\r\nd NOOP\r\n")
        received = raw.read_until(b"d OK")
        raw.read_line()
    lines = [line for line in received.split(b"\r\n") if line]
    tags = [line.split(b" ", 1)[0] for line in lines if not line.startswith(b"*")]
    assert tags == [b"a", b"b", b"c", b"d"]
    # c ran after the MOVE: it sees two messages, renumbered.
    after_move = received[received.index(b"b OK") :]
    assert re.findall(rb"\* (\d+) FETCH \(UID (\d+)\)", after_move) == [(b"1", b"2"), (b"2", b"3")]


def test_imapclient_move_works_through_the_proxy(
    dovecot_legacy: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_legacy)
    seed(dovecot_legacy, user, count=3)
    with running_proxy(config(dovecot_legacy)) as proxy:
        client = imapclient.IMAPClient("127.0.0.1", port=proxy.port, ssl=False, timeout=30)
        client.login(user.name, user.password)
        assert client.has_capability("MOVE")
        client.select_folder("INBOX")
        client.move([2], "Sent")  # imapclient uses UID MOVE
        assert client.search("ALL") == [1, 3]
        client.logout()
        plain = proxy.imap()
        plain.login(user.name, user.password)
        plain.select("INBOX")
        typ, _data = plain.uid("MOVE", "1", "Sent")
        assert typ == "OK"
        plain.logout()
    assert subjects(dovecot_legacy, user, "INBOX") == ["m3"]
    assert subjects(dovecot_legacy, user, "Sent") == ["m2", "m1"]


def test_copy_and_flag_without_uidplus_leaves_flagged_originals(
    dovecot_legacy_nouidplus: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_legacy_nouidplus)
    seed(dovecot_legacy_nouidplus, user, count=3, deleted=(3,))
    observed: list[ev.Event] = []
    with running_proxy(config(dovecot_legacy_nouidplus), observer=observed.append) as proxy:
        client = imapclient.IMAPClient("127.0.0.1", port=proxy.port, ssl=False, timeout=30)
        client.login(user.name, user.password)
        assert client.has_capability("MOVE") and not client.has_capability("UIDPLUS")
        client.select_folder("INBOX")
        client.move([1], "Sent")
        # The client was shown the flag; nothing was expunged.
        assert b"\\Deleted" in client.get_flags([1])[1]
        client.logout()
    assert subjects(dovecot_legacy_nouidplus, user, "INBOX") == ["m1", "m2", "m3"]
    flags = flags_by_subject(dovecot_legacy_nouidplus, user, "INBOX")
    assert "\\Deleted" in flags["m1"] and "\\Deleted" not in flags["m2"]
    assert subjects(dovecot_legacy_nouidplus, user, "Sent") == ["m1"]
    assert [e.outcome for e in observed if isinstance(e, ev.EmulationFinished)] == ["ok"]


def test_rfc4315_mode_expunges_only_the_moved_messages(
    dovecot_legacy_nouidplus: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_legacy_nouidplus)
    seed(dovecot_legacy_nouidplus, user, count=4, deleted=(2, 4))
    with running_proxy(config(dovecot_legacy_nouidplus), rules=rules_with_mode("rfc4315")) as proxy:
        answers = converse(
            socket.create_connection(("127.0.0.1", proxy.port), timeout=30),
            user,
            [b"a UID MOVE 1 Sent", b"b MOVE 2 Sent"],
        )
    assert re.fullmatch(rb"\* 1 EXPUNGE\r\n(\* \d+ RECENT\r\n)?a OK Move completed\r\n", answers[0])
    assert b"b OK Move completed" in answers[1]
    # m1 and then (by number 2) m3 moved; m2 and m4 keep \Deleted and stay.
    assert subjects(dovecot_legacy_nouidplus, user, "INBOX") == ["m2", "m4"]
    flags = flags_by_subject(dovecot_legacy_nouidplus, user, "INBOX")
    assert all("\\Deleted" in f for f in flags.values())
    assert subjects(dovecot_legacy_nouidplus, user, "Sent") == ["m1", "m3"]
