"""Everyday client work with the whole shipped rule catalogue enabled at once.

The rest of the integration suite already runs with the packaged rules as a default proxy
loads them (every default-on rule). Here every shipped rule is switched on together, the
opt-in ones included, except `delay-newmail`, whose purpose is to hold new-mail
notifications back (the IDLE step would wait for them): nothing in the catalogue may
break login, listing, selecting, fetching, flagging, copying, appending, expunging or
IDLE, against a modern and a legacy Dovecot, and mail must end up where the client put it.
"""

from __future__ import annotations

import imaplib
import threading
from collections.abc import Callable

import imapclient
import pytest

from imap_proxy.config import ProxyConfig
from imap_proxy.quirks.fingerprint import FingerprintSet
from imap_proxy.quirks.model import load_rules
from imap_proxy.quirks.store import QuirkSnapshot, RuleStore
from imap_proxy.session import events as ev
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.proxy import running_proxy

SHIPPED = load_rules()
HOLDS_NEW_MAIL = {"delay-newmail"}
CATALOGUE = SHIPPED.only([r.rule.id for r in SHIPPED.rules if r.rule.id not in HOLDS_NEW_MAIL])
MESSAGE = b"From: a@example.org\r\nSubject: catalogue\r\n\r\nbody of the message\r\n"


def test_the_catalogue_enables_every_shipped_rule_but_one() -> None:
    assert len(CATALOGUE.enabled) == len(SHIPPED.rules) - len(HOLDS_NEW_MAIL) > 10


@pytest.mark.parametrize("profile", ["dovecot_modern", "dovecot_legacy"])
def test_everyday_work_with_every_rule_enabled(
    profile: str,
    request: pytest.FixtureRequest,
    fresh_mail_user: Callable[[DovecotInstance], MailUser],
) -> None:
    upstream: DovecotInstance = request.getfixturevalue(profile)
    user = fresh_mail_user(upstream)
    upstream.append(user.name, MESSAGE, "INBOX")
    applied: list[str] = []
    problems: list[object] = []

    def observe(event: object) -> None:
        if isinstance(event, ev.RuleApplied):
            applied.append(event.rule_id)
        elif isinstance(event, ev.ProtocolViolation):
            problems.append(event)

    store = RuleStore(QuirkSnapshot(CATALOGUE, FingerprintSet.packaged()))
    config = ProxyConfig.model_validate(
        {"listen": ["127.0.0.1:0"], "upstream": {"address": f"127.0.0.1:{upstream.port}"}}
    )
    with running_proxy(config, observer=observe, rules=store) as proxy:
        client = imaplib.IMAP4("127.0.0.1", proxy.port)
        assert "IMAP4REV1" in client.capabilities
        client.login(user.name, user.password)
        assert client.namespace()[0] == "OK"
        assert client._simple_command("ENABLE", "CONDSTORE")[0] == "OK"
        assert client.list()[0] == "OK"
        assert client.select("INBOX")[1] == [b"1"]
        typ, data = client.fetch("1", "(UID FLAGS BODYSTRUCTURE ENVELOPE BODY.PEEK[]<0.10>)")
        assert typ == "OK" and data[0] is not None
        typ, data = client.fetch("1", "(BODY.PEEK[]<5000>)")
        assert typ == "OK"
        client.store("1", "+FLAGS", "(\\Deleted)")
        assert client.unselect()[0] == "OK"  # emulated on legacy, never a CLOSE
        assert client.select("INBOX")[1] == [b"1"]  # the \Deleted message is still there
        client.store("1", "-FLAGS", "(\\Deleted)")
        assert client.copy("1", "Drafts")[0] == "OK"
        assert client.append("Drafts", "(\\Seen)", None, MESSAGE)[0] == "OK"
        client.store("1", "+FLAGS", "(\\Deleted)")
        assert client.expunge()[0] == "OK"
        client.logout()

        watcher = imapclient.IMAPClient("127.0.0.1", port=proxy.port, ssl=False)
        watcher.login(user.name, user.password)
        watcher.select_folder("INBOX")
        watcher.idle()
        threading.Timer(0.5, lambda: upstream.append(user.name, MESSAGE, "INBOX")).start()
        responses = watcher.idle_check(timeout=20)
        watcher.idle_done()
        watcher.logout()
    assert any(kind == b"EXISTS" for _, kind in responses), responses
    assert problems == []
    assert len(upstream.mailbox_messages(user.name, "Drafts")) == 2
    assert len(upstream.mailbox_messages(user.name, "INBOX")) == 1
    if profile == "dovecot_legacy":  # the server-gap rules did their part
        # utf8-accept runs before answer-enable and answers every ENABLE where it is on.
        assert {"utf8-accept", "emulate-unselect"} <= set(applied)
