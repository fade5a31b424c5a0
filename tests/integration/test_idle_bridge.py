"""The IDLE bridge through the real proxy against a real Dovecot.

How this works: re-IDLE on the legacy profile with a 2-second `reidle_after` (the
proxy's RuleApplied observations say when a renewal happened), polling on the
`legacy_noidle` profile (Dovecot announces no IDLE but executes NOOP) with a 1-second
`poll_interval`. Another session appends a message while the client idles; the idling
client must hear `* n EXISTS` and its DONE must get a tagged OK, by hand and through
imapclient's idle()/idle_check()/idle_done().
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import imapclient

from imap_proxy.config import ProxyConfig
from imap_proxy.quirks.fingerprint import FingerprintSet
from imap_proxy.quirks.model import LoadedRule, RuleSet, load_rules
from imap_proxy.quirks.store import QuirkSnapshot, RuleStore
from imap_proxy.session import events as ev
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.proxy import RawClient, RunningProxy, running_proxy

NewUser = Callable[[DovecotInstance], MailUser]
MESSAGE = b"From: a@example.org\r\nSubject: pushed\r\n\r\nnew mail\r\n"


class Renewals:
    """Counts RuleApplied observations of one action kind; lets a test wait for the n-th."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.count = 0
        self._changed = threading.Condition()

    def __call__(self, event: object) -> None:
        if isinstance(event, ev.RuleApplied) and event.action == self.kind:
            with self._changed:
                self.count += 1
                self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 20.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.count >= count, timeout)


def rules(rule_id: str, **parameters: float) -> RuleStore:
    """The shipped rule alone and enabled, with its action's parameters changed."""
    chosen = load_rules().only([rule_id])
    loaded = chosen.rules[0]
    actions = [action.model_copy(update=parameters) for action in loaded.rule.actions]
    rule = loaded.rule.model_copy(update={"actions": actions})
    return RuleStore(
        QuirkSnapshot(RuleSet((LoadedRule(rule, loaded.source),)), FingerprintSet.packaged())
    )


@contextmanager
def proxy_for(
    upstream: DovecotInstance, store: RuleStore, observer: Renewals
) -> Iterator[RunningProxy]:
    config = ProxyConfig.model_validate(
        {"listen": ["127.0.0.1:0"], "upstream": {"address": f"127.0.0.1:{upstream.port}"}}
    )
    with running_proxy(config, rules=store, observer=observer) as proxy:
        yield proxy


def login_and_idle(raw: RawClient, user: MailUser) -> bytes:
    """Log in, select INBOX, start IDLE; what the proxy said up to the `+`."""
    said = raw.read_line()
    raw.send(f"A1 LOGIN {user.name} {user.password}\r\n".encode())
    said += raw.read_until(b"A1 OK")
    said += raw.read_line()
    raw.send(b"A2 SELECT INBOX\r\n")
    said += raw.read_until(b"A2 OK")
    said += raw.read_line()
    raw.send(b"A3 IDLE\r\n")
    said += raw.read_until(b"+ ")
    return said + raw.read_line()


def test_mail_after_two_renewals_reaches_the_idling_client_and_done_gets_ok(
    dovecot_legacy: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_legacy)
    renewals = Renewals("reidle")
    store = rules("idle-reidle", reidle_after=2)
    with proxy_for(dovecot_legacy, store, renewals) as proxy, proxy.raw() as raw:
        login_and_idle(raw, user)
        assert renewals.wait_for(2), "the proxy never renewed the upstream IDLE"
        time.sleep(0.5)  # let the renewal's own IDLE start
        dovecot_legacy.append(user.name, MESSAGE)
        during = raw.read_until(b"* 1 EXISTS\r\n")
        raw.send(b"DONE\r\n")
        during += raw.read_until(b"A3 ")
        final = raw.read_line()
        raw.send(b"A4 NOOP\r\n")
        after = raw.read_until(b"A4 OK")
    assert final.startswith(b"OK Idle completed")
    # Nothing of the renewals shows: only untagged lines before the client's own answer.
    for line in during.split(b"\r\n")[:-1]:
        if line and line != b"A3":
            assert line.startswith(b"* "), during
    assert b"ipx" not in during + final + after and b"+ " not in during


def test_polling_delivers_mail_to_a_client_idling_on_an_upstream_without_idle(
    dovecot_legacy_noidle: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_legacy_noidle)
    polls = Renewals("idle_poll")
    store = rules("idle-by-polling", poll_interval=1)
    with proxy_for(dovecot_legacy_noidle, store, polls) as proxy, proxy.raw() as raw:
        said = login_and_idle(raw, user)
        dovecot_legacy_noidle.append(user.name, MESSAGE)
        during = raw.read_until(b"* 1 EXISTS\r\n")
        raw.send(b"DONE\r\n")
        during += raw.read_until(b"A3 ")
        final = raw.read_line()
        raw.send(b"A4 FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n")
        fetched = raw.read_until(b"A4 OK")
    assert b"IDLE" in said.split(b"A1 OK", 1)[1].split(b"\r\n")[0]  # advertised after login
    assert said.endswith(b"+ idling\r\n")
    assert final == b"OK IDLE terminated\r\n"
    assert b"Subject: pushed" in fetched


def test_imapclient_idles_through_the_poller(
    dovecot_legacy_noidle: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_legacy_noidle)
    store = rules("idle-by-polling", poll_interval=1)
    with proxy_for(dovecot_legacy_noidle, store, Renewals("idle_poll")) as proxy:
        client = imapclient.IMAPClient("127.0.0.1", port=proxy.port, ssl=False, timeout=30)
        client.login(user.name, user.password)
        assert b"IDLE" in client.capabilities()
        client.select_folder("INBOX")
        client.idle()
        dovecot_legacy_noidle.append(user.name, MESSAGE)
        heard: list[tuple[object, ...]] = []
        deadline = time.monotonic() + 20
        while not any(r[1:] == (b"EXISTS",) for r in heard) and time.monotonic() < deadline:
            heard += client.idle_check(timeout=2)
        text, _more = client.idle_done()
        assert (1, b"EXISTS") in heard
        assert text == b"IDLE terminated"
        assert client.noop()[0].startswith(b"NOOP completed")
        client.logout()


def test_imapclient_idles_through_renewals(
    dovecot_legacy: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_legacy)
    renewals = Renewals("reidle")
    with proxy_for(dovecot_legacy, rules("idle-reidle", reidle_after=1), renewals) as proxy:
        client = imapclient.IMAPClient("127.0.0.1", port=proxy.port, ssl=False, timeout=30)
        client.login(user.name, user.password)
        client.select_folder("INBOX")
        client.idle()
        assert renewals.wait_for(1)
        dovecot_legacy.append(user.name, MESSAGE)
        heard: list[tuple[object, ...]] = []
        deadline = time.monotonic() + 20
        while not any(r[1:] == (b"EXISTS",) for r in heard) and time.monotonic() < deadline:
            heard += client.idle_check(timeout=2)
        text, _more = client.idle_done()
        assert (1, b"EXISTS") in heard
        assert text.startswith(b"Idle completed")
        assert client.search() == [1]
        client.logout()
