"""Runs of one-line FETCH responses: relayed whole, byte for byte, with the rules still
seeing every line.

How this works: a sans-IO ProxySession (shipped rules, or none) is logged in and has a
mailbox selected; the upstream then answers a FETCH with many one-line responses in one
read. The session must pass them on as one piece, unchanged, and the stub-FETCH rule must
have seen each of them (it learns UIDs from them, and a response it did not see would
count as missing: a stub).
"""

from __future__ import annotations

import pytest

from imap_proxy.quirks.model import RuleSet
from imap_proxy.session import events as ev
from imap_proxy.session.proxy import ProxySession
from imap_proxy.session.settings import SessionSettings
from imap_proxy.wire.errors import Side
from imap_proxy.wire.framer import FrameLimits, Framer
from tests.support.transcript import SHIPPED_RULES

GREETING = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN ID LITERAL+] Dovecot ready.\r\n"
RULE_SETS = {"shipped rules": SHIPPED_RULES, "no rules": RuleSet.empty()}


def _selected(rules: RuleSet, exists: int) -> ProxySession:
    session = ProxySession(SessionSettings(rules=rules))
    session.receive_from_upstream(GREETING)
    session.receive_from_client(b"a1 LOGIN joe secret\r\n")
    session.receive_from_upstream(b"a1 OK Logged in\r\n")
    session.receive_from_client(b"a2 SELECT INBOX\r\n")
    session.receive_from_upstream(
        b"* %d EXISTS\r\na2 OK [READ-WRITE] Select completed\r\n" % exists
    )
    return session


def _to_client(events: list[ev.Event]) -> list[bytes]:
    return [event.data for event in events if isinstance(event, ev.SendToClient)]


@pytest.mark.parametrize("rules", RULE_SETS.values(), ids=RULE_SETS.keys())
def test_a_run_of_fetch_lines_is_relayed_whole_and_unchanged(rules: RuleSet) -> None:
    session = _selected(rules, 300)
    assert session.receive_from_client(b"a3 FETCH 1:300 (UID FLAGS)\r\n")
    run = b"".join(b"* %d FETCH (UID %d FLAGS (\\Seen))\r\n" % (n, 1000 + n) for n in range(1, 301))
    sent = _to_client(session.receive_from_upstream(run + b"a3 OK Fetch completed\r\n"))
    assert sent[0] == run  # one piece
    assert b"".join(sent) == run + b"a3 OK Fetch completed\r\n"


def test_the_stub_rule_sees_every_line_of_a_run() -> None:
    session = _selected(SHIPPED_RULES, 4)
    session.receive_from_client(b"a3 FETCH 1:4 (UID FLAGS)\r\n")
    run = b"".join(b"* %d FETCH (UID %d FLAGS ())\r\n" % (n, 10 + n) for n in range(1, 5))
    sent = b"".join(_to_client(session.receive_from_upstream(run + b"a3 OK done\r\n")))
    assert sent == run + b"a3 OK done\r\n"  # every message answered: no stub
    # Another session expunged 2 and 3; Dovecot answers them with its own stubs. The UIDs
    # come from the run above: no lookup is sent upstream, the stubs carry them.
    session.receive_from_client(b"a4 FETCH 1:4 (FLAGS BODY.PEEK[])\r\n")
    events = session.receive_from_upstream(
        b"* 1 FETCH (FLAGS () BODY[] {2}\r\nhi)\r\n"
        b"* 2 FETCH (FLAGS (\\Deleted) BODY[] NIL)\r\n"
        b"* 3 FETCH (FLAGS (\\Deleted) BODY[] NIL)\r\n"
        b"* 4 FETCH (FLAGS () BODY[] {2}\r\nho)\r\n"
        b"a4 OK [EXPUNGEISSUED] Some messages were already expunged\r\n"
    )
    assert not [e for e in events if isinstance(e, ev.SendToUpstream)]
    sent = b"".join(_to_client(events))
    assert b"* 2 FETCH (UID 12 FLAGS () BODY[] {0}\r\n)\r\n" in sent
    assert b"* 3 FETCH (UID 13 FLAGS () BODY[] {0}\r\n)\r\n" in sent
    assert ev.EmulationStubFetch(2) in events


def test_a_missing_response_in_a_run_is_still_stubbed() -> None:
    # Dovecot's other answer for an expunged message: no response at all for it.
    session = _selected(SHIPPED_RULES, 3)
    session.receive_from_client(b"a3 UID FETCH 1:* (FLAGS)\r\n")
    session.receive_from_upstream(
        b"* 1 FETCH (UID 11 FLAGS ())\r\n* 2 FETCH (UID 12 FLAGS ())\r\n"
        b"* 3 FETCH (UID 13 FLAGS ())\r\na3 OK done\r\n"
    )
    session.receive_from_client(b"a4 FETCH 1:3 (FLAGS)\r\n")
    sent = b"".join(
        _to_client(
            session.receive_from_upstream(
                b"* 1 FETCH (FLAGS ())\r\n* 3 FETCH (FLAGS ())\r\n"
                b"a4 OK [EXPUNGEISSUED] Some messages were already expunged\r\n"
            )
        )
    )
    assert sent.startswith(b"* 1 FETCH (FLAGS ())\r\n* 3 FETCH (FLAGS ())\r\n")
    assert b"* 2 FETCH (UID 12 FLAGS ())\r\n" in sent


def test_framer_runs_stop_at_other_lines_literals_and_partial_lines() -> None:
    import re

    run = re.compile(rb"(?:\* [0-9]+ FETCH [^\r\n{]*\r\n)+")
    framer = Framer(Side.UPSTREAM, FrameLimits(max_line_length=1024))
    framer.feed(b"* 1 FETCH (FLAGS ())\r\n* 2 FETCH (FLAGS ())\r\na OK\r\n")
    taken = framer.peek_run(run)
    assert taken == b"* 1 FETCH (FLAGS ())\r\n* 2 FETCH (FLAGS ())\r\n"
    framer.skip(len(taken))
    assert framer.peek_run(run) == b""  # the tagged line is the framer's to frame
    assert framer.next_event().raw == b"a OK\r\n"  # type: ignore[union-attr]
    framer.feed(b"* 3 FETCH (BODY[] {2}\r\nhi)\r\n* 4 FETCH (FLAGS ())\r\n* 5 FETCH (FLA")
    assert framer.peek_run(run) == b""  # a literal: line by line
    assert framer.next_event().raw == b"* 3 FETCH (BODY[] {2}\r\n"  # type: ignore[union-attr]
    assert framer.peek_run(run) == b""  # inside the literal
    framer.next_event()
    framer.next_event()
    assert framer.peek_run(run) == b"* 4 FETCH (FLAGS ())\r\n"  # not the partial line
    framer.skip(len(b"* 4 FETCH (FLAGS ())\r\n"))
    framer.feed(b"GS ())\r\n")
    assert framer.peek_run(run) == b"* 5 FETCH (FLAGS ())\r\n"


def test_framer_runs_are_bounded_by_the_line_limit() -> None:
    import re

    run = re.compile(rb"(?:\* [0-9]+ FETCH [^\r\n{]*\r\n)+")
    framer = Framer(Side.UPSTREAM, FrameLimits(max_line_length=1024))
    long_line = b"* 1 FETCH (X " + b"a" * 2000 + b")\r\n"
    framer.feed(long_line)
    assert framer.peek_run(run) == b""
    with pytest.raises(Exception, match="line longer than 1024"):
        framer.next_event()


def test_a_refused_run_is_framed_line_by_line_and_looked_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A size-0 message at the end has a stub's look: the rule must see the run line by
    # line. The run is offered to the rules once, not again after each of its lines.
    session = _selected(SHIPPED_RULES, 2000)
    session.receive_from_client(b"a3 FETCH 1:2000 (UID RFC822.SIZE)\r\n")
    lines = [b"* %d FETCH (UID %d RFC822.SIZE 120)\r\n" % (n, n) for n in range(1, 2000)]
    lines.append(b"* 2000 FETCH (UID 2000 RFC822.SIZE 0)\r\n")
    offered: list[int] = []
    real_pass_run = session.hooks.pass_run

    def counting_pass_run(*args: object, **kwargs: object) -> bool:
        offered.append(1)
        return real_pass_run(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(session.hooks, "pass_run", counting_pass_run)
    sent = _to_client(session.receive_from_upstream(b"".join(lines) + b"a3 OK done\r\n"))
    assert b"".join(sent) == b"".join(lines) + b"a3 OK done\r\n"
    assert len(offered) == 1
    assert len(sent) > 2000  # line by line
    # The next run, after the refused one, is relayed whole again.
    session.receive_from_client(b"a4 FETCH 1:3 (FLAGS)\r\n")
    run = b"* 1 FETCH (FLAGS ())\r\n* 2 FETCH (FLAGS ())\r\n* 3 FETCH (FLAGS ())\r\n"
    assert _to_client(session.receive_from_upstream(run + b"a4 OK done\r\n"))[0] == run
