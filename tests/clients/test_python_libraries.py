"""Python IMAP libraries through the proxy: the everyday operations, on both profiles.

How this works: each library (imaplib, imapclient, imap-tools; aioimaplib lives in
test_aioimaplib.py) runs the same scenario in its own idiom against the proxy: log in, list
folders (the profile's trash folder must be there), create "Archive", select INBOX, search
by subject, fetch a body (byte-exact), flag one message, copy one to Archive, append one
with \\Seen, delete and expunge one, and -- where the library has it -- IDLE until a
message delivered directly to Dovecot meanwhile is announced. Dovecot, read directly
afterwards, must hold exactly `expected_keys`, with the flags the scenario set.
"""

from __future__ import annotations

import imaplib
import importlib.metadata
import platform
import time

import imap_tools
import imapclient
import pytest
from imap_tools import AND, MailboxFolderSelectError, MailMessageFlags

from tests.clients.conftest import CompatScenario
from tests.clients.support import TRASH_FOLDER, ServerState, make_message, server_state
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.proxy import RunningProxy

IDLE_WAIT = 30.0  # seconds to wait for the IDLE announcement before failing
SEEDED = ("one", "two", "three")


def seed(upstream: DovecotInstance, user: MailUser) -> None:
    for key in SEEDED:
        upstream.append(user.name, make_message(key))


def assert_everyday_state(state: ServerState, *, idled: bool) -> None:
    """one: flagged; two: copied to Archive; three: expunged; four: appended, seen;
    pushed: delivered directly during IDLE."""
    inbox = ["four", "one", "two", *(["pushed"] if idled else [])]
    assert sorted(state.keys("INBOX"), key=str) == sorted(inbox)
    assert state.keys("Archive") == ["two"]
    assert "three" not in state.ids()
    assert state.ids()["two"] == 2
    assert all(state.ids()[key] == 1 for key in inbox if key != "two")
    assert "\\Flagged" in state.flags("INBOX", "one")
    assert "\\Seen" in state.flags("INBOX", "four")
    assert "\\Flagged" not in state.flags("INBOX", "two")
    assert state.folders["INBOX"][[m.key for m in state.folders["INBOX"]].index("four")].body == (
        make_message("four")
    )


def test_imaplib_everyday_operations(
    proxy: RunningProxy, upstream: DovecotInstance, mail_user: MailUser, compat: CompatScenario
) -> None:
    compat.set(
        kind="library",
        client="Python imaplib",
        version=platform.python_version(),
        scenario="login, list, select, search, fetch, store, copy, append, expunge",
        note="no IDLE: imaplib has it only from Python 3.14",
    )
    seed(upstream, mail_user)
    client = imaplib.IMAP4("127.0.0.1", proxy.port, timeout=30)
    assert "IMAP4REV1" in client.capabilities
    assert client.login(mail_user.name, mail_user.password)[0] == "OK"
    status, listing = client.list()
    assert status == "OK"
    trash = TRASH_FOLDER[upstream.profile].encode()
    assert any(isinstance(line, bytes) and line.endswith(trash) for line in listing), listing
    assert client.create("Archive")[0] == "OK"
    assert client.select("INBOX") == ("OK", [b"3"])
    status, found = client.uid("SEARCH", "SUBJECT", "two")
    assert status == "OK"
    (two_uid,) = found[0].split()
    status, found = client.uid("SEARCH", "SUBJECT", "one")
    (one_uid,) = found[0].split()
    status, data = client.uid("FETCH", one_uid.decode(), "(BODY.PEEK[])")
    assert status == "OK" and isinstance(data[0], tuple)
    assert data[0][1] == make_message("one")
    assert client.uid("STORE", one_uid.decode(), "+FLAGS", "(\\Flagged)")[0] == "OK"
    assert client.uid("COPY", two_uid.decode(), "Archive")[0] == "OK"
    assert client.append("INBOX", "(\\Seen)", None, make_message("four"))[0] == "OK"
    status, found = client.uid("SEARCH", "SUBJECT", "three")
    assert client.uid("STORE", found[0].decode(), "+FLAGS", "(\\Deleted)")[0] == "OK"
    status, expunged = client.expunge()
    assert status == "OK" and expunged == [b"3"]
    assert client.logout()[0] == "BYE"
    assert_everyday_state(server_state(upstream, mail_user), idled=False)


def test_imapclient_everyday_operations_and_idle(
    proxy: RunningProxy, upstream: DovecotInstance, mail_user: MailUser, compat: CompatScenario
) -> None:
    compat.set(
        kind="library",
        client="imapclient",
        version=importlib.metadata.version("imapclient"),
        scenario="everyday operations + IDLE",
    )
    seed(upstream, mail_user)
    client = imapclient.IMAPClient("127.0.0.1", port=proxy.port, ssl=False, timeout=30)
    client.login(mail_user.name, mail_user.password)
    names = [name for _flags, _delimiter, name in client.list_folders()]
    assert "INBOX" in names and TRASH_FOLDER[upstream.profile] in names
    client.create_folder("Archive")
    assert client.select_folder("INBOX")[b"EXISTS"] == 3
    (two_uid,) = client.search(["SUBJECT", "two"])
    (one_uid,) = client.search(["SUBJECT", "one"])
    (three_uid,) = client.search(["SUBJECT", "three"])
    assert client.fetch([one_uid], ["BODY.PEEK[]"])[one_uid][b"BODY[]"] == make_message("one")
    client.add_flags([one_uid], [imapclient.FLAGGED])
    client.copy([two_uid], "Archive")
    client.append("INBOX", make_message("four"), flags=[imapclient.SEEN])
    client.delete_messages([three_uid])
    client.expunge()

    client.idle()
    upstream.append(mail_user.name, make_message("pushed"))
    announced: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + IDLE_WAIT
    while not any(item[1] == b"EXISTS" for item in announced) and time.monotonic() < deadline:
        announced += client.idle_check(timeout=1)
    client.idle_done()
    assert (4, b"EXISTS") in announced, announced
    client.logout()
    assert_everyday_state(server_state(upstream, mail_user), idled=True)


def test_imap_tools_everyday_operations_and_idle(
    proxy: RunningProxy, upstream: DovecotInstance, mail_user: MailUser, compat: CompatScenario
) -> None:
    compat.set(
        kind="library",
        client="imap-tools",
        version=importlib.metadata.version("imap-tools"),
        scenario="everyday operations + IDLE",
    )
    seed(upstream, mail_user)
    mailbox = imap_tools.MailBoxUnencrypted("127.0.0.1", port=proxy.port, timeout=30)
    mailbox.login(mail_user.name, mail_user.password, initial_folder="INBOX")
    names = [folder.name for folder in mailbox.folder.list()]
    assert "INBOX" in names and TRASH_FOLDER[upstream.profile] in names
    with pytest.raises(MailboxFolderSelectError):
        mailbox.folder.set("Archive")
    mailbox.folder.create("Archive")
    mailbox.folder.set("INBOX")
    assert [m.subject for m in mailbox.fetch(AND(all=True), mark_seen=False)] == list(SEEDED)
    (one,) = mailbox.fetch(AND(subject="one"), mark_seen=False)
    assert one.obj.as_bytes().replace(b"\n", b"\r\n") == make_message("one")
    (two_uid,) = mailbox.uids(AND(subject="two"))
    (three_uid,) = mailbox.uids(AND(subject="three"))
    mailbox.flag([one.uid or ""], MailMessageFlags.FLAGGED, True)
    mailbox.copy([two_uid], "Archive")
    mailbox.append(make_message("four"), "INBOX", flag_set=[MailMessageFlags.SEEN])
    mailbox.delete([three_uid])  # STORE \Deleted, then EXPUNGE

    announced: list[bytes] = []
    with mailbox.idle as idle:
        upstream.append(mail_user.name, make_message("pushed"))
        deadline = time.monotonic() + IDLE_WAIT
        while not any(b"EXISTS" in line for line in announced) and time.monotonic() < deadline:
            announced += idle.poll(timeout=1)
    assert b"* 4 EXISTS" in announced, announced
    mailbox.logout()
    assert_everyday_state(server_state(upstream, mail_user), idled=True)
