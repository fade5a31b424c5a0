"""Any bytes from either side: the session answers with events, it never raises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

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
