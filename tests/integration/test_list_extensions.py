"""LIST-STATUS emulation and the UTF-8 mailbox-name bridge against legacy Dovecot.

The legacy profile advertises neither LIST-STATUS nor UTF8=ACCEPT nor ENABLE. Through the
proxy (rules `list-status-emulation`, `utf8-accept` and `common-special-folders`, their
client match lifted), a raw client asks `LIST ... RETURN (STATUS ...)`: every selectable
mailbox's STATUS follows its LIST line and holds the numbers a direct STATUS on Dovecot
gives; a \\Noselect parent has none. A folder created in UTF-8 after `ENABLE UTF8=ACCEPT`
is stored by Dovecot under its modified UTF-7 name, holds what was appended to it, and is
listed back in UTF-8 (and decoded by imapclient, which speaks mUTF-7 only).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import imapclient
import pytest

from imap_proxy.config import ProxyConfig
from imap_proxy.quirks.fingerprint import FingerprintSet
from imap_proxy.quirks.model import load_rules
from imap_proxy.quirks.store import QuirkSnapshot, RuleStore
from imap_proxy.session import events as ev
from imap_proxy.wire.mutf7 import encode_mutf7
from tests.clients.support import make_message
from tests.support.dovecot import DovecotInstance, MailUser, imap_quote
from tests.support.proxy import RawClient, RunningProxy, proxy_with_rules, running_proxy

RULES = ("list-status-emulation", "utf8-accept", "common-special-folders")
ITEMS = ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN")
FOLDER = "Entwürfe 日本"
IOS_ID = (
    b'ID ("name" "com.apple.email.maild" "version" "3864.600.51.2.1" "os" "iOS"'
    b' "os-version" "26.5 (23F77)" "vendor" "Apple Inc" "event" NIL)'
)
_PAIR = re.compile(
    rb'\* LIST \(([^)]*)\) "\." ("?)([^"\r\n]*)\2\r\n(\* STATUS "?\3"? \(([^)]*)\)\r\n)?'
)


@pytest.fixture
def upstream(dovecot_legacy: DovecotInstance) -> DovecotInstance:
    return dovecot_legacy


@pytest.fixture
def user(
    upstream: DovecotInstance, fresh_mail_user: Callable[[DovecotInstance], MailUser]
) -> MailUser:
    mail_user = fresh_mail_user(upstream)
    for key in ("one", "two", "three"):
        upstream.append(mail_user.name, make_message(key), flags="\\Seen" if key == "one" else "")
    upstream.append(mail_user.name, make_message("draft"), "Drafts")
    direct = upstream.imap(mail_user.name)
    try:
        assert direct.create("Parent.Child")[0] == "OK"  # "Parent" becomes \Noselect
    finally:
        direct.logout()
    return mail_user


@pytest.fixture
def fired() -> list[str]:
    return []


@contextmanager
def _proxy(
    upstream: DovecotInstance, rules: tuple[str, ...], fired: list[str]
) -> Iterator[RunningProxy]:
    with proxy_with_rules(upstream.port, rules, fired) as running:
        yield running


@pytest.fixture
def proxy(upstream: DovecotInstance, fired: list[str]) -> Iterator[RunningProxy]:
    with _proxy(upstream, RULES, fired) as running:
        yield running


def _command(raw: RawClient, tag: bytes, line: bytes) -> bytes:
    raw.send(tag + b" " + line + b"\r\n")
    answer = b""
    while True:
        got = raw.read_line()
        answer += got
        if got.startswith(tag + b" "):
            return answer


def _login(raw: RawClient, user: MailUser) -> None:
    raw.read_line()
    answer = _command(raw, b"a", f"LOGIN {user.name} {user.password}".encode())
    assert answer.startswith(b"a OK"), answer


def _direct_status(upstream: DovecotInstance, user: MailUser, mailbox: str) -> dict[str, int]:
    direct = upstream.imap(user.name)
    try:
        status, data = direct.status(imap_quote(mailbox), f"({' '.join(ITEMS)})")
        assert status == "OK", data
    finally:
        direct.logout()
    text = data[0].decode() if isinstance(data[0], bytes) else ""
    inner = text[text.rindex("(") + 1 : text.rindex(")")].split()
    return {name: int(value) for name, value in zip(inner[::2], inner[1::2], strict=True)}


def test_list_status_numbers_are_dovecots_own(
    proxy: RunningProxy, upstream: DovecotInstance, user: MailUser, fired: list[str]
) -> None:
    with proxy.raw() as raw:
        _login(raw, user)
        caps = _command(raw, b"c", b"CAPABILITY")
        assert b" LIST-STATUS" in caps
        answer = _command(raw, b"l", b'LIST "" "*" RETURN (STATUS (%s))' % " ".join(ITEMS).encode())
    assert answer.endswith(b"l OK LIST completed\r\n"), answer
    pairs = {m.group(3).decode(): m for m in _PAIR.finditer(answer)}
    # The mapping shows the upstream's "Deleted" as "Trash": with the STATUS of "Deleted".
    assert {"INBOX", "Drafts", "Parent", "Parent.Child", "Trash"} <= set(pairs), answer
    assert "Deleted" not in pairs
    assert b"\\Trash" in pairs["Trash"].group(1)
    assert answer.count(b"* LIST ") == len(pairs)  # every LIST line is in a pair (or alone)
    assert b"\\Noselect" in pairs["Parent"].group(1)
    assert pairs["Parent"].group(4) is None  # no STATUS for a \Noselect mailbox
    for name, match in pairs.items():
        if name == "Parent":
            continue
        assert match.group(4) is not None, (name, answer)
        inner = match.group(5).decode().split()
        shown = {key: int(value) for key, value in zip(inner[::2], inner[1::2], strict=True)}
        upstream_name = "Deleted" if name == "Trash" else name
        assert shown == _direct_status(upstream, user, upstream_name), name
    assert pairs["INBOX"].group(5).startswith(b"MESSAGES 3 ")
    assert b"UNSEEN 2" in pairs["INBOX"].group(5)
    assert pairs["Drafts"].group(5).startswith(b"MESSAGES 1 ")
    assert {"list-status-emulation", "common-special-folders"} <= set(fired)


def test_a_utf8_folder_is_mutf7_in_dovecot_and_utf8_for_the_client(
    proxy: RunningProxy, upstream: DovecotInstance, user: MailUser, fired: list[str]
) -> None:
    encoded = FOLDER.encode()
    with proxy.raw() as raw:
        _login(raw, user)
        assert b" UTF8=ACCEPT" in _command(raw, b"c", b"CAPABILITY")
        assert _command(raw, b"e", b"ENABLE UTF8=ACCEPT") == (
            b"* ENABLED UTF8=ACCEPT\r\ne OK ENABLE completed\r\n"
        )
        assert _command(raw, b"k", b'CREATE "' + encoded + b'"').startswith(b"k OK")
        message = make_message("utf8")
        raw.send(b'p APPEND "' + encoded + b'" {%d+}\r\n' % len(message) + message + b"\r\n")
        while not (line := raw.read_line()).startswith(b"p "):
            pass
        assert line.startswith(b"p OK"), line
        listed = _command(raw, b"l", b'LIST "" "Entw*" RETURN (STATUS (MESSAGES))')
        literal = b"{%d}\r\n" % len(encoded) + encoded
        assert b'* LIST (\\HasNoChildren) "." ' + literal + b"\r\n" in listed, listed
        assert b"* STATUS " + literal + b" (MESSAGES 1)\r\n" in listed, listed
        status = _command(raw, b"s", b'STATUS "' + encoded + b'" (MESSAGES)')
        assert b"* STATUS " + literal + b" (MESSAGES 1)\r\n" in status, status
        bad = _command(raw, b"x", b'SELECT "Entw\xfcrfe"')  # Latin-1: not UTF-8
        assert bad == b"x NO [CANNOT] Mailbox name is not valid UTF-8\r\n"

    stored = encode_mutf7(FOLDER).decode()
    direct = upstream.imap(user.name)
    try:
        listing = direct.list('""', "Entw*")
        assert listing == ("OK", [f'(\\HasNoChildren) "." "{stored}"'.encode()])
    finally:
        direct.logout()
    assert len(upstream.mailbox_messages(user.name, stored)) == 1
    assert "utf8-accept" in fired

    # imapclient speaks modified UTF-7 (it never enables UTF8=ACCEPT): it sees the name too.
    client = imapclient.IMAPClient("127.0.0.1", port=proxy.port, ssl=False, timeout=30)
    client.login(user.name, user.password)
    assert FOLDER in [name for _flags, _delimiter, name in client.list_folders()]
    assert client.folder_status(FOLDER, [b"MESSAGES"])[b"MESSAGES"] == 1
    client.logout()


def test_ios_list_status_with_special_use_selection_and_return(
    upstream: DovecotInstance, user: MailUser, fired: list[str]
) -> None:
    """iOS 26's opener LIST and RFC 6154's selection form, with the synthesis rule."""
    rules = ("special-use-synthesis", "list-status-emulation")
    items = b"MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ"
    with _proxy(upstream, rules, fired) as proxy, proxy.raw() as raw:
        _login(raw, user)
        opener = _command(raw, b"B4", b'LIST "" "*" RETURN (STATUS (%s) SPECIAL-USE)' % items)
        only = _command(raw, b"B5", b'LIST (SPECIAL-USE) "" "*" RETURN (STATUS (MESSAGES))')
    assert opener.endswith(b"B4 OK LIST completed\r\n"), opener
    pairs = {m.group(3).decode(): m for m in _PAIR.finditer(opener)}
    assert b"\\Trash" in pairs["Deleted"].group(1)
    assert b"\\Drafts" in pairs["Drafts"].group(1)
    assert pairs["INBOX"].group(5).startswith(b"MESSAGES 3 ")
    assert b"HIGHESTMODSEQ " in pairs["INBOX"].group(5)
    assert pairs["Drafts"].group(5).startswith(b"MESSAGES 1 ")
    special = {m.group(3).decode(): m for m in _PAIR.finditer(only)}
    assert set(special) == {"Deleted", "Sent", "Drafts", "Junk"}, only
    assert only.count(b"* STATUS ") == 4
    assert special["Drafts"].group(5) == b"MESSAGES 1"
    assert special["Deleted"].group(5) == b"MESSAGES 0"
    assert {"special-use-synthesis", "list-status-emulation"} <= set(fired)


def test_an_ios_26_opener_with_the_rules_and_fingerprints_as_shipped(
    upstream: DovecotInstance, user: MailUser, fired: list[str]
) -> None:
    """Recognised from its ID: Apple's names for the special folders, each with the STATUS
    of the real folder, in the one LIST iOS opens the account with."""
    store = RuleStore(QuirkSnapshot(load_rules(), FingerprintSet.packaged()))
    config = ProxyConfig.model_validate(
        {"listen": ["127.0.0.1:0"], "upstream": {"address": f"127.0.0.1:{upstream.port}"}}
    )

    def observe(event: object) -> None:
        if isinstance(event, ev.RuleApplied):
            fired.append(event.rule_id)

    plain = base64.b64encode(f"\0{user.name}\0{user.password}".encode())
    items = b"MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ"
    with running_proxy(config, observer=observe, rules=store) as proxy, proxy.raw() as raw:
        raw.read_line()
        assert _command(raw, b"B1", b"AUTHENTICATE PLAIN " + plain).startswith(b"B1 OK")
        _command(raw, b"B2", IOS_ID)
        _command(raw, b"B3", b"NAMESPACE")
        opener = _command(raw, b"B4", b'LIST "" "*" RETURN (STATUS (%s) SPECIAL-USE)' % items)
        _command(raw, b"D6", b"LOGOUT")
    assert opener.endswith(b"B4 OK LIST completed\r\n"), opener
    pairs = {m.group(3).decode(): m for m in _PAIR.finditer(opener)}
    assert b"\\Trash" in pairs["Deleted Messages"].group(1), opener
    assert b"\\Sent" in pairs["Sent Messages"].group(1)
    assert "Deleted" not in pairs and "Sent" not in pairs
    trash = pairs["Deleted Messages"].group(5).decode().split()
    shown = dict(zip(trash[::2], trash[1::2], strict=True))
    direct = _direct_status(upstream, user, "Deleted")
    assert {key: int(shown[key]) for key in direct} == direct
    assert pairs["INBOX"].group(5).startswith(b"MESSAGES 3 ")
    assert {"apple-special-folders", "list-status-emulation"} <= set(fired)
