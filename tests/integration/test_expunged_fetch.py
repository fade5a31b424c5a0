"""Messages expunged by another session, fetched through the proxy from a real Dovecot
(both profiles, modern and legacy).

How this works: session A (a client library, through the proxy) selects INBOX; session B
(imaplib, straight to Dovecot) expunges some messages; A, not told yet (no NOOP), fetches
them by sequence number and by UID. Dovecot 2.3 answers A's FETCH with its own stubs
(`BODY[] NIL`, no UID) and `OK [EXPUNGEISSUED]` - the control tests show ordinary client
code failing on that directly - and the proxy's stub-fetch rule turns them into typed
stubs with UID. A sees the EXPUNGE at its next NOOP. The policies (`no`, the loop-breaker)
run with their own rule sets.
"""

from __future__ import annotations

import datetime
import email
import imaplib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import imapclient
import pytest

from imap_proxy.config import ProxyConfig
from imap_proxy.quirks.fingerprint import FingerprintSet
from imap_proxy.quirks.model import RuleSet, load_rules
from imap_proxy.quirks.store import QuirkSnapshot, RuleStore
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.proxy import RunningProxy, running_proxy

NewUser = Callable[[DovecotInstance], MailUser]
COUNT = 5
pytestmark = pytest.mark.dovecot


@pytest.fixture(params=["modern", "legacy"])
def upstream(request: pytest.FixtureRequest) -> DovecotInstance:
    """Both Dovecot profiles (the legacy one advertises far less; FETCH is the same code)."""
    instance: DovecotInstance = request.getfixturevalue(f"dovecot_{request.param}")
    return instance


def config(upstream: DovecotInstance) -> ProxyConfig:
    return ProxyConfig.model_validate(
        {"listen": ["127.0.0.1:0"], "upstream": {"address": f"127.0.0.1:{upstream.port}"}}
    )


@pytest.fixture
def mailbox(upstream: DovecotInstance, fresh_mail_user: NewUser) -> MailUser:
    user = fresh_mail_user(upstream)
    for n in range(1, COUNT + 1):
        upstream.append(user.name, b"Subject: m%d\r\n\r\nbody %d\r\n" % (n, n))
    return user


@pytest.fixture
def proxy(upstream: DovecotInstance) -> Iterator[RunningProxy]:
    """The proxy with the packaged rules, as shipped (stub-fetch-expunged enabled)."""
    with running_proxy(config(upstream)) as running:
        yield running


def running_with(upstream: DovecotInstance, rules: RuleSet) -> Iterator[RunningProxy]:
    store = RuleStore(QuirkSnapshot(rules, FingerprintSet.packaged()))
    with running_proxy(config(upstream), rules=store) as running:
        yield running


def expunge_elsewhere(upstream: DovecotInstance, user: MailUser, numbers: str) -> None:
    """Session B: flag `numbers` \\Deleted and expunge them."""
    other = upstream.imap(user.name)
    try:
        other.select("INBOX")
        assert other.store(numbers, "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
        assert other.expunge()[0] == "OK"
    finally:
        other.logout()


def login(proxy: RunningProxy, user: MailUser) -> imaplib.IMAP4:
    client = proxy.imap()
    client.login(user.name, user.password)
    assert client.select("INBOX")[0] == "OK"
    return client


def bodies(data: Sequence[object]) -> dict[int, tuple[bytes, bytes]]:
    """imaplib FETCH data -> number -> (header line, literal), the way client code reads it."""
    found: dict[int, tuple[bytes, bytes]] = {}
    for item in data:
        if isinstance(item, tuple):
            head, literal = item
            found[int(head.split(b" ", 1)[0])] = (head, literal)
    return found


# --- imaplib -------------------------------------------------------------------------


def test_control_imaplib_code_breaks_on_dovecots_own_answer(
    upstream: DovecotInstance, mailbox: MailUser
) -> None:
    """Without the proxy: the NIL body is no (header, data) pair, so `data[0][1]` is an int."""
    client = upstream.imap(mailbox.name)
    try:
        client.select("INBOX")
        expunge_elsewhere(upstream, mailbox, "2")
        status, data = client.fetch("2", "(RFC822)")
        assert status == "OK"
        assert not isinstance(data[0], tuple)
        with pytest.raises((TypeError, AttributeError)):
            email.message_from_bytes(data[0][1])  # type: ignore[arg-type, index]
    finally:
        client.logout()


def test_imaplib_fetch_by_number_gets_stubs_and_sees_the_expunge_at_noop(
    proxy: RunningProxy, upstream: DovecotInstance, mailbox: MailUser
) -> None:
    client = login(proxy, mailbox)
    try:
        expunge_elsewhere(upstream, mailbox, "2,4")
        status, data = client.fetch("1:5", "(FLAGS RFC822)")
        assert status == "OK"
        found = bodies(data)
        assert sorted(found) == [1, 2, 3, 4, 5]
        for number in (2, 4):
            head, literal = found[number]
            assert literal == b""
            assert b"UID %d" % number in head  # UIDs learnt by the proxy from Dovecot
            assert email.message_from_bytes(literal).get("Subject") is None
        assert email.message_from_bytes(found[3][1])["Subject"] == "m3"
        assert client.noop()[0] == "OK"
        # Dovecot reports them highest first: 4, then 2
        assert client.untagged_responses.get("EXPUNGE") == [b"4", b"2"]
        status, data = client.fetch("1:3", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert status == "OK"
        headers = bodies(data)
        subjects = [headers[n][1].strip() for n in sorted(headers)]
        assert subjects == [b"Subject: m1", b"Subject: m3", b"Subject: m5"]
    finally:
        client.logout()


def test_imaplib_uid_fetch_store_copy_of_vanished_uids_answer_ok(
    proxy: RunningProxy, upstream: DovecotInstance, mailbox: MailUser
) -> None:
    client = login(proxy, mailbox)
    try:
        expunge_elsewhere(upstream, mailbox, "3")
        status, data = client.uid("FETCH", "3", "(FLAGS BODY.PEEK[])")
        assert status == "OK" and data == [None]  # no data at all (RFC 9051 §6.4.9)
        assert client.untagged_responses.get("EXPUNGE") == [b"3"]  # and told at once
        assert client.uid("STORE", "3", "+FLAGS", "(\\Seen)")[0] == "OK"
        assert client.uid("COPY", "3", "Sent")[0] == "OK"
        assert client.uid("STORE", "2:4", "+FLAGS", "(\\Flagged)")[0] == "OK"
    finally:
        client.logout()
    flagged = upstream.imap(mailbox.name)
    try:
        flagged.select("INBOX", readonly=True)
        assert flagged.uid("SEARCH", "FLAGGED")[1] == [b"2 4"]  # the live ones got it
    finally:
        flagged.logout()


# --- imapclient ---------------------------------------------------------------------


def test_imapclient_fetch_by_number_of_every_item_type(
    proxy: RunningProxy, upstream: DovecotInstance, mailbox: MailUser
) -> None:
    client = imapclient.IMAPClient("127.0.0.1", proxy.port, ssl=False, use_uid=False)
    try:
        client.login(mailbox.name, mailbox.password)
        client.select_folder("INBOX")
        expunge_elsewhere(upstream, mailbox, "2")
        items = [
            "FLAGS",
            "INTERNALDATE",
            "RFC822.SIZE",
            "ENVELOPE",
            "BODYSTRUCTURE",
            "BODY.PEEK[HEADER]",
            "BODY.PEEK[]<0.4>",
        ]
        result = client.fetch([1, 2, 3], items)
        assert sorted(result) == [1, 2, 3]
        stub = result[2]
        assert stub[b"UID"] == 2
        assert stub[b"FLAGS"] == ()
        assert stub[b"RFC822.SIZE"] == 0
        assert isinstance(stub[b"INTERNALDATE"], datetime.datetime)
        assert stub[b"ENVELOPE"].subject is None
        assert stub[b"BODYSTRUCTURE"][:2] == (b"TEXT", b"PLAIN")
        assert stub[b"BODY[HEADER]"] == b""
        assert stub[b"BODY[]<0>"] == b""
        assert result[3][b"BODY[]<0>"] == b"Subj"
        assert result[3][b"ENVELOPE"].subject == b"m3"
        responses = client.noop()[1]
        assert (2, b"EXPUNGE") in responses
        assert client.search("ALL") == [1, 2, 3, 4]
    finally:
        client.logout()


def test_imapclient_by_uid_sees_nothing_for_vanished_uids_and_no_error(
    proxy: RunningProxy, upstream: DovecotInstance, mailbox: MailUser
) -> None:
    client = imapclient.IMAPClient("127.0.0.1", proxy.port, ssl=False)  # use_uid=True
    try:
        client.login(mailbox.name, mailbox.password)
        client.select_folder("INBOX")
        expunge_elsewhere(upstream, mailbox, "1:2")
        assert set(client.fetch([1, 2, 3], ["FLAGS"])) <= {1, 2, 3}
        client.add_flags([1, 2], [imapclient.SEEN])
        client.copy([1], "Sent")
        assert client.fetch([1, 2], ["RFC822"]) == {}
        client.noop()
        assert sorted(client.search()) == [3, 4, 5]
    finally:
        client.logout()


# --- policies -------------------------------------------------------------------------


@pytest.fixture
def no_policy_proxy(upstream: DovecotInstance, tmp_path: Path) -> Iterator[RunningProxy]:
    (tmp_path / "no.yaml").write_text(
        "rules:\n  - id: expunged-fetch-no\n    summary: plain NO\n"
        "    evidence: {fires: x.txt, silent: y.txt}\n"
        "    actions: [{type: stub_fetch, policy: 'no'}]\n",
        encoding="utf-8",
    )
    yield from running_with(upstream, load_rules(tmp_path))


def test_policy_no_gives_no_then_noop_brings_the_expunge(
    no_policy_proxy: RunningProxy, upstream: DovecotInstance, mailbox: MailUser
) -> None:
    client = login(no_policy_proxy, mailbox)
    try:
        expunge_elsewhere(upstream, mailbox, "2")
        status, data = client.fetch("1:3", "(RFC822)")
        assert status == "NO"
        assert sorted(bodies(client.untagged_responses.pop("FETCH", []))) in ([1, 3], [])
        assert client.fetch("2", "(RFC822)")[0] == "NO"  # again: still NO, no BYE
        client.noop()
        assert client.untagged_responses.get("EXPUNGE") == [b"2"]
        status, data = client.fetch("2", "(RFC822)")
        assert status == "OK" and bodies(data)[2][1].startswith(b"Subject: m3")
    finally:
        client.logout()


@pytest.fixture
def loop_breaker_proxy(upstream: DovecotInstance) -> Iterator[RunningProxy]:
    yield from running_with(upstream, load_rules().only(["stub-fetch-loop-breaker"]))


def test_loop_breaker_ends_a_repeated_fetch_with_bye(
    loop_breaker_proxy: RunningProxy, upstream: DovecotInstance, mailbox: MailUser
) -> None:
    client = login(loop_breaker_proxy, mailbox)
    try:
        expunge_elsewhere(upstream, mailbox, "2")
        assert client.fetch("2", "(RFC822)")[0] == "NO"
        with pytest.raises(imaplib.IMAP4.abort, match="expunged by another session"):
            client.fetch("2", "(RFC822)")
    finally:
        client.shutdown()
    # a new session sees the mailbox as it is
    again = login(loop_breaker_proxy, mailbox)
    try:
        status, data = again.fetch("2", "(RFC822)")
        assert status == "OK" and bodies(data)[2][1].startswith(b"Subject: m3")
    finally:
        again.logout()
