"""Special folders through the real proxy against legacy Dovecot, with imaplib and imapclient.

The legacy profile's trash is "Deleted" without \\Trash and there is no SPECIAL-USE. The
proxy runs the shipped Outlook alias rule (its client match lifted, so that these
libraries get Outlook's names; which client gets which alias set is the fingerprint's
job, shown by tests/rules) plus the XLIST rule. The clients select, append to, copy and
move into "Deleted Items"; Dovecot, read directly, must hold the messages in "Deleted",
and no "Deleted Items" folder may exist there. A raw Outlook-shaped session shows the
same with the rules and fingerprints exactly as shipped.
"""

from __future__ import annotations

import imaplib
import re
from collections.abc import Callable, Iterator, Sequence

import imapclient
import pytest
from imapclient.imapclient import TRASH

from imap_proxy.config import ProxyConfig
from imap_proxy.quirks.fingerprint import FingerprintSet
from imap_proxy.quirks.model import load_rules
from imap_proxy.quirks.store import QuirkSnapshot, RuleStore
from imap_proxy.session import events as ev
from tests.clients.support import make_message
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.proxy import RawClient, RunningProxy, proxy_with_rules, running_proxy

RULES = ("outlook-special-folders", "xlist")
BIG = 300 * 1024  # far beyond capture_literal_max: APPEND must stream it


def _subject_keys(messages: list[bytes]) -> list[str]:
    keys = []
    for message in messages:
        found = re.search(rb"^Subject: (\S+)", message, re.MULTILINE)
        keys.append(found.group(1).decode() if found else "?")
    return keys


@pytest.fixture
def upstream(dovecot_legacy: DovecotInstance) -> DovecotInstance:
    return dovecot_legacy


@pytest.fixture
def user(
    upstream: DovecotInstance, fresh_mail_user: Callable[[DovecotInstance], MailUser]
) -> MailUser:
    mail_user = fresh_mail_user(upstream)
    for key in ("one", "two", "three"):
        upstream.append(mail_user.name, make_message(key))
    return mail_user


@pytest.fixture
def fired() -> list[str]:
    return []


@pytest.fixture
def proxy(upstream: DovecotInstance, fired: list[str]) -> Iterator[RunningProxy]:
    with proxy_with_rules(upstream.port, RULES, fired) as running:
        yield running


def _lines(data: Sequence[object]) -> list[bytes]:
    return [line for line in data if isinstance(line, bytes) and line]


def _names(lines: list[bytes]) -> list[str]:
    return [line.decode().rsplit(' "." ', 1)[1].strip('"') for line in lines]


def _upstream_folders(upstream: DovecotInstance, user: MailUser) -> list[str]:
    direct = upstream.imap(user.name)
    try:
        status, data = direct.list()
        assert status == "OK"
        return _names(_lines(data))
    finally:
        direct.logout()


def test_imaplib_trash_is_deleted_items(
    proxy: RunningProxy, upstream: DovecotInstance, user: MailUser, fired: list[str]
) -> None:
    imaplib.Commands.setdefault("MOVE", ("SELECTED",))  # Dovecot has it, unadvertised
    client = proxy.imap()
    client.login(user.name, user.password)
    # Before any LIST: the proxy learns where the trash is.
    status, selected = client.select('"Deleted Items"')
    assert status == "OK", selected
    assert selected == [b"0"]
    big = make_message("big", body="x" * BIG)
    status, data = client.append('"Deleted Items"', "(\\Seen)", None, big)
    assert status == "OK", data
    client.select("INBOX")
    status, data = client.copy("1", '"Deleted Items"')
    assert status == "OK", data
    status, data = client.uid("MOVE", "2", '"Deleted Items"')
    assert status == "OK", data
    status, data = client.status('"Deleted Items"', "(MESSAGES)")
    assert status == "OK"
    assert data == [b'"Deleted Items" (MESSAGES 3)']
    status, data = client.create('"Deleted Items"')
    assert status == "OK", data
    status, listing = client.list()
    assert status == "OK"
    listed = _lines(listing)
    names = _names(listed)
    assert names.count("Deleted Items") == 1
    assert "Deleted" not in names
    trash_line = next(line for line in listed if line.endswith(b'"Deleted Items"'))
    assert b"\\Trash" in trash_line
    assert any(line.endswith(b'"Sent Items"') and b"\\Sent" in line for line in listed)
    client.logout()

    trash = upstream.mailbox_messages(user.name, "Deleted")
    assert sorted(_subject_keys(trash)) == ["big", "one", "two"]
    assert big in trash  # byte for byte
    assert _subject_keys(upstream.mailbox_messages(user.name, "INBOX")) == ["one", "three"]
    assert "Deleted Items" not in _upstream_folders(upstream, user)
    assert "outlook-special-folders" in fired


def test_imapclient_trash_and_a_non_ascii_child(
    proxy: RunningProxy, upstream: DovecotInstance, user: MailUser
) -> None:
    client = imapclient.IMAPClient("127.0.0.1", port=proxy.port, ssl=False, timeout=30)
    client.login(user.name, user.password)
    folders = client.list_folders()
    names = [name for _flags, _delimiter, name in folders]
    assert names.count("Deleted Items") == 1
    assert "Deleted" not in names
    flags = {name: set(flag_list) for flag_list, _delimiter, name in folders}
    assert b"\\Trash" in flags["Deleted Items"]
    assert b"\\Junk" in flags["Junk E-mail"]
    assert client.find_special_folder(TRASH) == "Deleted Items"

    client.select_folder("INBOX")
    uids = client.search(["SUBJECT", "one"])
    client.copy(uids, "Deleted Items")
    client.delete_messages(uids)
    client.expunge()
    client.append("Deleted Items", make_message("appended"), flags=[b"\\Seen"])
    assert client.folder_status("Deleted Items", [b"MESSAGES"])[b"MESSAGES"] == 2

    child = "Deleted Items.Année"  # imapclient sends it in modified UTF-7
    client.create_folder(child)
    assert child in [name for _flags, _delimiter, name in client.list_folders()]
    client.select_folder(child)
    client.append(child, make_message("accented"))
    info = client.select_folder(child, readonly=True)
    assert info[b"EXISTS"] == 1

    xlisted = {name: set(flag_list) for flag_list, _d, name in client.xlist_folders()}
    assert b"\\Inbox" in xlisted["INBOX"]
    assert b"\\Trash" in xlisted["Deleted Items"]
    assert b"\\Spam" in xlisted["Junk E-mail"]  # Gmail's name for \\Junk
    client.logout()

    assert sorted(_subject_keys(upstream.mailbox_messages(user.name, "Deleted"))) == [
        "appended",
        "one",
    ]
    assert _subject_keys(upstream.mailbox_messages(user.name, "Deleted.Ann&AOk-e")) == ["accented"]
    upstream_names = _upstream_folders(upstream, user)
    assert "Deleted.Ann&AOk-e" in upstream_names
    assert not any(name.startswith("Deleted Items") for name in upstream_names)


@pytest.fixture
def default_proxy(upstream: DovecotInstance, fired: list[str]) -> Iterator[RunningProxy]:
    """The proxy as shipped: every packaged rule as its file says, and the fingerprints."""
    store = RuleStore(QuirkSnapshot(load_rules(), FingerprintSet.packaged()))
    config = ProxyConfig.model_validate(
        {"listen": ["127.0.0.1:0"], "upstream": {"address": f"127.0.0.1:{upstream.port}"}}
    )

    def observe(event: object) -> None:
        if isinstance(event, ev.RuleApplied):
            fired.append(event.rule_id)

    with running_proxy(config, observer=observe, rules=store) as running:
        yield running


def _answer(raw: RawClient, tag: bytes) -> bytes:
    """Every line up to and including the tagged answer."""
    received = b""
    while True:
        line = raw.read_line()
        received += line
        if line.startswith(tag + b" "):
            return received


def _command(raw: RawClient, tag: bytes, line: bytes) -> bytes:
    raw.send(tag + b" " + line + b"\r\n")
    return _answer(raw, tag)


def test_an_outlook_shaped_session_appends_a_big_message_to_deleted_items(
    default_proxy: RunningProxy, upstream: DovecotInstance, user: MailUser, fired: list[str]
) -> None:
    """Recognised by its tags and CAPABILITY after login, with the shipped rules only."""
    big = make_message("outlook-big", body="y" * BIG)
    with default_proxy.raw() as raw:
        raw.read_line()
        _command(raw, b"8eej", b"CAPABILITY")
        _command(raw, b"9fk2", b"LOGIN " + user.name.encode() + b" " + user.password.encode())
        _command(raw, b"a1b3", b"CAPABILITY")
        raw.send(b'b2c4 APPEND "Deleted Items" (\\Seen) {%d}\r\n' % len(big))
        assert raw.read_line().startswith(b"+")  # the upstream's own continuation
        raw.send(big + b"\r\n")
        answer = _answer(raw, b"b2c4")
        assert b"b2c4 OK" in answer, answer
        listing = _command(raw, b"c3d5", b'LSUB "" "*"') + _command(raw, b"d4e6", b'LIST "" "*"')
        _command(raw, b"e5f7", b"LOGOUT")
    assert b'* LIST (\\HasNoChildren \\Trash) "." "Deleted Items"\r\n' in listing
    assert b'"Deleted"\r\n' not in listing
    assert upstream.mailbox_messages(user.name, "Deleted") == [big]
    assert "Deleted Items" not in _upstream_folders(upstream, user)
    assert "outlook-special-folders" in fired
