"""MOVE emulation in front of GNU mailutils imap4d: a real server with neither MOVE nor
UIDPLUS (no UID EXPUNGE, no COPYUID), in both modes for such upstreams; the mail is then
read directly from imap4d."""

from __future__ import annotations

import re

import imapclient

from imap_proxy.config import ProxyConfig
from imap_proxy.session import events as ev
from tests.integration.test_move_emulation import rules_with_mode
from tests.support.imap4d import Imap4dInstance
from tests.support.mailstate import message
from tests.support.proxy import running_proxy


def config(upstream: Imap4dInstance) -> ProxyConfig:
    return ProxyConfig.model_validate(
        {"listen": ["127.0.0.1:0"], "upstream": {"address": f"127.0.0.1:{upstream.port}"}}
    )


def seed(upstream: Imap4dInstance, count: int, deleted: tuple[int, ...] = ()) -> None:
    upstream.create("Sent")
    for number in range(1, count + 1):
        flags = "\\Deleted" if number in deleted else ""
        upstream.append(message(f"m{number}"), "INBOX", flags)


def test_copy_and_flag_mode_moves_by_copy_and_deleted_flag(imap4d: Imap4dInstance) -> None:
    seed(imap4d, 3, deleted=(3,))
    observed: list[ev.Event] = []
    with running_proxy(config(imap4d), observer=observed.append) as proxy:
        client = imapclient.IMAPClient("127.0.0.1", port=proxy.port, ssl=False, timeout=30)
        assert client.has_capability("MOVE") and not client.has_capability("UIDPLUS")
        client.select_folder("INBOX")
        client.move([1], "Sent")
        assert b"\\Deleted" in client.get_flags([1])[1]  # shown, as it is
        client.logout()
    imap4d.wait_for_sessions_to_end()
    inbox = imap4d.mailbox("INBOX")
    assert list(inbox) == ["m1", "m2", "m3"]
    assert "\\Deleted" in inbox["m1"] and "\\Deleted" not in inbox["m2"]
    assert list(imap4d.mailbox("Sent")) == ["m1"]
    assert [e.outcome for e in observed if isinstance(e, ev.EmulationFinished)] == ["ok"]


def test_rfc4315_mode_expunges_only_what_was_moved(imap4d: Imap4dInstance) -> None:
    seed(imap4d, 4, deleted=(2, 4))
    with (
        running_proxy(config(imap4d), rules=rules_with_mode("rfc4315")) as proxy,
        proxy.raw() as raw,
    ):
        assert raw.read_line().startswith(b"* PREAUTH")
        raw.send(b"s SELECT INBOX\r\n")
        raw.read_until(b"s OK")
        raw.read_line()
        raw.send(b"a UID MOVE 1:* Sent\r\n")  # every UID: m2 and m4 are \Deleted ones
        first = raw.read_until(b"\r\na ")
        first += raw.read_line()
        raw.send(b"z LOGOUT\r\n")
        raw.read_all()
    assert re.search(rb"a OK Move completed\r\n$", first), first
    imap4d.wait_for_sessions_to_end()
    # All four were moved, including the two already \Deleted ones (moved with the flag,
    # as a native MOVE copies flags); nothing is left behind or lost.
    assert imap4d.mailbox("INBOX") == {}
    assert list(imap4d.mailbox("Sent")) == ["m1", "m2", "m3", "m4"]


def test_rfc4315_mode_keeps_other_deleted_messages(imap4d: Imap4dInstance) -> None:
    seed(imap4d, 4, deleted=(2, 4))
    with (
        running_proxy(config(imap4d), rules=rules_with_mode("rfc4315")) as proxy,
        proxy.raw() as raw,
    ):
        raw.read_line()
        raw.send(b"s SELECT INBOX\r\n")
        raw.read_until(b"s OK")
        raw.read_line()
        raw.send(b"a UID MOVE 1 Sent\r\nb MOVE 2 Sent\r\n")
        answers = raw.read_until(b"\r\nb ")
        answers += raw.read_line()
        raw.send(b"z LOGOUT\r\n")
        raw.read_all()
    # imap4d says `* 1 EXPUNGED` (sic) for every expunge; the proxy relays what it says.
    assert re.search(rb"\* 1 EXPUNGED?\r\n(\* \d+ \w+\r\n)*a OK Move completed\r\n", answers), (
        answers
    )
    assert answers.endswith(b"b OK Move completed\r\n"), answers
    imap4d.wait_for_sessions_to_end()
    # m1, then (by number 2 after that) m3 moved; m2 and m4 keep \Deleted and stay.
    inbox = imap4d.mailbox("INBOX")
    assert list(inbox) == ["m2", "m4"]
    assert all("\\Deleted" in flags for flags in inbox.values())
    assert list(imap4d.mailbox("Sent")) == ["m1", "m3"]
