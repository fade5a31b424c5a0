"""Golden transcripts replayed whole, byte at a time and in random chunks."""

from __future__ import annotations

from pathlib import Path

import pytest

from imap_proxy.quirks.store import load_snapshot
from imap_proxy.session import events as ev
from imap_proxy.session.replay import replay as replay_recording
from imap_proxy.session.settings import SessionSettings
from imap_proxy.session.state import ProtocolState
from imap_proxy.wire import transcript
from tests.support.transcript import (
    TRANSCRIPTS,
    Chunker,
    ReplayResult,
    byte_at_a_time,
    expected_outputs,
    load,
    random_chunks,
    replay,
    whole,
)

CHUNKERS: dict[str, Chunker] = {
    "whole": whole,
    "byte-at-a-time": byte_at_a_time,
    **{f"random-{seed}": random_chunks(seed) for seed in range(5)},
}


def _replay(name: str, chunker: Chunker) -> ReplayResult:
    steps = load(name)
    result = replay(steps, chunker)
    want_client, want_upstream = expected_outputs(steps)
    assert result.to_client == want_client
    assert result.to_upstream == want_upstream
    return result


@pytest.mark.parametrize("chunker", CHUNKERS.values(), ids=CHUNKERS.keys())
def test_rfc3501_sample_session(chunker: Chunker) -> None:
    result = _replay("rfc3501-section8.txt", chunker)
    assert result.session is not None
    assert result.session.state is ProtocolState.LOGOUT
    assert result.of_type(ev.Authenticated) == [ev.Authenticated("mrc", "LOGIN")]
    completed = [(c.tag, c.name, c.status) for c in result.of_type(ev.CommandCompleted)]
    assert completed == [
        ("a001", "LOGIN", "OK"),
        ("a002", "SELECT", "OK"),
        ("a003", "FETCH", "OK"),
        ("a004", "FETCH", "OK"),
        ("a005", "STORE", "OK"),
        ("a006", "LOGOUT", "OK"),
    ]


def test_rfc3501_literal_is_exactly_342_octets() -> None:
    steps = load("rfc3501-section8.txt")
    start = next(i for i, s in enumerate(steps) if s.data.endswith(b"{342}\r\n"))
    end = next(i for i in range(start, len(steps)) if steps[i].data == b")\r\n")
    assert sum(len(s.data) for s in steps[start + 1 : end]) == 342


@pytest.mark.parametrize("chunker", CHUNKERS.values(), ids=CHUNKERS.keys())
def test_authenticate_cancel_then_login(chunker: Chunker) -> None:
    result = _replay("authenticate-cancel-then-login.txt", chunker)
    session = result.session
    assert session is not None
    completed = [(c.tag, c.status) for c in result.of_type(ev.CommandCompleted)]
    assert completed == [("a1", "NO"), ("a2", "NO"), ("a3", "NO"), ("a4", "OK"), ("a5", "OK")]
    # Only the LOGIN authenticated the session; the cancelled SASL exchange did not.
    assert result.of_type(ev.Authenticated) == [ev.Authenticated("riley", "LOGIN")]
    assert session.state is ProtocolState.LOGOUT
    observations = [
        e for e in result.events if not isinstance(e, ev.SendToClient | ev.SendToUpstream)
    ]
    assert "firetruck" not in repr(observations)
    assert b"firetruck" in result.to_upstream  # relayed, never observed


def test_upstream_closing_after_logout_closes_quietly() -> None:
    result = replay(load("rfc3501-section8.txt"))
    assert result.session is not None
    events = result.session.upstream_closed()
    assert events == [ev.Close("logout")]


def test_with_no_rules_the_relayed_bytes_are_the_upstream_bytes() -> None:
    """An empty rule set: only the core contract (no ID added); everything else identical."""
    steps = load("rfc3501-section8.txt")
    result = replay(steps, whole, SessionSettings())
    want_client, want_upstream = expected_outputs(steps)
    greeting = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN LITERAL+ ID] IMAP4rev1 Service Ready\r\n"
    assert want_client.startswith(greeting)
    assert result.to_client == (
        b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN LITERAL+] IMAP4rev1 Service Ready\r\n"
        + want_client[len(greeting) :]
    )
    assert result.to_upstream == want_upstream
    assert not result.of_type(ev.RuleApplied)


# --- recorded sessions: drop a recording into tests/transcripts/recorded/ ---------------

RECORDED = sorted((TRANSCRIPTS / "recorded").glob("*.trace"))


@pytest.mark.parametrize("chunker", CHUNKERS.values(), ids=CHUNKERS.keys())
@pytest.mark.parametrize("path", RECORDED, ids=[path.name for path in RECORDED])
def test_recorded_sessions_replay_to_their_recorded_bytes(path: Path, chunker: Chunker) -> None:
    """A recording is a regression test as it stands: with the rules a default proxy runs
    (and the settings in its `!: session` line), a fresh session must send the client and
    the upstream exactly the recorded bytes."""
    entries = transcript.load(path)
    snapshot = load_snapshot(None)
    result = replay_recording(
        entries, rules=snapshot.rules, fingerprints=snapshot.fingerprints, chunker=chunker
    )
    assert result.to_client == transcript.client_bytes(entries)
    assert result.to_upstream == transcript.upstream_bytes(entries)
    assert result.upstream_divergence is None


def test_a_recording_whose_client_bytes_were_edited_fails_that_check() -> None:
    """The check above can fail: a recorded greeting edited by hand no longer matches."""
    entries = transcript.load(RECORDED[0])
    greeting = next(i for i, e in enumerate(entries) if e.prefix == ">c")
    edited = entries[greeting].data.replace(b" IDLE", b"")
    assert edited != entries[greeting].data
    entries[greeting] = transcript.TraceLine(">c", edited)
    snapshot = load_snapshot(None)
    result = replay_recording(entries, rules=snapshot.rules, fingerprints=snapshot.fingerprints)
    assert result.to_client != transcript.client_bytes(entries)
