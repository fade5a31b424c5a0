"""Every shipped rule, on its evidence traces, through the real proxy against Dovecot.

For each rule of the packaged rule set, alone and enabled: its `fires` trace, replayed by
a client through the proxy in front of a private Dovecot of the rule's profile, makes it
fire (a RuleApplied observation names it) and shows its effect (the trace's E: patterns);
its `silent` trace - another client, or an upstream that needs no help - does not.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from imap_proxy.config import ProxyConfig
from imap_proxy.quirks.fingerprint import FingerprintSet
from imap_proxy.quirks.model import Rule, load_rules
from imap_proxy.quirks.store import QuirkSnapshot, RuleStore
from imap_proxy.session import events as ev
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.proxy import running_proxy
from tests.support.traces import expectations_met, load_trace, run_trace

SHIPPED = load_rules()
RULES = [loaded.rule for loaded in SHIPPED.rules]


def _replay(
    rule: Rule,
    trace_name: str,
    profile: str,
    request: pytest.FixtureRequest,
    fresh_mail_user: Callable[[DovecotInstance], MailUser],
) -> tuple[list[ev.RuleApplied], bytes]:
    upstream: DovecotInstance = request.getfixturevalue(f"dovecot_{profile}")
    user = fresh_mail_user(upstream)
    fired: list[ev.RuleApplied] = []

    def observe(event: object) -> None:
        if isinstance(event, ev.RuleApplied):
            fired.append(event)

    store = RuleStore(QuirkSnapshot(SHIPPED.only([rule.id]), FingerprintSet.packaged()))
    config = ProxyConfig.model_validate(
        {"listen": ["127.0.0.1:0"], "upstream": {"address": f"127.0.0.1:{upstream.port}"}}
    )
    with running_proxy(config, observer=observe, rules=store) as proxy:
        received = run_trace(load_trace(trace_name), proxy, upstream, user)
    return fired, received


@pytest.mark.parametrize("rule", RULES, ids=[rule.id for rule in RULES])
def test_rule_fires_on_its_evidence(
    rule: Rule,
    request: pytest.FixtureRequest,
    fresh_mail_user: Callable[[DovecotInstance], MailUser],
) -> None:
    fired, received = _replay(
        rule, rule.evidence.fires, rule.evidence.upstream, request, fresh_mail_user
    )
    assert {event.rule_id for event in fired} == {rule.id}, received.decode(errors="replace")
    missing = expectations_met(load_trace(rule.evidence.fires), received)
    assert missing == [], received.decode(errors="replace")


@pytest.mark.parametrize("rule", RULES, ids=[rule.id for rule in RULES])
def test_rule_stays_silent_where_it_must(
    rule: Rule,
    request: pytest.FixtureRequest,
    fresh_mail_user: Callable[[DovecotInstance], MailUser],
) -> None:
    profile = rule.evidence.silent_upstream or rule.evidence.upstream
    fired, received = _replay(rule, rule.evidence.silent, profile, request, fresh_mail_user)
    assert fired == [], received.decode(errors="replace")
