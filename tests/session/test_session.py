"""ProxySession behaviour beyond plain relaying: sub-states, the capability contract, ID."""

from __future__ import annotations

import base64

import pytest

from imap_proxy.session import events as ev
from imap_proxy.session.proxy import ProxySession
from imap_proxy.session.settings import PeerInfo, SessionSettings
from imap_proxy.session.state import ProtocolState
from imap_proxy.wire.errors import Side
from imap_proxy.wire.framer import FrameLimits
from tests.support.transcript import (
    CHUNKERS_FOR_UNIT,
    SHIPPED_RULES,
    Chunker,
    expected_outputs,
    parse,
    replay,
)

MODERN_GREETING = (
    "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS "
    "AUTH=PLAIN] Dovecot ready."
)
LEGACY_GREETING = "* OK [CAPABILITY IMAP4rev1 IDLE NAMESPACE AUTH=PLAIN] legacy ready"


def check(text: str, chunker: Chunker | None = None, **settings: object) -> list[ev.Event]:
    steps = parse(text)
    chosen = SessionSettings(**{"rules": SHIPPED_RULES, **settings})  # type: ignore[arg-type]
    for chunks in [chunker] if chunker else CHUNKERS_FOR_UNIT:
        result = replay(steps, chunks, chosen)
        want_client, want_upstream = expected_outputs(steps)
        assert result.to_client == want_client
        assert result.to_upstream == want_upstream
    return result.events


def greeted(greeting: str = MODERN_GREETING, **settings: object) -> ProxySession:
    session = ProxySession(SessionSettings(**{"rules": SHIPPED_RULES, **settings}))  # type: ignore[arg-type]
    session.receive_from_upstream(greeting.encode() + b"\r\n")
    return session


def sent(events: list[ev.Event], kind: type[ev.SendToClient] | type[ev.SendToUpstream]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, kind))


# --- capability contract ---------------------------------------------------------


def test_greeting_capabilities_follow_the_contract() -> None:
    check(
        """
        s: * OK [CAPABILITY IMAP4rev1 IMAP4rev2 STARTTLS COMPRESS=DEFLATE AUTH=SCRAM-SHA-256 AUTH=SCRAM-SHA-256-PLUS LITERAL- MOVE ID] hi
        >c: * OK [CAPABILITY IMAP4rev1 AUTH=SCRAM-SHA-256 MOVE ID LITERAL+] hi
        """.replace("        ", "")
    )


def test_starttls_is_offered_only_where_the_listener_can() -> None:
    events = check(
        f"""
        s: {MODERN_GREETING}
        >c: * OK [CAPABILITY IMAP4rev1 STARTTLS SASL-IR LOGIN-REFERRALS ID ENABLE IDLE AUTH=PLAIN LITERAL+] Dovecot ready.
        C: a CAPABILITY
        s: * CAPABILITY IMAP4rev1 SASL-IR ID IDLE LITERAL+ STARTTLS AUTH=PLAIN
        >c: * CAPABILITY IMAP4rev1 STARTTLS SASL-IR ID IDLE AUTH=PLAIN LITERAL+
        S: a OK Pre-login capabilities listed, post-login capabilities have more.
        C: b LOGIN u p
        s: b OK [CAPABILITY IMAP4rev1 SASL-IR ID IDLE MOVE] Logged in
        >c: b OK [CAPABILITY IMAP4rev1 SASL-IR ID IDLE MOVE LITERAL+ NAMESPACE UNSELECT LIST-STATUS] Logged in
        """.replace("        ", ""),
        starttls_available=True,
    )
    assert ev.Authenticated("u", "LOGIN") in events


def test_require_tls_disables_login_on_plaintext() -> None:
    events = check(
        f"""
        s: {LEGACY_GREETING}
        >c: * OK [CAPABILITY IMAP4rev1 STARTTLS IDLE NAMESPACE LOGINDISABLED LITERAL+ ID] legacy ready
        c: a LOGIN alice secret
        >c: a NO [PRIVACYREQUIRED] Log in only over TLS: use STARTTLS or the TLS port
        c: b AUTHENTICATE PLAIN {4}
        >c: b NO [PRIVACYREQUIRED] Log in only over TLS: use STARTTLS or the TLS port
        C: c NOOP
        S: c OK done
        """.replace("        ", ""),
        require_tls=True,
        starttls_available=True,
    )
    assert not any(isinstance(e, ev.Authenticated) for e in events)


# --- literals ------------------------------------------------------------------------


def test_literal_plus_is_converted_for_an_upstream_without_it() -> None:
    check(
        f"""
        s: {LEGACY_GREETING}
        >c: * OK [CAPABILITY IMAP4rev1 IDLE NAMESPACE AUTH=PLAIN LITERAL+ ID] legacy ready
        c: a LOGIN {{5+}}
        >s: a LOGIN {{5}}
        s: + go ahead
        c: alice {{6+}}
        >s: alice {{6}}
        s: + go ahead
        c: secret
        >s: secret
        S: a OK Logged in
        """.replace("        ", "")
    )


def test_converted_literal_refused_upstream_is_dropped_not_run_as_commands() -> None:
    session = greeted(LEGACY_GREETING)
    out = session.receive_from_client(b"a APPEND INBOX {11+}\r\nb LOGOUT\r\n\r\nc NOOP\r\n")
    assert sent(out, ev.SendToUpstream) == b"a APPEND INBOX {11}\r\n"
    assert session.client_paused
    out = session.receive_from_upstream(b"a NO [TOOBIG] too big\r\n")
    # The 11 octets "b LOGOUT\r\n\r\n"... are the literal: never a command.
    assert sent(out, ev.SendToUpstream) == b"c NOOP\r\n"
    assert sent(out, ev.SendToClient) == b"a NO [TOOBIG] too big\r\n"


def test_synchronizing_literal_refused_upstream_leaves_the_client_in_command_mode() -> None:
    check(
        f"""
        s: {MODERN_GREETING}
        >c: * OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE AUTH=PLAIN LITERAL+] Dovecot ready.
        C: a APPEND INBOX {{99999}}
        S: a NO [TOOBIG] Mail too large
        C: b NOOP
        S: b OK NOOP completed
        """.replace("        ", "")
    )


def test_binary_and_minus_literals_pass_where_the_upstream_takes_them() -> None:
    session = greeted(MODERN_GREETING)
    data = b"a APPEND INBOX ~{3+}\r\nabc {2-}\r\nxy\r\n"
    out = session.receive_from_client(data)
    assert sent(out, ev.SendToUpstream) == data


def test_client_literals_are_streamed_in_chunks_not_buffered() -> None:
    session = greeted(MODERN_GREETING)
    session.receive_from_client(b"a APPEND INBOX {1000000}\r\n")
    session.receive_from_upstream(b"+ OK\r\n")
    chunk = b"x" * 65536
    out = session.receive_from_client(chunk)
    assert out == [ev.SendToUpstream(chunk)]


# --- sub-states --------------------------------------------------------------------


def test_idle_relays_continuation_data_and_done() -> None:
    events = check(
        f"""
        s: {MODERN_GREETING}
        >c: * OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE AUTH=PLAIN LITERAL+] Dovecot ready.
        C: a IDLE
        S: + idling
        S: * 4 EXISTS
        C: DONE
        S: a OK Idle completed (0.001 + 3.000 secs).
        C: b NOOP
        S: b OK done
        """.replace("        ", "")
    )
    assert [e.name for e in events if isinstance(e, ev.CommandStarted)] == ["IDLE", "NOOP"]


def test_idle_deadline_kind_follows_the_state() -> None:
    session = greeted()
    assert session.idle_deadline_kind == "preauth"
    session.receive_from_client(b"a LOGIN u p\r\n")
    session.receive_from_upstream(b"a OK Logged in\r\n")
    assert session.idle_deadline_kind == "idle"
    session.receive_from_client(b"b IDLE\r\n")
    session.receive_from_upstream(b"+ idling\r\n")
    assert session.idle_deadline_kind == "idling"


@pytest.mark.parametrize("initial", [True, False])
def test_authenticate_plain_names_the_user_and_never_the_password(initial: bool) -> None:
    response = base64.b64encode(b"\x00alice\x00s3cret-pass").decode()
    steps = f"s: {MODERN_GREETING}\n>c: x\n"
    session = greeted()
    if initial:
        out = session.receive_from_client(f"a AUTHENTICATE PLAIN {response}\r\n".encode())
    else:
        out = session.receive_from_client(b"a AUTHENTICATE PLAIN\r\n")
        out += session.receive_from_upstream(b"+ \r\n")
        out += session.receive_from_client(response.encode() + b"\r\n")
    out += session.receive_from_upstream(b"a OK Logged in\r\n")
    assert steps  # the dialogue shape is the same either way
    assert ev.Authenticated("alice", "PLAIN") in out
    observations = [e for e in out if not isinstance(e, ev.SendToClient | ev.SendToUpstream)]
    assert "s3cret" not in repr(observations) and response not in repr(observations)
    assert session.state is ProtocolState.AUTHENTICATED


def test_failed_login_does_not_authenticate() -> None:
    session = greeted()
    session.receive_from_client(b"a LOGIN alice wrong\r\n")
    out = session.receive_from_upstream(b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    assert not any(isinstance(e, ev.Authenticated) for e in out)
    assert session.state is ProtocolState.NOT_AUTHENTICATED


def test_select_failure_leaves_selected_state() -> None:
    session = greeted("* PREAUTH [CAPABILITY IMAP4rev1] ready")
    states = [session.state]
    session.receive_from_client(b"a SELECT INBOX\r\n")
    session.receive_from_upstream(b"a OK [READ-WRITE] Select completed\r\n")
    states.append(session.state)
    session.receive_from_client(b"b SELECT nosuch\r\n")
    session.receive_from_upstream(b"b NO Mailbox doesn't exist\r\n")
    states.append(session.state)
    assert states == [
        ProtocolState.AUTHENTICATED,
        ProtocolState.SELECTED,
        ProtocolState.AUTHENTICATED,
    ]


def test_pipelined_commands_flow_without_waiting() -> None:
    session = greeted()
    data = b'a NOOP\r\nb CAPABILITY\r\nc LIST "" *\r\n'
    out = session.receive_from_client(data)
    assert sent(out, ev.SendToUpstream) == data
    out = session.receive_from_upstream(b"c OK\r\na OK\r\nb OK\r\n")
    assert [(e.tag, e.name) for e in out if isinstance(e, ev.CommandCompleted)] == [
        ("c", "LIST"),
        ("a", "NOOP"),
        ("b", "CAPABILITY"),
    ]


# --- STARTTLS ------------------------------------------------------------------------


def test_starttls_discards_plaintext_pipelined_after_it() -> None:
    session = greeted(starttls_available=True)
    out = session.receive_from_client(b"a STARTTLS\r\nb LOGIN evil injected\r\n")
    assert sent(out, ev.SendToClient) == b"a OK Begin TLS negotiation now\r\n"
    assert sent(out, ev.SendToUpstream) == b""
    assert ev.StartClientTLS() in out
    assert ev.PlaintextDiscarded(len(b"b LOGIN evil injected\r\n")) in out
    # More plaintext before the handshake is dropped as well.
    out = session.receive_from_client(b"c LOGOUT\r\n")
    assert sent(out, ev.SendToUpstream) == b""
    assert session.client_paused
    session.client_tls_established()
    out = session.receive_from_client(b"d CAPABILITY\r\n")
    assert sent(out, ev.SendToUpstream) == b"d CAPABILITY\r\n"
    out = session.receive_from_upstream(b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\nd OK\r\n")
    assert (
        sent(out, ev.SendToClient) == b"* CAPABILITY IMAP4rev1 AUTH=PLAIN LITERAL+ ID\r\nd OK\r\n"
    )


def test_starttls_refused_where_not_offered() -> None:
    check(
        f"""
        s: {MODERN_GREETING}
        >c: * OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE AUTH=PLAIN LITERAL+] Dovecot ready.
        c: a STARTTLS
        >c: a BAD STARTTLS is not available on this connection
        """.replace("        ", "")
    )


def test_upstream_starttls_then_capabilities_before_greeting_the_client() -> None:
    session = ProxySession(SessionSettings(upstream_starttls=True, rules=SHIPPED_RULES))
    out = session.receive_from_upstream(
        b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n"
    )
    assert sent(out, ev.SendToUpstream) == b"ipx1 STARTTLS\r\n"
    out = session.receive_from_upstream(b"ipx1 OK Begin TLS\r\n")
    assert ev.StartUpstreamTLS() in out and sent(out, ev.SendToClient) == b""
    out = session.upstream_tls_established()
    assert sent(out, ev.SendToUpstream) == b"ipx2 CAPABILITY\r\n"
    out = session.receive_from_upstream(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nipx2 OK\r\n")
    assert (
        sent(out, ev.SendToClient)
        == b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN LITERAL+ ID] ready\r\n"
    )
    assert not session.client_paused


def test_upstream_refusing_starttls_ends_the_session() -> None:
    session = ProxySession(SessionSettings(upstream_starttls=True, rules=SHIPPED_RULES))
    session.receive_from_upstream(b"* OK ready\r\n")
    out = session.receive_from_upstream(b"ipx1 BAD no\r\n")
    assert sent(out, ev.SendToClient).startswith(b"* BYE [UNAVAILABLE]")
    assert any(isinstance(e, ev.Close) for e in out)


# --- ID ---------------------------------------------------------------------------


def test_id_answered_by_the_proxy_when_the_upstream_lacks_it() -> None:
    check(
        f"""
        s: {LEGACY_GREETING}
        >c: * OK [CAPABILITY IMAP4rev1 IDLE NAMESPACE AUTH=PLAIN LITERAL+ ID] legacy ready
        c: a ID ("name" "Mail" "version" "16.0")
        >c: * ID NIL
        >c: a OK ID completed
        C: b NOOP
        S: b OK
        """.replace("        ", "")
    )


def test_id_forwarded_unchanged_when_nothing_to_add() -> None:
    check(
        f"""
        s: {MODERN_GREETING}
        >c: * OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE AUTH=PLAIN LITERAL+] Dovecot ready.
        C: a ID ("name" "Thunderbird" "version" "128.0")
        S: * ID ("name" "Dovecot")
        S: a OK ID completed.
        """.replace("        ", "")
    )


def test_id_gets_originating_fields_and_loses_spoofed_ones() -> None:
    session = greeted(forward_originating=True, peer=PeerInfo("192.0.2.7", 50123, "imap", "sess1"))
    out = session.receive_from_client(
        b'a ID ("name" "x" "x-originating-ip" "10.9.9.9" "X-Session-Id" "spoof")\r\n'
    )
    assert sent(out, ev.SendToUpstream) == (
        b'a ID ("name" "x" "x-originating-ip" "192.0.2.7" "x-originating-port" "50123" '
        b'"x-session-ext-id" "sess1")\r\n'
    )
    out = session.receive_from_upstream(b"* ID NIL\r\na OK ID completed\r\n")
    assert sent(out, ev.SendToClient) == b"* ID NIL\r\na OK ID completed\r\n"


def test_id_with_a_literal_value_is_held_and_parsed() -> None:
    session = greeted(forward_originating=True, peer=PeerInfo("192.0.2.7", 1, "imap", ""))
    out = session.receive_from_client(b'a ID ("name" {3}\r\n')
    assert sent(out, ev.SendToClient) == b"+ Ready for literal data\r\n"
    out = session.receive_from_client(b"K-9)\r\n")
    assert sent(out, ev.SendToUpstream) == (
        b'a ID ("name" "K-9" "x-originating-ip" "192.0.2.7" "x-originating-port" "1")\r\n'
    )


def test_proxy_answers_never_land_inside_a_relayed_literal() -> None:
    session = greeted(LEGACY_GREETING)
    session.receive_from_client(b"a FETCH 1 BODY[]\r\n")
    out = session.receive_from_upstream(b"* 1 FETCH (BODY[] {10}\r\n01234")
    out += session.receive_from_client(b"b ID NIL\r\n")
    out += session.receive_from_upstream(b"56789)\r\na OK\r\n")
    assert sent(out, ev.SendToClient) == (
        b"* 1 FETCH (BODY[] {10}\r\n0123456789)\r\n* ID NIL\r\nb OK ID completed\r\na OK\r\n"
    )


# --- limits, errors, endings ----------------------------------------------------------


def test_overlong_client_line_gets_bye() -> None:
    session = greeted(client_limits=FrameLimits(max_line_length=1024))
    out = session.receive_from_client(b"a " + b"x" * 2000)
    assert sent(out, ev.SendToClient).startswith(b"* BYE line longer than 1024")
    assert ev.ProtocolViolation(Side.CLIENT, "line longer than 1024 octets", "line_length") in out
    assert any(isinstance(e, ev.Close) for e in out)


def test_oversized_literal_announcement_gets_bye() -> None:
    session = greeted(client_limits=FrameLimits(max_literal_size=1000))
    out = session.receive_from_client(b"a APPEND INBOX {1001}\r\n")
    assert sent(out, ev.SendToUpstream) == b""
    assert sent(out, ev.SendToClient).startswith(b"* BYE literal of 1001 octets")


def test_upstream_lost_between_responses_sends_bye() -> None:
    session = greeted()
    session.receive_from_client(b"a NOOP\r\n")
    out = session.upstream_closed()
    assert out == [
        ev.SendToClient(b"* BYE [UNAVAILABLE] Upstream server closed the connection\r\n"),
        ev.Close("upstream-lost"),
    ]


def test_upstream_lost_inside_a_literal_closes_without_a_forged_bye() -> None:
    session = greeted()
    session.receive_from_client(b"a FETCH 1 BODY[]\r\n")
    session.receive_from_upstream(b"* 1 FETCH (BODY[] {100}\r\npartial")
    assert session.upstream_closed() == [ev.Close("upstream-lost")]


def test_upstream_garbage_greeting() -> None:
    session = ProxySession(SessionSettings())
    out = session.receive_from_upstream(b"HTTP/1.1 400 Bad Request\r\n")
    assert sent(out, ev.SendToClient).startswith(b"* BYE [UNAVAILABLE]")


def test_upstream_bye_greeting_is_relayed() -> None:
    session = ProxySession(SessionSettings())
    out = session.receive_from_upstream(b"* BYE Too many connections\r\n")
    assert out == [ev.SendToClient(b"* BYE Too many connections\r\n"), ev.Close("upstream-refused")]


def test_drain_says_bye_to_an_idle_session_at_once() -> None:
    session = greeted()
    out = session.shutdown()
    assert out[0] == ev.SendToClient(b"* BYE [UNAVAILABLE] Server shutting down\r\n")


def test_drain_waits_for_the_command_in_flight() -> None:
    session = greeted()
    session.receive_from_client(b"a APPEND INBOX {5}\r\n")
    assert session.shutdown() == []
    out = session.receive_from_upstream(b"+ OK\r\n")
    out += session.receive_from_client(b"hello\r\nb NOOP\r\n")
    assert sent(out, ev.SendToUpstream) == b"hello\r\n"  # b NOOP is never started
    out = session.receive_from_upstream(b"a OK [APPENDUID 1 1] Append completed.\r\n")
    assert sent(out, ev.SendToClient) == (
        b"a OK [APPENDUID 1 1] Append completed.\r\n* BYE [UNAVAILABLE] Server shutting down\r\n"
    )
    assert ev.Close("shutdown") in out


def test_timeout_says_bye() -> None:
    session = greeted()
    out = session.timed_out()
    assert out == [ev.SendToClient(b"* BYE Autologout; idle for too long\r\n"), ev.Close("timeout")]


def test_client_data_before_the_greeting_waits_for_it() -> None:
    session = ProxySession(SessionSettings())
    assert session.receive_from_client(b"a CAPABILITY\r\n") == []
    out = session.receive_from_upstream((MODERN_GREETING + "\r\n").encode())
    assert sent(out, ev.SendToUpstream) == b"a CAPABILITY\r\n"


def test_timeout_before_the_greeting_blames_the_upstream() -> None:
    session = ProxySession(SessionSettings())
    assert session.idle_deadline_kind == "greeting"
    out = session.timed_out()
    assert out == [
        ev.ProtocolViolation(Side.UPSTREAM, "no greeting in time"),
        ev.SendToClient(b"* BYE [UNAVAILABLE] Upstream server did not greet in time\r\n"),
        ev.Close("upstream-greeting"),
    ]


def test_a_login_with_doubled_spaces_is_still_a_login() -> None:
    # Regression: `a  LOGIN` was not recognised, so require_tls let it through untracked.
    session = ProxySession(SessionSettings(require_tls=True))
    session.receive_from_upstream(b"* OK [CAPABILITY IMAP4rev1] hi\r\n")
    out = session.receive_from_client(b"a  LOGIN user secret\r\n")
    assert ev.SendToUpstream(b"a  LOGIN user secret\r\n") not in out
    assert (
        ev.SendToClient(
            b"a NO [PRIVACYREQUIRED] Log in only over TLS: use STARTTLS or the TLS port\r\n"
        )
        in out
    )


def test_a_tagged_ok_with_doubled_spaces_still_logs_in() -> None:
    # Regression: the status word of `a  OK` was read as "", so a sloppy upstream's
    # successful LOGIN left the session "not authenticated" (pre-auth timeout, no rules).
    session = greeted()
    session.receive_from_client(b"a LOGIN u p\r\n")
    out = session.receive_from_upstream(b"a  OK Logged in\r\n")
    assert ev.SendToClient(b"a  OK Logged in\r\n") in out
    assert session.state is ProtocolState.AUTHENTICATED
    assert ev.CommandCompleted("a", "LOGIN", "OK") in out
