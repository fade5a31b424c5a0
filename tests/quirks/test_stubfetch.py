"""The stub-FETCH action through a sans-IO session, against scripted upstream answers.

The upstream answers are the shapes real servers give (Dovecot 2.3's own NIL stubs and
OK [EXPUNGEISSUED], RFC 2180 §4.1.2's NO, data left out); Dovecot itself is exercised in
tests/integration/test_expunged_fetch.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imap_proxy.quirks.model import RuleSet, load_rules
from imap_proxy.session import events as ev
from imap_proxy.session.proxy import ProxySession
from imap_proxy.session.settings import SessionSettings
from imap_proxy.wire.errors import Side
from imap_proxy.wire.response import FetchData, StatusResponse, parse_response
from tests.wire import frame

GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE UIDPLUS] ready\r\n"
SHIPPED = load_rules()


def stub_rules() -> RuleSet:
    return SHIPPED.only(["stub-fetch-expunged"])


def custom_rules(tmp_path: Path, action: str) -> RuleSet:
    (tmp_path / "r.yaml").write_text(
        "rules:\n  - id: custom-stub\n    summary: x\n"
        "    evidence: {fires: x.txt, silent: y.txt}\n"
        f"    actions: [{action}]\n",
        encoding="utf-8",
    )
    return load_rules(tmp_path)


class Run:
    """A session in the selected state with `count` messages; helpers send and collect."""

    def __init__(self, rules: RuleSet, count: int = 3, uids: bool = False) -> None:
        self.session = ProxySession(SessionSettings(rules=rules))
        self.events: list[ev.Event] = []
        self.upstream(GREETING)
        self.client(b"s SELECT INBOX\r\n")
        self.upstream(b"* %d EXISTS\r\ns OK [READ-WRITE] Select completed\r\n" % count)
        if uids:
            self.client(b"u FETCH 1:* (UID)\r\n")
            lines = b"".join(b"* %d FETCH (UID %d)\r\n" % (n, n * 10) for n in range(1, count + 1))
            self.upstream(lines + b"u OK done\r\n")
        self.events.clear()

    def client(self, data: bytes) -> None:
        self.events += self.session.receive_from_client(data)

    def upstream(self, data: bytes) -> None:
        self.events += self.session.receive_from_upstream(data)

    def take(self, kind: type[ev.SendToClient] | type[ev.SendToUpstream]) -> bytes:
        out = b"".join(e.data for e in self.events if isinstance(e, kind))
        self.events = [e for e in self.events if not isinstance(e, kind)]
        return out

    def to_client(self) -> bytes:
        return self.take(ev.SendToClient)

    def to_upstream(self) -> bytes:
        return self.take(ev.SendToUpstream)

    def applied(self) -> list[str]:
        return [e.rule_id for e in self.events if isinstance(e, ev.RuleApplied)]


def responses(data: bytes) -> list[object]:
    return [parse_response(message) for message in frame(data)]


def fetches(data: bytes) -> dict[int, dict[str, object]]:
    return {r.number: dict(r.items) for r in responses(data) if isinstance(r, FetchData)}


def tagged(data: bytes) -> StatusResponse:
    last = responses(data)[-1]
    assert isinstance(last, StatusResponse) and last.tag is not None
    return last


# --- sequence-number FETCH --------------------------------------------------------------


def test_dovecot_nil_stubs_become_typed_stubs_with_uid_from_the_map() -> None:
    run = Run(stub_rules(), uids=True)
    run.client(b"f FETCH 1:3 (FLAGS BODY.PEEK[])\r\n")
    assert run.to_upstream() == b"f FETCH 1:3 (FLAGS BODY.PEEK[])\r\n"
    run.upstream(
        b"* 1 FETCH (FLAGS (\\Seen) BODY[] {5}\r\nhello)\r\n"
        b"* 2 FETCH (FLAGS (\\Deleted) BODY[] NIL)\r\n"
        b"* 3 FETCH (FLAGS () BODY[] {3}\r\nbye)\r\n"
        b"f OK [EXPUNGEISSUED] Some messages were already expunged\r\n"
    )
    out = run.to_client()
    assert b"BODY[] NIL" not in out
    assert out.endswith(
        b"* 2 FETCH (UID 20 FLAGS () BODY[] {0}\r\n)\r\n"
        b"f OK [EXPUNGEISSUED] Some messages were already expunged\r\n"
    )
    assert fetches(out)[1]["BODY[]"].value == b"hello"  # type: ignore[attr-defined]
    assert run.to_upstream() == b""  # the UID was known: nothing injected
    assert run.applied() == ["stub-fetch-expunged"]
    served = [e for e in run.events if isinstance(e, ev.EmulationStubFetch)]
    assert served == [ev.EmulationStubFetch(1)]  # counted in emulations_total


def test_unknown_uids_are_looked_up_before_the_tagged_line() -> None:
    run = Run(stub_rules())
    run.client(b"f FETCH 2 (RFC822.SIZE ENVELOPE)\r\n")
    run.to_upstream()
    run.upstream(
        b"* 2 FETCH (RFC822.SIZE 0 ENVELOPE (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL))\r\n"
        b"f OK [EXPUNGEISSUED] Some messages were already expunged\r\n"
    )
    assert run.to_client() == b""  # held until the UID is known
    lookup = run.to_upstream()
    tag = lookup.split(b" ", 1)[0]
    assert lookup == tag + b" FETCH 2 (UID)\r\n"
    run.upstream(b"* 2 FETCH (UID 77)\r\n* 4 EXISTS\r\n" + tag + b" OK Fetch completed\r\n")
    out = run.to_client()
    assert out == (
        b"* 4 EXISTS\r\n"
        b"* 2 FETCH (UID 77 RFC822.SIZE 0 ENVELOPE (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL))\r\n"
        b"f OK [EXPUNGEISSUED] Some messages were already expunged\r\n"
    )
    assert tag not in out


def test_no_lookup_while_other_client_commands_are_in_flight() -> None:
    run = Run(stub_rules())
    run.client(b"f FETCH 2 (RFC822)\r\ng NOOP\r\n")
    run.to_upstream()
    run.upstream(b"* 2 FETCH (RFC822 NIL)\r\nf OK [EXPUNGEISSUED] gone\r\n")
    assert run.to_upstream() == b""
    assert run.to_client() == b"* 2 FETCH (RFC822 {0}\r\n)\r\nf OK [EXPUNGEISSUED] gone\r\n"


def test_rfc2180_no_becomes_stubs_and_ok() -> None:
    run = Run(stub_rules(), uids=True)
    run.client(b"f FETCH 1:3 (UID RFC822.SIZE INTERNALDATE)\r\n")
    run.upstream(
        b'* 1 FETCH (UID 10 RFC822.SIZE 9 INTERNALDATE "02-Mar-2024 10:00:00 +0000")\r\n'
        b'* 3 FETCH (UID 30 RFC822.SIZE 9 INTERNALDATE "02-Mar-2024 10:00:00 +0000")\r\n'
        b"f NO Messages 2 are no longer available\r\n"
    )
    out = run.to_client()
    stubs = fetches(out)
    assert set(stubs) == {1, 2, 3}
    assert stubs[2]["UID"].value == b"20"  # type: ignore[attr-defined]
    assert stubs[2]["RFC822.SIZE"].value == b"0"  # type: ignore[attr-defined]
    final = tagged(out)
    assert final.status == "OK" and final.code is not None and final.code.name == "EXPUNGEISSUED"


def test_missing_data_on_ok_is_stubbed() -> None:
    run = Run(stub_rules(), count=4, uids=True)
    run.client(b"f FETCH 2:* FLAGS\r\n")
    run.upstream(b"* 2 FETCH (FLAGS ())\r\n* 4 FETCH (FLAGS ())\r\nf OK Fetch completed\r\n")
    out = run.to_client()
    assert b"* 3 FETCH (UID 30 FLAGS ())\r\n" in out
    assert tagged(out).status == "OK"


def test_a_no_for_another_reason_is_left_alone() -> None:
    run = Run(stub_rules(), uids=True)
    run.client(b"f FETCH 1:2 (BODY[])\r\n")
    upstream = b"* 1 FETCH (BODY[] {1}\r\nx)\r\nf NO [SERVERBUG] Internal error\r\n"
    run.upstream(upstream)
    assert run.to_client() == upstream
    assert run.applied() == []


def test_lines_that_only_look_like_stubs_pass_unchanged_on_a_plain_ok() -> None:
    run = Run(stub_rules(), uids=True)
    run.client(b"f FETCH 2 (RFC822.SIZE)\r\n")
    upstream = b"* 2 FETCH (RFC822.SIZE 0)\r\nf OK Fetch completed\r\n"
    run.upstream(upstream)
    assert run.to_client() == upstream  # an empty message is not an expunged one
    assert run.applied() == []


def test_bodies_stream_through_while_the_rule_watches() -> None:
    run = Run(stub_rules(), uids=True)
    run.client(b"f FETCH 1 (BODY[])\r\n")
    run.upstream(b"* 1 FETCH (BODY[] {10}\r\nhello")
    assert run.to_client() == b"* 1 FETCH (BODY[] {10}\r\nhello"  # not held for the rule
    run.upstream(b"world)\r\nf OK done\r\n")
    assert run.to_client() == b"world)\r\nf OK done\r\n"


def test_expunge_during_fetch_is_held_until_just_before_the_tagged_line() -> None:
    run = Run(stub_rules(), uids=True)
    run.client(b"f FETCH 1:3 (FLAGS)\r\n")
    run.upstream(b"* 1 FETCH (FLAGS ())\r\n* 2 EXPUNGE\r\n* 2 FETCH (FLAGS ())\r\n")
    assert b"EXPUNGE" not in run.to_client()
    run.upstream(b"f OK [EXPUNGEISSUED] done\r\n")
    out = run.to_client()
    # message 3 (client numbering) got no answer under its own number: stubbed, then the
    # EXPUNGE, then the tagged line
    assert out.index(b"* 2 EXPUNGE\r\n") < out.index(b"f OK")
    assert out.index(b"* 3 FETCH (UID 30 FLAGS ())") < out.index(b"* 2 EXPUNGE")


def test_expunge_outside_fetch_store_search_passes_at_once() -> None:
    run = Run(stub_rules(), uids=True)
    run.client(b"n NOOP\r\n")
    run.upstream(b"* 2 EXPUNGE\r\n")
    assert run.to_client() == b"* 2 EXPUNGE\r\n"


def test_expunge_during_store_is_released_before_its_completion() -> None:
    run = Run(stub_rules(), uids=True)
    run.client(b"t STORE 1 +FLAGS (\\Seen)\r\n")
    run.upstream(b"* 3 EXPUNGE\r\n* 1 FETCH (FLAGS (\\Seen))\r\n")
    assert run.to_client() == b"* 1 FETCH (FLAGS (\\Seen))\r\n"
    run.upstream(b"t OK Store completed\r\n")
    assert run.to_client() == b"* 3 EXPUNGE\r\nt OK Store completed\r\n"


# --- UID commands ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "answer", "becomes_ok"),
    [
        (b"UID FETCH 20 (FLAGS)", b"NO Some messages no longer exist", True),
        (b"UID STORE 20,30 +FLAGS (\\Seen)", b"NO [EXPUNGEISSUED] Messages expunged", True),
        (b"UID COPY 20 Trash", b"NO No messages were moved: expunged", True),
        (b"UID MOVE 20 Trash", b"NO Message does not exist", True),
        # about the destination: the client must see it, or it deletes the originals
        (b"UID COPY 20 Archive", b"NO [TRYCREATE] Mailbox doesn't exist: Archive", False),
        (b"UID COPY 20 Archive", b"NO Mailbox doesn't exist: Archive", False),
        (b"UID MOVE 20 Archive", b"NO [OVERQUOTA] Quota exceeded (messages)", False),
        (b"UID COPY 20 Archive", b"NO Messages could not be copied: permission denied", False),
        # more than one UID: a NO may have copied none of those that do exist
        (b"UID COPY 20,30 Trash", b"NO Some messages no longer exist", False),
        (b"UID FETCH 20 (FLAGS)", b"NO [SERVERBUG] Internal error", False),
        (b"UID FETCH 20 (FLAGS)", b"BAD Error in IMAP command", False),
    ],
)
def test_uid_commands_on_vanished_uids(command: bytes, answer: bytes, becomes_ok: bool) -> None:
    run = Run(stub_rules(), uids=True)
    run.client(b"u " + command + b"\r\n")
    run.upstream(b"u " + answer + b"\r\n")
    expected = b"u OK " + answer.split(b" ", 1)[1] if becomes_ok else b"u " + answer
    assert run.to_client() == expected + b"\r\n"
    assert run.applied() == (["stub-fetch-expunged"] if becomes_ok else [])


# --- policies ----------------------------------------------------------------------------


def test_policy_no_answers_no_and_drops_upstream_stubs(tmp_path: Path) -> None:
    run = Run(custom_rules(tmp_path, "{type: stub_fetch, policy: 'no'}"), uids=True)
    run.client(b"f FETCH 1:2 (BODY.PEEK[])\r\n")
    run.upstream(
        b"* 1 FETCH (BODY[] {1}\r\nx)\r\n* 2 FETCH (BODY[] NIL)\r\n"
        b"f OK [EXPUNGEISSUED] Some messages were already expunged\r\n"
    )
    out = run.to_client()
    assert set(fetches(out)) == {1}
    final = tagged(out)
    assert final.status == "NO" and final.code is not None and final.code.name == "EXPUNGEISSUED"


def loop_run() -> Run:
    run = Run(SHIPPED.only(["stub-fetch-loop-breaker"]), uids=True)
    run.client(b"f FETCH 2 (BODY.PEEK[])\r\n")
    run.upstream(b"* 2 FETCH (BODY[] NIL)\r\nf OK [EXPUNGEISSUED] expunged\r\n")
    assert tagged(run.to_client()).status == "NO"
    return run


def test_loop_breaker_ends_a_repeated_fetch_with_bye() -> None:
    run = loop_run()
    run.client(b"g FETCH 2 (BODY.PEEK[])\r\n")
    run.upstream(b"* 2 FETCH (BODY[] NIL)\r\ng OK [EXPUNGEISSUED] expunged\r\n")
    out = run.to_client()
    assert out.startswith(b"* BYE Message 2 was expunged by another session")
    assert b"\r\ng " not in out  # no tagged line after the BYE
    assert any(isinstance(e, ev.Close) for e in run.events)


def test_loop_breaker_forgives_once_the_expunge_was_delivered() -> None:
    run = loop_run()
    run.client(b"n NOOP\r\n")
    run.upstream(b"* 2 EXPUNGE\r\nn OK NOOP completed\r\n")
    run.client(b"g FETCH 2 (BODY.PEEK[])\r\n")  # now another message
    run.upstream(b"* 2 FETCH (BODY[] {1}\r\ny)\r\ng OK Fetch completed\r\n")
    assert run.to_client().endswith(b"g OK Fetch completed\r\n")
    assert not any(isinstance(e, ev.Close) for e in run.events)


def test_without_the_rule_upstream_bytes_pass_unchanged() -> None:
    run = Run(RuleSet.empty(), uids=True)
    run.client(b"f FETCH 2 (BODY.PEEK[])\r\n")
    upstream = b"* 2 FETCH (BODY[] NIL)\r\nf OK [EXPUNGEISSUED] Some messages were expunged\r\n"
    run.upstream(upstream)
    assert run.to_client() == upstream
    assert run.to_upstream() == b"f FETCH 2 (BODY.PEEK[])\r\n"  # no lookup either


def test_stub_responses_frame_as_whole_messages() -> None:
    run = Run(stub_rules(), uids=True)
    run.client(b"f FETCH 2 ALL\r\n")
    run.upstream(b"f NO [EXPUNGEISSUED] gone\r\n")
    out = run.to_client()
    messages = frame(out)
    assert len(messages) == 2
    stub = fetches(out)[2]
    assert set(stub) == {"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"}
    assert frame(out, Side.UPSTREAM)[-1].first_line.startswith(b"f OK")


def test_dovecot_uid_fetch_stub_of_a_uid_it_then_expunges_is_dropped() -> None:
    run = Run(stub_rules(), uids=True)
    run.client(b"u UID FETCH 30 (FLAGS BODY.PEEK[])\r\n")
    run.upstream(
        b"* 3 FETCH (UID 30 FLAGS (\\Deleted) BODY[] NIL)\r\n* 3 EXPUNGE\r\n"
        b"u OK [EXPUNGEISSUED] Some messages were already expunged\r\n"
    )
    assert run.to_client() == (
        b"* 3 EXPUNGE\r\nu OK [EXPUNGEISSUED] Some messages were already expunged\r\n"
    )
    assert run.applied() == ["stub-fetch-expunged"]


def test_uid_fetch_lines_held_across_an_expunge_are_renumbered_when_real() -> None:
    run = Run(stub_rules(), count=4, uids=True)
    run.client(b"u UID FETCH 30:40 (RFC822.SIZE)\r\n")
    run.upstream(b"* 3 FETCH (UID 30 RFC822.SIZE 0)\r\n* 4 FETCH (UID 40 RFC822.SIZE 0)\r\n")
    run.upstream(b"* 1 EXPUNGE\r\nu OK Fetch completed\r\n")
    # two empty messages after all: sent, with the numbers they have after the EXPUNGE
    assert run.to_client() == (
        b"* 1 EXPUNGE\r\n* 2 FETCH (UID 30 RFC822.SIZE 0)\r\n* 3 FETCH (UID 40 RFC822.SIZE 0)\r\n"
        b"u OK Fetch completed\r\n"
    )
    assert run.applied() == []


def test_a_pipelining_client_is_followed_for_a_bounded_number_of_commands() -> None:
    run = Run(stub_rules(), uids=True)
    run.client(b"".join(b"p%d FETCH 1 (FLAGS)\r\n" % n for n in range(100)))
    run.client(b"f FETCH 2 (BODY.PEEK[])\r\n")  # beyond the bound: passes untouched
    run.upstream(b"".join(b"* 1 FETCH (FLAGS ())\r\np%d OK done\r\n" % n for n in range(100)))
    assert b"UID" not in run.to_client()  # nothing stubbed: every command was answered
    upstream = b"* 2 FETCH (BODY[] NIL)\r\nf OK [EXPUNGEISSUED] expunged\r\n"
    run.upstream(upstream)
    assert run.to_client().endswith(upstream)


def test_changedsince_leaves_messages_out_on_purpose() -> None:
    run = Run(stub_rules(), uids=True)
    run.client(b"f FETCH 1:3 (FLAGS) (CHANGEDSINCE 12345)\r\n")
    upstream = b"* 2 FETCH (FLAGS (\\Seen) MODSEQ (12346))\r\nf OK Fetch completed\r\n"
    run.upstream(upstream)
    assert run.to_client() == upstream  # 1 and 3 did not change: no stubs for them


def test_lookup_takes_its_own_lines_and_relays_other_messages_updates() -> None:
    run = Run(stub_rules())
    run.client(b"f FETCH 2 (RFC822)\r\n")
    run.upstream(b"* 2 FETCH (RFC822 NIL)\r\nf OK [EXPUNGEISSUED] gone\r\n")
    tag = run.to_upstream().split(b"\r\n")[1].split(b" ", 1)[0]
    run.upstream(
        b"* 2 FETCH (UID 77 FLAGS (\\Deleted))\r\n* 3 FETCH (UID 90 FLAGS (\\Seen))\r\n"
        + tag
        + b" OK done\r\n"
    )
    assert run.to_client() == (
        b"* 3 FETCH (UID 90 FLAGS (\\Seen))\r\n"
        b"* 2 FETCH (UID 77 RFC822 {0}\r\n)\r\nf OK [EXPUNGEISSUED] gone\r\n"
    )


def test_after_an_unaccountable_vanished_fetches_pass_untouched() -> None:
    run = Run(stub_rules())  # no UIDs learnt
    run.client(b"n NOOP\r\n")
    run.upstream(b"* VANISHED 15\r\nn OK done\r\n")
    run.client(b"f FETCH 2 (RFC822)\r\n")
    upstream = b"* 2 FETCH (RFC822 NIL)\r\nf OK [EXPUNGEISSUED] gone\r\n"
    run.upstream(upstream)
    assert run.to_client().endswith(upstream)


def test_served_stubs_count_in_the_emulations_metric() -> None:
    from imap_proxy.observe.metrics import Metrics

    metrics = Metrics()
    run = Run(stub_rules(), uids=True)
    run.client(b"f FETCH 2 (RFC822)\r\n")
    run.upstream(b"* 2 FETCH (RFC822 NIL)\r\nf OK [EXPUNGEISSUED] gone\r\n")
    for event in run.events:
        metrics.observe(event)  # type: ignore[arg-type]
    served = metrics.registry.get_sample_value(
        "imap_proxy_emulations_total", {"kind": "stub_fetch", "outcome": "served"}
    )
    assert served == 1


def test_stale_followed_commands_never_hold_expunges_for_good() -> None:
    from imap_proxy.quirks.actions.stubfetch import StubFetch
    from imap_proxy.quirks.model import StubFetchAction
    from imap_proxy.wire.command import parse_command

    action = StubFetch("r", StubFetchAction(type="stub_fetch"))
    (store,) = frame(b"t STORE 1 +FLAGS (\\Seen)\r\n", Side.CLIENT)
    action.on_command(parse_command(store), None)  # type: ignore[arg-type]
    # the STORE is in flight: the EXPUNGE waits for its completion
    assert action.on_untagged_line("EXPUNGE", b"* 3 EXPUNGE\r\n", True, lambda: ["STORE"])
    # the STORE ended without the rule seeing it (answered elsewhere): the next EXPUNGE
    # still queues behind the held one, and the next completion of anything releases both
    assert action.on_untagged_line("EXPUNGE", b"* 2 EXPUNGE\r\n", True, lambda: ["NOOP"])
    outcome = action.on_tagged(b"n", "NOOP", b"n OK done\r\n", None, None)  # type: ignore[arg-type]
    assert outcome is not None and outcome.untagged == b"* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n"
    assert not action.on_untagged_line("EXPUNGE", b"* 1 EXPUNGE\r\n", True, lambda: ["NOOP"])


@pytest.mark.parametrize(
    ("store", "policy", "becomes_ok"),
    [
        (b"STORE 2 +FLAGS.SILENT (\\Deleted)", "stub", True),
        (b"STORE 2 +FLAGS (\\Seen)", "stub", True),
        (b"STORE 2 +FLAGS.SILENT (\\Seen)", "no", True),  # RFC 2180 §4.2: silent -> OK
        (b"STORE 2 +FLAGS (\\Seen)", "no", False),
    ],
)
def test_store_on_expunged_messages_rfc2180_4_2(
    tmp_path: Path, store: bytes, policy: str, becomes_ok: bool
) -> None:
    run = Run(custom_rules(tmp_path, f"{{type: stub_fetch, policy: '{policy}'}}"), uids=True)
    run.client(b"t " + store + b"\r\n")
    run.upstream(b"t NO Message 2 has been expunged\r\n")
    expected = b"t OK" if becomes_ok else b"t NO"
    assert run.to_client() == expected + b" Message 2 has been expunged\r\n"


def test_store_no_for_another_reason_stays_no() -> None:
    run = Run(stub_rules(), uids=True)
    run.client(b"t STORE 2 +FLAGS.SILENT (\\Deleted)\r\n")
    run.upstream(b"t NO [READ-ONLY] Mailbox is read-only\r\n")
    assert run.to_client() == b"t NO [READ-ONLY] Mailbox is read-only\r\n"


def test_uid_fetch_no_becomes_ok_even_when_numbers_are_not_followed() -> None:
    run = Run(stub_rules())
    run.client(b"n NOOP\r\n")
    run.upstream(b"* VANISHED 15\r\nn OK done\r\n")  # numbers unknowable from here
    run.client(b"u UID FETCH 20 (FLAGS)\r\n")
    run.upstream(b"u NO Some messages no longer exist\r\n")
    assert run.to_client().endswith(b"u OK Some messages no longer exist\r\n")


def test_expunge_during_idle_passes_at_once() -> None:
    run = Run(stub_rules(), uids=True)
    run.client(b"i IDLE\r\n")
    run.upstream(b"+ idling\r\n")
    run.upstream(b"* 2 EXPUNGE\r\n* 2 EXISTS\r\n")
    assert run.to_client() == b"+ idling\r\n* 2 EXPUNGE\r\n* 2 EXISTS\r\n"


def test_expunge_during_search_waits_for_its_completion() -> None:
    run = Run(stub_rules(), uids=True)
    run.client(b"s SEARCH TEXT {5}\r\n")
    assert run.to_client() == b""  # SEARCH streams: the upstream's + comes through
    run.upstream(b"+ OK\r\n")
    run.client(b"hello\r\n")
    assert run.to_upstream() == b"s SEARCH TEXT {5}\r\nhello\r\n"
    run.upstream(b"* 1 EXPUNGE\r\n* SEARCH 2\r\n")
    assert run.to_client() == b"+ OK\r\n* SEARCH 2\r\n"
    run.upstream(b"s OK Search completed\r\n")
    assert run.to_client() == b"* 1 EXPUNGE\r\ns OK Search completed\r\n"
