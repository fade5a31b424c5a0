"""Any bytes from either side: the session answers with events, it never raises."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz import targets
from fuzz.targets import Step
from imap_proxy.session import events as ev
from imap_proxy.session.proxy import ProxySession
from imap_proxy.session.settings import SessionSettings
from imap_proxy.wire.framer import FrameLimits

GREETINGS = [
    b"* OK [CAPABILITY IMAP4rev1 LITERAL+ ID IDLE AUTH=PLAIN] ready\r\n",
    b"* OK [CAPABILITY IMAP4rev1 IDLE] legacy\r\n",
    b"* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n",
]

# Fragments that steer the session into its sub-states, mixed with random bytes.
CLIENT_WORDS = [
    b"a LOGIN u p\r\n",
    b"b AUTHENTICATE PLAIN\r\n",
    b"*\r\n",
    b"c IDLE\r\n",
    b"DONE\r\n",
    b"d APPEND INBOX {5}\r\n",
    b"e APPEND INBOX {3+}\r\nabc\r\n",
    b"f ID NIL\r\n",
    b'g ID ("name" {2}\r\n',
    b"h STARTTLS\r\n",
    b"i SELECT INBOX\r\n",
    b"{99999999999}\r\n",
]
UPSTREAM_WORDS = [
    b"+ go\r\n",
    b"a OK [CAPABILITY IMAP4rev1 MOVE] done\r\n",
    b"b NO no\r\n",
    b"c OK\r\n",
    b"* 1 FETCH (BODY[] {4}\r\nabcd)\r\n",
    b"* CAPABILITY IMAP4rev1 X\r\n",
    b"* BYE bye\r\n",
    b"d BAD\r\n",
    b"* 3 EXISTS\r\n",
    b"* OK [CAPABILITY ] x\r\n",
]

chunks = st.one_of(st.binary(max_size=40), st.sampled_from(CLIENT_WORDS + UPSTREAM_WORDS))
steps = st.lists(st.tuples(st.sampled_from(["client", "upstream", "tls"]), chunks), max_size=40)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(GREETINGS), steps, st.booleans())
def test_random_streams_never_raise(
    greeting: bytes, script: list[tuple[str, bytes]], require_tls: bool
) -> None:
    session = ProxySession(
        SessionSettings(
            client_limits=FrameLimits(max_line_length=200, max_literal_size=1000),
            upstream_limits=FrameLimits(max_line_length=400, max_literal_size=1000),
            starttls_available=True,
            require_tls=require_tls,
        )
    )
    events = session.receive_from_upstream(greeting)
    for side, data in script:
        if side == "client":
            events += session.receive_from_client(data)
        elif side == "upstream":
            events += session.receive_from_upstream(data)
        else:
            events += session.client_tls_established()
    events += session.upstream_closed()
    events += session.client_closed()
    closes = [e for e in events if isinstance(e, ev.Close)]
    assert len(closes) == 1  # exactly one Close, whatever happened
    assert session.closed


# --- memory bounded by the limits (the fuzz target's invariant, fuzz/targets.py) ------

_words = st.sampled_from(
    [Step("client", w) for w in CLIENT_WORDS + list(targets.CLIENT_WORDS)]
    + [Step("upstream", w) for w in UPSTREAM_WORDS + list(targets.UPSTREAM_WORDS)]
)
_raw = st.builds(Step, st.sampled_from(["client", "upstream"]), st.binary(max_size=60))
_events = st.sampled_from([Step(what) for what in ("client-tls", "timed-out", "shutdown")])
session_steps = st.lists(st.one_of(_words, _words, _raw, _events), max_size=60)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(targets.GREETINGS), session_steps, st.booleans(), st.booleans())
def test_what_a_session_holds_stays_bounded(
    greeting: bytes, steps: list[Step], require_tls: bool, rules: bool
) -> None:
    targets.run_session(greeting, steps, require_tls=require_tls, rules=rules)


@pytest.mark.parametrize(
    "first",
    [b"a LOGIN {1+}\r\n", b'k ID ("x" {1+}\r\n'],
    ids=["captured-login", "held-id"],
)
def test_literal_after_literal_is_not_kept_without_bound(first: bytes) -> None:
    # Regression: a LOGIN (copied for the user name) or an ID (held whole) whose every
    # literal is followed by another one was kept in memory line after line.
    session = targets.new_session()
    session.receive_from_upstream(targets.GREETINGS[0])
    events = session.receive_from_client(first)
    for _ in range(2000):
        events += session.receive_from_client(b"x {1+}\r\n")
        assert targets.held_bytes(session) <= targets.SESSION_MEMORY_BOUND
    if b"ID" in first:  # the held command is refused with a clear answer
        assert ev.SendToClient(b"k BAD Argument too long\r\n") in events
    else:  # the LOGIN still streams upstream, byte for byte
        sent = b"".join(e.data for e in events if isinstance(e, ev.SendToUpstream))
        assert sent == first + b"x {1+}\r\n" * 2000
