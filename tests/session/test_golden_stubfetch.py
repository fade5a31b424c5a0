"""The stub-FETCH golden transcript, with the shipped rules, in every chunking."""

from __future__ import annotations

import pytest

from imap_proxy.session import events as ev
from imap_proxy.session.settings import SessionSettings
from tests.session.test_golden import CHUNKERS
from tests.support.transcript import Chunker, expected_outputs, load, replay


@pytest.mark.parametrize("chunker", CHUNKERS.values(), ids=CHUNKERS.keys())
def test_dovecot_stubs_become_typed_stubs_in_every_chunking(chunker: Chunker) -> None:
    steps = load("stub-fetch-dovecot.txt")
    result = replay(steps, chunker)
    want_client, want_upstream = expected_outputs(steps)
    assert result.to_client == want_client
    assert result.to_upstream == want_upstream
    assert {e.rule_id for e in result.of_type(ev.RuleApplied)} == {"stub-fetch-expunged"}
    assert result.of_type(ev.EmulationStubFetch) == [ev.EmulationStubFetch(2)]
    completed = [(c.tag, c.status) for c in result.of_type(ev.CommandCompleted)]
    assert ("a3", "OK") in completed


def test_without_rules_dovecots_own_stubs_reach_the_client() -> None:
    result = replay(load("stub-fetch-dovecot.txt"), settings=SessionSettings())
    assert b"* 2 FETCH (FLAGS (\\Deleted) BODY[] NIL)\r\n" in result.to_client
    assert b"ipx" not in result.to_upstream
