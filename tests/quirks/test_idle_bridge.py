"""The IDLE bridge (rules idle-reidle, idle-by-polling) through a sans-IO session.

How this works: the session is driven by hand; time is a number passed to
`next_tick(now)` / `tick(now)`, so nothing sleeps. A re-IDLE must be invisible to the
client except for the untagged data that comes; polling answers IDLE locally.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from imap_proxy.quirks.model import load_rules
from imap_proxy.session import events as ev
from imap_proxy.session.proxy import ProxySession
from imap_proxy.session.settings import SessionSettings

SHIPPED = load_rules()
WITH_IDLE = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE AUTH=PLAIN] ready\r\n"
WITHOUT_IDLE = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] ready\r\n"
REIDLE_AFTER = 1500.0
POLL = 30.0


def to_client(events: list[ev.Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, ev.SendToClient))


def to_upstream(events: list[ev.Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, ev.SendToUpstream))


def applied(events: list[ev.Event]) -> list[str]:
    return [e.rule_id for e in events if isinstance(e, ev.RuleApplied)]


def logged_in(rule_ids: list[str], greeting: bytes) -> ProxySession:
    session = ProxySession(SessionSettings(rules=SHIPPED.only(rule_ids)))
    session.receive_from_upstream(greeting)
    session.receive_from_client(b"a LOGIN u p\r\n")
    session.receive_from_upstream(b"a OK Logged in\r\n")
    session.receive_from_client(b"b SELECT INBOX\r\n")
    session.receive_from_upstream(b"* 2 EXISTS\r\nb OK [READ-WRITE] done\r\n")
    return session


def idling(now: float = 0.0) -> ProxySession:
    session = logged_in(["idle-reidle"], WITH_IDLE)
    assert to_upstream(session.receive_from_client(b"i IDLE\r\n")) == b"i IDLE\r\n"
    assert to_client(session.receive_from_upstream(b"+ idling\r\n")) == b"+ idling\r\n"
    assert session.next_tick(now) == now + REIDLE_AFTER
    return session


def renewed(session: ProxySession, now: float = REIDLE_AFTER) -> bytes:
    """Renew the upstream IDLE; the proxy tag of the new IDLE."""
    out = session.tick(now)
    assert to_upstream(out) == b"DONE\r\n" and applied(out) == ["idle-reidle"]
    out = session.receive_from_upstream(b"i OK Idle completed\r\n")
    assert to_client(out) == b""
    sent = to_upstream(out)
    assert sent.endswith(b" IDLE\r\n") and sent.startswith(b"ipx")
    assert to_client(session.receive_from_upstream(b"+ idling\r\n")) == b""
    return sent.split(b" ")[0]


# ------------------------------------------------------------------ re-IDLE


def test_no_tick_is_wanted_outside_idle_or_without_the_rule() -> None:
    session = logged_in(["idle-reidle"], WITH_IDLE)
    assert session.next_tick(0) is None and session.tick(10_000) == []
    plain = logged_in([], WITH_IDLE)
    plain.receive_from_client(b"i IDLE\r\n")
    plain.receive_from_upstream(b"+ idling\r\n")
    assert plain.next_tick(0) is None and plain.tick(10_000) == []


def test_nothing_happens_before_reidle_after() -> None:
    session = idling(now=100.0)
    assert session.next_tick(200.0) == 100.0 + REIDLE_AFTER  # the wait began at 100
    assert session.tick(100.0 + REIDLE_AFTER - 1) == []


def test_the_renewal_is_invisible_and_done_gets_the_new_idles_answer() -> None:
    session = idling()
    proxy_tag = renewed(session)
    # New mail during the proxy's own IDLE reaches the client at once.
    assert to_client(session.receive_from_upstream(b"* 3 EXISTS\r\n")) == b"* 3 EXISTS\r\n"
    assert session.next_tick(REIDLE_AFTER + 5) == REIDLE_AFTER + 5 + REIDLE_AFTER
    assert to_upstream(session.receive_from_client(b"DONE\r\n")) == b"DONE\r\n"
    out = session.receive_from_upstream(proxy_tag + b" OK Idle completed\r\n")
    assert to_client(out) == b"i OK Idle completed\r\n"
    assert session.next_tick(10_000) is None
    out = session.receive_from_client(b"c NOOP\r\n")
    assert to_upstream(out) == b"c NOOP\r\n"


def test_it_renews_again_and_again() -> None:
    session = idling()
    first = renewed(session)
    start = session.next_tick(2000.0)
    assert start == 2000.0 + REIDLE_AFTER
    second = renewed(session, start)
    assert first != second
    session.receive_from_client(b"DONE\r\n")
    out = session.receive_from_upstream(second + b" OK Idle completed\r\n")
    assert to_client(out) == b"i OK Idle completed\r\n"


def test_untagged_data_during_the_renewal_reaches_the_client() -> None:
    session = idling()
    session.tick(REIDLE_AFTER)
    out = session.receive_from_upstream(b"* 3 EXISTS\r\ni OK Idle completed\r\n* 2 EXPUNGE\r\n")
    assert to_client(out) == b"* 3 EXISTS\r\n* 2 EXPUNGE\r\n"
    out = session.receive_from_upstream(b"* 1 FETCH (FLAGS (\\Seen))\r\n+ idling\r\n")
    assert to_client(out) == b"* 1 FETCH (FLAGS (\\Seen))\r\n"


def test_a_done_while_the_proxys_done_is_out_ends_the_new_idle() -> None:
    session = idling()
    session.tick(REIDLE_AFTER)
    # The client's DONE waits while the renewal runs: never a second DONE upstream.
    assert to_upstream(session.receive_from_client(b"DONE\r\n")) == b""
    out = session.receive_from_upstream(b"i OK Idle completed\r\n")
    proxy_tag = to_upstream(out).split(b" ")[0]
    assert to_upstream(out) == proxy_tag + b" IDLE\r\n"
    out = session.receive_from_upstream(b"+ idling\r\n")
    assert to_client(out) == b"" and to_upstream(out) == b"DONE\r\n"
    out = session.receive_from_upstream(proxy_tag + b" OK Idle completed\r\n")
    assert to_client(out) == b"i OK Idle completed\r\n"


def test_a_done_and_a_command_while_the_new_idle_starts() -> None:
    session = idling()
    session.tick(REIDLE_AFTER)
    out = session.receive_from_upstream(b"i OK Idle completed\r\n")
    proxy_tag = to_upstream(out).split(b" ")[0]
    assert to_upstream(session.receive_from_client(b"DONE\r\nc NOOP\r\n")) == b""
    out = session.receive_from_upstream(b"+ idling\r\n")
    assert to_upstream(out) == b"DONE\r\nc NOOP\r\n"
    out = session.receive_from_upstream(proxy_tag + b" OK Idle completed\r\nc OK NOOP done\r\n")
    assert to_client(out) == b"i OK Idle completed\r\nc OK NOOP done\r\n"


def test_a_refused_renewal_ends_the_clients_idle_with_the_upstreams_answer() -> None:
    session = idling()
    session.tick(REIDLE_AFTER)
    out = session.receive_from_upstream(b"i OK Idle completed\r\n")
    proxy_tag = to_upstream(out).split(b" ")[0]
    out = session.receive_from_upstream(proxy_tag + b" NO [LIMIT] Too many IDLEs\r\n")
    assert to_client(out) == b"i NO [LIMIT] Too many IDLEs\r\n"
    assert session.next_tick(10_000) is None
    # The client's DONE for the IDLE that was answered is dropped, not sent as a command.
    out = session.receive_from_client(b"DONE\r\nc NOOP\r\n")
    assert to_upstream(out) == b"c NOOP\r\n" and to_client(out) == b""


def test_after_a_refused_renewal_a_client_that_sends_no_done_goes_on() -> None:
    session = idling()
    session.tick(REIDLE_AFTER)
    out = session.receive_from_upstream(b"i OK Idle completed\r\n")
    proxy_tag = to_upstream(out).split(b" ")[0]
    session.receive_from_upstream(proxy_tag + b" BAD no\r\n")
    assert to_upstream(session.receive_from_client(b"c NOOP\r\n")) == b"c NOOP\r\n"
    assert to_upstream(session.receive_from_client(b"DONE\r\n")) == b"DONE\r\n"  # not ours now


def test_an_upstream_ending_the_idle_itself_ends_the_clients() -> None:
    session = idling()
    out = session.receive_from_upstream(b"i OK IDLE timed out\r\n")
    assert to_client(out) == b"i OK IDLE timed out\r\n"
    assert session.next_tick(0) is None
    out = session.receive_from_client(b"DONE\r\n")  # sent before it saw the answer
    assert to_upstream(out) == b"" and to_client(out) == b""


def test_an_upstream_bye_during_the_renewal_reaches_the_client() -> None:
    session = idling()
    session.tick(REIDLE_AFTER)
    out = session.receive_from_upstream(b"* BYE Shutting down\r\n")
    assert to_client(out) == b"* BYE Shutting down\r\n"
    out = session.upstream_closed()
    assert [e.reason for e in out if isinstance(e, ev.Close)] == ["logout"]
    assert session.closed


def test_the_upstream_lost_while_the_new_idle_starts_is_a_bye() -> None:
    session = idling()
    session.tick(REIDLE_AFTER)
    session.receive_from_upstream(b"i OK Idle completed\r\n")
    out = session.upstream_closed()
    assert to_client(out).startswith(b"* BYE [UNAVAILABLE]")
    assert [e.reason for e in out if isinstance(e, ev.Close)] == ["upstream-lost"]


def test_a_renewal_under_a_prefixed_tag_maps_back_to_the_clients_tag() -> None:
    coremail = (
        b"* OK [CAPABILITY IMAP4rev1 ID IDLE AUTH=PLAIN] Coremail System IMap Server Ready\r\n"
    )
    session = ProxySession(
        SessionSettings(rules=SHIPPED.only(["idle-reidle", "coremail-letter-tags"]))
    )
    session.receive_from_upstream(coremail)
    session.receive_from_client(b"1 LOGIN u p\r\n")
    session.receive_from_upstream(b"A1 OK Logged in\r\n")
    assert to_upstream(session.receive_from_client(b"2 IDLE\r\n")) == b"A2 IDLE\r\n"
    session.receive_from_upstream(b"+ idling\r\n")
    session.next_tick(0)
    session.tick(REIDLE_AFTER)
    out = session.receive_from_upstream(b"A2 OK Idle completed\r\n")
    proxy_tag = to_upstream(out).split(b" ")[0]
    assert to_client(out) == b""
    session.receive_from_upstream(b"+ idling\r\n")
    session.receive_from_client(b"DONE\r\n")
    out = session.receive_from_upstream(proxy_tag + b" OK Idle completed\r\n")
    assert to_client(out) == b"2 OK Idle completed\r\n"


def test_shutdown_during_a_bridged_idle_says_bye() -> None:
    session = idling()
    session.tick(REIDLE_AFTER)
    out = session.shutdown()
    assert to_client(out).startswith(b"* BYE [UNAVAILABLE] Server shutting down")


# ------------------------------------------------------------------ polling


def polling_idle(now: float = 0.0) -> ProxySession:
    session = logged_in(["idle-by-polling"], WITHOUT_IDLE)
    out = session.receive_from_client(b"i IDLE\r\n")
    assert to_client(out) == b"+ idling\r\n" and to_upstream(out) == b""
    assert applied(out) == ["idle-by-polling"]
    assert session.next_tick(now) == now + POLL
    return session


def test_idle_is_advertised_only_for_an_upstream_without_it() -> None:
    session = ProxySession(SessionSettings(rules=SHIPPED.only(["idle-by-polling"])))
    out = session.receive_from_upstream(WITHOUT_IDLE)
    assert b" IDLE" in to_client(out)
    with_idle = ProxySession(SessionSettings(rules=SHIPPED.only(["idle-by-polling"])))
    out = with_idle.receive_from_upstream(WITH_IDLE)
    assert applied(out) == []
    with_idle.receive_from_client(b"a LOGIN u p\r\n")
    with_idle.receive_from_upstream(b"a OK Logged in\r\n")
    assert to_upstream(with_idle.receive_from_client(b"i IDLE\r\n")) == b"i IDLE\r\n"


def test_polling_relays_what_noop_brings_and_done_gets_ok() -> None:
    session = polling_idle()
    assert session.tick(POLL - 1) == []
    out = session.tick(POLL)
    noop = to_upstream(out)
    assert noop.endswith(b" NOOP\r\n")
    tag = noop.split(b" ")[0]
    assert session.next_tick(POLL + 1) is None  # nothing more while the NOOP is out
    out = session.receive_from_upstream(
        b"* 2 EXPUNGE\r\n* 3 EXISTS\r\n* 1 RECENT\r\n* 1 FETCH (FLAGS (\\Seen))\r\n"
    )
    assert to_client(out) == (
        b"* 2 EXPUNGE\r\n* 3 EXISTS\r\n* 1 RECENT\r\n* 1 FETCH (FLAGS (\\Seen))\r\n"
    )
    assert to_client(session.receive_from_upstream(tag + b" OK NOOP completed\r\n")) == b""
    assert session.next_tick(40.0) == 70.0
    second = to_upstream(session.tick(70.0))
    assert second.endswith(b" NOOP\r\n") and second != noop
    session.receive_from_upstream(second.split(b" ")[0] + b" OK done\r\n")
    out = session.receive_from_client(b"DONE\r\n")
    assert to_client(out) == b"i OK IDLE terminated\r\n" and to_upstream(out) == b""
    assert session.next_tick(1000.0) is None


def test_done_during_a_noop_is_answered_after_it() -> None:
    session = polling_idle()
    tag = to_upstream(session.tick(POLL)).split(b" ")[0]
    assert session.receive_from_client(b"DONE\r\nc NOOP\r\n") == []
    out = session.receive_from_upstream(b"* 3 EXISTS\r\n" + tag + b" OK done\r\n")
    assert to_client(out) == b"* 3 EXISTS\r\ni OK IDLE terminated\r\n"
    assert to_upstream(out) == b"c NOOP\r\n"


def test_the_idle_waits_for_earlier_client_commands() -> None:
    session = logged_in(["idle-by-polling"], WITHOUT_IDLE)
    out = session.receive_from_client(b"c FETCH 1 FLAGS\r\ni IDLE\r\n")
    assert to_upstream(out) == b"c FETCH 1 FLAGS\r\n" and to_client(out) == b""
    assert session.next_tick(0) is None and session.tick(POLL) == []
    out = session.receive_from_upstream(b"* 1 FETCH (FLAGS ())\r\nc OK done\r\n")
    assert to_client(out) == b"* 1 FETCH (FLAGS ())\r\nc OK done\r\n+ idling\r\n"
    assert session.next_tick(POLL) == 2 * POLL
    assert to_upstream(session.tick(2 * POLL)).endswith(b" NOOP\r\n")


def test_a_polled_idle_with_arguments_or_without_done() -> None:
    session = logged_in(["idle-by-polling"], WITHOUT_IDLE)
    out = session.receive_from_client(b"i IDLE now\r\n")
    assert to_client(out) == b"i BAD IDLE takes no arguments\r\n" and to_upstream(out) == b""
    session.receive_from_client(b"j IDLE\r\n")
    out = session.receive_from_client(b"k NOOP\r\n")
    assert to_client(out) == b"j BAD Expected DONE\r\n" and to_upstream(out) == b""
    assert to_upstream(session.receive_from_client(b"l NOOP\r\n")) == b"l NOOP\r\n"


def test_polling_before_login_is_left_to_the_upstream() -> None:
    session = ProxySession(SessionSettings(rules=SHIPPED.only(["idle-by-polling"])))
    session.receive_from_upstream(WITHOUT_IDLE)
    assert to_upstream(session.receive_from_client(b"i IDLE\r\n")) == b"i IDLE\r\n"


def test_the_upstream_lost_during_a_poll_is_a_bye() -> None:
    session = polling_idle()
    session.tick(POLL)
    out = session.upstream_closed()
    assert to_client(out).startswith(b"* BYE [UNAVAILABLE]")


def test_keepalives_still_go_to_a_polled_idle() -> None:
    session = logged_in(["idle-by-polling", "idle-keepalive"], WITHOUT_IDLE)
    session.receive_from_client(b"i IDLE\r\n")
    assert session.keepalive_interval == 120
    assert to_client(session.keepalive()) == b"* OK Still here\r\n"


fuzz_steps = st.lists(
    st.tuples(
        st.sampled_from(["client", "upstream", "tick"]),
        st.sampled_from(
            [
                b"i IDLE\r\n",
                b"DONE\r\n",
                b"c NOOP\r\n",
                b"+ idling\r\n",
                b"i OK Idle completed\r\n",
                b"ipx1 OK done\r\n",
                b"ipx2 NO no\r\n",
                b"* 4 EXISTS\r\n",
                b"* BYE bye\r\n",
                b"c OK done\r\n",
            ]
        ),
        st.floats(min_value=0, max_value=5000),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([WITH_IDLE, WITHOUT_IDLE]), fuzz_steps)
def test_the_bridge_never_raises(greeting: bytes, script: list[tuple[str, bytes, float]]) -> None:
    session = logged_in(["idle-reidle", "idle-by-polling", "idle-keepalive"], greeting)
    events: list[ev.Event] = []
    for side, data, now in script:
        if side == "client":
            events += session.receive_from_client(data)
        elif side == "upstream":
            events += session.receive_from_upstream(data)
        else:
            session.next_tick(now)
            events += session.tick(now)
    events += session.upstream_closed() + session.client_closed()
    assert len([e for e in events if isinstance(e, ev.Close)]) == 1
