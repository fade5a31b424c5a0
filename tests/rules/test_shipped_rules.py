"""Every shipped rule, on its evidence traces, through the real proxy against Dovecot.

For each rule of the packaged rule set, alone and enabled: its `fires` trace, replayed by
a client through the proxy in front of a private Dovecot of the rule's profile, makes it
fire (a RuleApplied observation names it) and shows its effect (the trace's E: patterns);
its `silent` trace - another client, or an upstream that needs no help - does not.
Rules about upstream misbehaviour Dovecot lacks name `faults` in their evidence: the
replay then goes through tests/support/anomalies.py's relay, which injects them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

import pytest

from imap_proxy.config import ProxyConfig
from imap_proxy.quirks.fingerprint import FingerprintSet
from imap_proxy.quirks.model import LoadedRule, Rule, RuleSet, load_rules
from imap_proxy.quirks.store import QuirkSnapshot, RuleStore
from imap_proxy.session import events as ev
from tests.support.anomalies import fault_relay
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
    faults: list[str],
) -> tuple[list[ev.RuleApplied], bytes]:
    upstream: DovecotInstance = request.getfixturevalue(f"dovecot_{profile}")
    user = fresh_mail_user(upstream)
    fired: list[ev.RuleApplied] = []

    def observe(event: object) -> None:
        if isinstance(event, ev.RuleApplied):
            fired.append(event)

    store = RuleStore(QuirkSnapshot(_alone(rule), FingerprintSet.packaged()))
    with ExitStack() as stack:
        port = upstream.port
        if faults:  # an upstream anomaly Dovecot lacks, injected in front of it
            port = stack.enter_context(fault_relay(upstream.port, faults))
        config = ProxyConfig.model_validate(
            {"listen": ["127.0.0.1:0"], "upstream": {"address": f"127.0.0.1:{port}"}}
        )
        proxy = stack.enter_context(running_proxy(config, observer=observe, rules=store))
        received = run_trace(load_trace(trace_name), proxy, upstream, user)
    return fired, received


def _alone(rule: Rule) -> RuleSet:
    """The rule alone and enabled, with its evidence's `replay_parameters` applied."""
    chosen = SHIPPED.only([rule.id])
    changes = rule.evidence.replay_parameters
    if not changes:
        return chosen
    loaded = chosen.rules[0]
    actions = [
        action.model_copy(
            update={k: v for k, v in changes.items() if k in type(action).model_fields}
        )
        for action in loaded.rule.actions
    ]
    replayed = loaded.rule.model_copy(update={"actions": actions})
    return RuleSet((LoadedRule(replayed, loaded.source),), chosen.origin)


@pytest.mark.parametrize("rule", RULES, ids=[rule.id for rule in RULES])
def test_rule_fires_on_its_evidence(
    rule: Rule,
    request: pytest.FixtureRequest,
    fresh_mail_user: Callable[[DovecotInstance], MailUser],
) -> None:
    evidence = rule.evidence
    fired, received = _replay(
        rule, evidence.fires, evidence.upstream, request, fresh_mail_user, evidence.faults
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
    evidence = rule.evidence
    profile = evidence.silent_upstream or evidence.upstream
    faults = evidence.faults if evidence.silent_faults is None else evidence.silent_faults
    fired, received = _replay(rule, evidence.silent, profile, request, fresh_mail_user, faults)
    assert fired == [], received.decode(errors="replace")


# Rules whose E: patterns also hold without them, because Dovecot copes by itself.
DOVECOT_COPES = {
    "answer-id-in-every-state": "Dovecot answers ID even where it does not advertise it",
    "delay-newmail": "Dovecot itself announces new mail at NOOP when nothing else ran",
    "tb-extra-mailbox-sep": "Dovecot accepts a trailing separator in CREATE",
    "idle-reidle": "the renewal is unseen by design; Dovecot's one IDLE outlasts the replay",
}
WITH_EXPECTATIONS = [
    rule
    for rule in RULES
    if load_trace(rule.evidence.fires).expect and rule.id not in DOVECOT_COPES
]


@pytest.mark.parametrize("rule", WITH_EXPECTATIONS, ids=[r.id for r in WITH_EXPECTATIONS])
def test_evidence_expectations_fail_without_the_rule(
    rule: Rule,
    request: pytest.FixtureRequest,
    fresh_mail_user: Callable[[DovecotInstance], MailUser],
) -> None:
    """The E: patterns show the rule's effect: with no rule at all, some do not hold."""
    evidence = rule.evidence
    upstream: DovecotInstance = request.getfixturevalue(f"dovecot_{evidence.upstream}")
    user = fresh_mail_user(upstream)
    store = RuleStore(QuirkSnapshot(SHIPPED.only([]), FingerprintSet.packaged()))
    with ExitStack() as stack:
        port = upstream.port
        if evidence.faults:
            port = stack.enter_context(fault_relay(upstream.port, evidence.faults))
        config = ProxyConfig.model_validate(
            {"listen": ["127.0.0.1:0"], "upstream": {"address": f"127.0.0.1:{port}"}}
        )
        proxy = stack.enter_context(running_proxy(config, rules=store))
        received = run_trace(load_trace(evidence.fires), proxy, upstream, user)
    assert expectations_met(load_trace(evidence.fires), received) != [], received.decode(
        errors="replace"
    )
