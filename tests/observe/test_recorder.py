"""The session recorder, sans-IO: redaction, literals, caps, rotation and selection.

Each test drives a real `ProxySession` wrapped by the recorder with a scripted upstream
(what a client and an upstream send, in order), then reads the transcript file it wrote.
The end-to-end recording through the real proxy and Dovecot is in
tests/integration/test_recorder_dovecot.py.
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imap_proxy.config import KeepLiterals, RecorderConfig
from imap_proxy.config_loader import ConfigError, load_config
from imap_proxy.observe.recorder import Recorder, RecordingSession
from imap_proxy.observe.redact import StreamRedactor
from imap_proxy.quirks.model import RuleSet, load_rules
from imap_proxy.session import events as ev
from imap_proxy.session.proxy import ProxySession
from imap_proxy.session.replay import replay
from imap_proxy.session.settings import PeerInfo, SessionSettings
from imap_proxy.wire import transcript

GREETING = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN AUTH=LOGIN] ready\r\n"
PASSWORD = "s3cret pa$$"  # a space, so only a quoted string or a literal carries it
Script = Sequence[tuple[str, bytes]]
SHIPPED_RULES = load_rules()


@dataclass
class Recorded:
    text: str
    live_client: bytes
    path: Path

    @property
    def entries(self) -> list[transcript.TraceLine]:
        return transcript.parse(self.text)


DIRECTIVE_CALLS = {
    "upstream-closed": "upstream_closed",
    "client-closed": "client_closed",
    "client-tls": "client_tls_established",
    "shutdown": "shutdown",
    "timed-out": "timed_out",
}


def drive(session: Any, script: Script, chunk: int = 0) -> bytes:
    """Run the script; `chunk` > 0 feeds the bytes in pieces of that size."""
    to_client = b""
    for who, data in script:
        if who == "!":
            batches = [getattr(session, DIRECTIVE_CALLS[data.decode()])()]
        else:
            receive = session.receive_from_upstream if who == "s" else session.receive_from_client
            size = chunk or len(data)
            batches = [receive(data[i : i + size]) for i in range(0, len(data), size)]
        for events in batches:
            to_client += b"".join(e.data for e in events if isinstance(e, ev.SendToClient))
    return to_client


def record(
    tmp_path: Path,
    script: Script,
    session_id: str = "s1",
    *,
    chunk: int = 0,
    settings: SessionSettings | None = None,
    **config: Any,
) -> Recorded | None:
    peer = PeerInfo("192.0.2.1", 4000, "imap", session_id)
    settings = settings or SessionSettings(peer=peer)
    directory = tmp_path / "rec"
    recorder = Recorder(RecorderConfig(enabled=True, directory=directory, **config))
    session = recorder.wrap(ProxySession(settings), settings)
    live = drive(session, script, chunk)
    session.finish("closed")
    path = directory / f"{session_id}.trace"
    found = [p for p in directory.glob(f"*-{session_id}.trace")]
    if not found:
        return None
    path = found[0]
    return Recorded(path.read_text(encoding="utf-8"), live, path)


def login_script(login: bytes, upstream_ok: bytes = b"a1 OK logged in\r\n") -> Script:
    return [("s", GREETING), ("c", login), ("s", upstream_ok), ("c", b"a2 SELECT INBOX\r\n")]


def assert_replays_to_live(recorded: Recorded) -> None:
    result = replay(recorded.entries)
    assert result.to_client == recorded.live_client
    assert transcript.client_bytes(recorded.entries) == recorded.live_client
    assert result.upstream_divergence is None


# --- credentials ----------------------------------------------------------------------


CHUNKS = pytest.mark.parametrize("chunk", [0, 1, 3], ids=["whole", "bytes", "threes"])


@CHUNKS
def test_login_with_atom_password_is_redacted(tmp_path: Path, chunk: int) -> None:
    recorded = record(tmp_path, login_script(b"a1 LOGIN alice hunter2\r\n"), chunk=chunk)
    assert recorded is not None
    assert "hunter2" not in recorded.text
    assert 'C: a1 LOGIN alice "[redacted]"' in recorded.text
    assert "C: a2 SELECT INBOX" in recorded.text  # later commands are not touched
    assert_replays_to_live(recorded)


def test_login_with_quoted_password_is_redacted(tmp_path: Path) -> None:
    login = b'a1 LOGIN "alice" "s3cret pa$$ \\" end"\r\n'
    recorded = record(tmp_path, login_script(login))
    assert recorded is not None
    assert "s3cret" not in recorded.text and "end" not in recorded.text.split("SELECT")[0]
    assert 'C: a1 LOGIN "alice" "[redacted]"' in recorded.text
    assert_replays_to_live(recorded)


@CHUNKS
@pytest.mark.parametrize("marker", [b"+", b""], ids=["literal-plus", "synchronizing"])
def test_login_with_literal_password_is_redacted(tmp_path: Path, marker: bytes, chunk: int) -> None:
    secret = PASSWORD.encode()
    first = b"a1 LOGIN {5%s}\r\nalice {%d%s}\r\n" % (marker, len(secret), marker)
    script: list[tuple[str, bytes]] = [("s", GREETING)]
    if marker:
        script.append(("c", first + secret + b"\r\n"))
    else:  # the client waits for each continuation
        script += [
            ("c", b"a1 LOGIN {5}\r\n"),
            ("s", b"+ go ahead\r\n"),
            ("c", b"alice {%d}\r\n" % len(secret)),
            ("s", b"+ go ahead\r\n"),
            ("c", secret + b"\r\n"),
        ]
    script += [("s", b"a1 OK logged in\r\n"), ("c", b"a2 LOGOUT\r\n")]
    recorded = record(tmp_path, script, chunk=chunk)
    assert recorded is not None
    assert "s3cret" not in recorded.text
    # The announcement is rewritten to the replacement's size, so the stream still frames.
    assert f"alice {{10{marker.decode()}}}" in recorded.text
    assert "[redacted]" in recorded.text
    assert_replays_to_live(recorded)


def _plain(password: str, user: str = "alice") -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


@CHUNKS
def test_authenticate_plain_continuation_is_redacted_and_keeps_the_user(
    tmp_path: Path, chunk: int
) -> None:
    response = _plain(PASSWORD)
    script = [
        ("s", GREETING),
        ("c", b"a1 AUTHENTICATE PLAIN\r\n"),
        ("s", b"+ \r\n"),
        ("c", response + b"\r\n"),
        ("s", b"a1 OK authenticated\r\n"),
        ("c", b"a2 NOOP\r\n"),
    ]
    recorded = record(tmp_path, script, chunk=chunk)
    assert recorded is not None
    assert response.decode() not in recorded.text and "s3cret" not in recorded.text
    sasl = [e.data for e in recorded.entries if e.prefix == "C" and e.data.startswith(b"AG")]
    assert [base64.b64decode(s.strip()) for s in sasl] == [b"\0alice\0[redacted]"]
    assert "C: a2 NOOP" in recorded.text
    result = replay(recorded.entries)
    assert result.of_type(ev.Authenticated) == [ev.Authenticated("alice", "PLAIN")]
    assert_replays_to_live(recorded)


def test_authenticate_plain_initial_response_is_redacted(tmp_path: Path) -> None:
    response = _plain(PASSWORD)
    recorded = record(tmp_path, login_script(b"a1 AUTHENTICATE PLAIN " + response + b"\r\n"))
    assert recorded is not None
    assert response.decode() not in recorded.text
    redacted = _plain("[redacted]").decode()
    assert f"C: a1 AUTHENTICATE PLAIN {redacted}" in recorded.text
    assert_replays_to_live(recorded)


def test_authenticate_login_keeps_the_name_and_redacts_the_password(tmp_path: Path) -> None:
    name, secret = base64.b64encode(b"alice"), base64.b64encode(PASSWORD.encode())
    script = [
        ("s", GREETING),
        ("c", b"a1 AUTHENTICATE LOGIN\r\n"),
        ("s", b"+ VXNlcm5hbWU6\r\n"),
        ("c", name + b"\r\n"),
        ("s", b"+ UGFzc3dvcmQ6\r\n"),
        ("c", secret + b"\r\n"),
        ("s", b"a1 OK authenticated\r\n"),
    ]
    recorded = record(tmp_path, script)
    assert recorded is not None
    assert secret.decode() not in recorded.text
    assert f"C: {name.decode()}" in recorded.text
    assert "C: " + base64.b64encode(b"[redacted]").decode() in recorded.text
    assert_replays_to_live(recorded)


def test_other_mechanisms_are_redacted_whole_and_cancel_is_kept(tmp_path: Path) -> None:
    token = base64.b64encode(b"user=alice\x01auth=Bearer ya29.TOKEN\x01\x01")
    script = [
        ("s", GREETING),
        ("c", b"a1 AUTHENTICATE XOAUTH2 " + token + b"\r\n"),
        ("s", b"+ eyJzdGF0dXMiOiI0MDEifQ==\r\n"),
        ("c", b"*\r\n"),
        ("s", b"a1 BAD cancelled\r\n"),
        ("c", b"a2 LOGIN alice hunter2\r\n"),
        ("s", b"a2 OK logged in\r\n"),
    ]
    recorded = record(tmp_path, script)
    assert recorded is not None
    assert "TOKEN" not in recorded.text and token.decode() not in recorded.text
    assert "hunter2" not in recorded.text
    assert "C: *" in recorded.text  # the cancel is protocol, not a secret
    assert_replays_to_live(recorded)


# --- literals -------------------------------------------------------------------------

BODY = b"".join(b"Line %03d of a message body that is private.\r\n" % i for i in range(40))


def fetch_script() -> Script:
    return [
        ("s", GREETING),
        ("c", b"a1 LOGIN alice hunter2\r\n"),
        ("s", b"a1 OK logged in\r\n"),
        ("c", b"a2 FETCH 1 BODY[]\r\n"),
        ("s", b"* 1 FETCH (BODY[] {%d}\r\n" % len(BODY) + BODY + b")\r\n"),
        ("s", b"a2 OK done\r\n"),
        ("c", b"a3 APPEND INBOX {%d+}\r\n" % len(BODY) + BODY + b"\r\n"),
        ("s", b"a3 OK appended\r\n"),
    ]


@CHUNKS
def test_literals_are_hashed_by_default(tmp_path: Path, chunk: int) -> None:
    recorded = record(tmp_path, fetch_script(), chunk=chunk)
    assert recorded is not None
    assert "private" not in recorded.text
    digest = hashlib.sha256(BODY).hexdigest()
    marker = f"[sha256:{digest} {len(BODY)} octets]"
    assert f"S: * 1 FETCH (BODY[] {{{len(marker)}}}" in recorded.text
    assert f"S: {marker})" in recorded.text
    assert f"C: a3 APPEND INBOX {{{len(marker)}+}}" in recorded.text
    # The redacted recording replays to its own (redacted) client bytes.
    entries = recorded.entries
    assert replay(entries).to_client == transcript.client_bytes(entries)


def test_literals_truncated_keep_their_start(tmp_path: Path) -> None:
    recorded = record(tmp_path, fetch_script(), keep_literals="truncate", literal_keep_octets=80)
    assert recorded is not None
    assert "Line 000" in recorded.text and "Line 039" not in recorded.text
    assert f"[...{len(BODY)} octets]" in recorded.text
    entries = recorded.entries
    assert replay(entries).to_client == transcript.client_bytes(entries)


def test_literals_none_keeps_only_the_size_and_small_literals(tmp_path: Path) -> None:
    script = [*fetch_script(), ("c", b"a4 SELECT {5}\r\n"), ("s", b"+ ok\r\n"), ("c", b"Inbox\r\n")]
    recorded = record(tmp_path, script, keep_literals="none")
    assert recorded is not None
    assert "Line 000" not in recorded.text
    assert f"[{len(BODY)} octets]" in recorded.text
    assert "C: Inbox" in recorded.text  # a mailbox name is not a body


@CHUNKS
def test_literals_full_keeps_everything_and_replays_to_the_live_bytes(
    tmp_path: Path, chunk: int
) -> None:
    recorded = record(tmp_path, fetch_script(), keep_literals="full", chunk=chunk)
    assert recorded is not None
    assert "Line 039 of a message body that is private." in recorded.text
    assert "hunter2" not in recorded.text  # credentials go whatever the literal policy
    assert_replays_to_live(recorded)


def test_bytes_that_are_not_text_round_trip_through_base64(tmp_path: Path) -> None:
    body = bytes(range(256)) + b"\r\n"
    script = [
        ("s", GREETING),
        ("c", b"a1 LOGIN alice hunter2\r\n"),
        ("s", b"a1 OK logged in\r\n"),
        ("c", b"a2 FETCH 1 BINARY[]\r\n"),
        ("s", b"* 1 FETCH (BINARY[] ~{%d}\r\n" % len(body) + body + b")\r\n"),
        ("s", b"a2 OK done\r\n"),
    ]
    recorded = record(tmp_path, script, keep_literals="full")
    assert recorded is not None
    assert "S64: " in recorded.text
    assert_replays_to_live(recorded)


# --- the shape of a transcript ---------------------------------------------------------


def test_pipelined_commands_are_each_one_relayed_entry(tmp_path: Path) -> None:
    script = [
        ("s", GREETING),
        ("c", b"a1 LOGIN alice hunter2\r\na2 SELECT INBOX\r\na3 NOOP\r\n"),
        ("s", b"a1 OK in\r\n* 3 EXISTS\r\na2 OK selected\r\na3 OK\r\n"),
    ]
    recorded = record(tmp_path, script)
    assert recorded is not None
    body = [line for line in recorded.text.splitlines() if line[:2] in ("C:", "S:")]
    assert body == [
        'C: a1 LOGIN alice "[redacted]"',
        "C: a2 SELECT INBOX",
        "C: a3 NOOP",
        "S: a1 OK in",
        "S: * 3 EXISTS",
        "S: a2 OK selected",
        "S: a3 OK",
    ]
    assert_replays_to_live(recorded)


def test_starttls_shutdown_and_close_are_directives_a_replay_repeats(tmp_path: Path) -> None:
    settings = SessionSettings(starttls_available=True, peer=PeerInfo(session_id="s1"))
    script = [
        ("s", GREETING),
        # Plaintext pipelined after STARTTLS is dropped by the session, live and replayed.
        ("c", b"a1 STARTTLS\r\na2 LOGIN alice hunter2\r\n"),
        ("!", b"client-tls"),
        ("c", b"a3 LOGIN alice hunter2\r\n"),
        ("s", b"a3 OK in\r\n"),
        ("c", b"a4 IDLE\r\n"),
        ("s", b"+ idling\r\n"),
        ("!", b"shutdown"),
        ("s", b"a4 OK idle done\r\n"),
        ("!", b"upstream-closed"),
    ]
    recorded = record(tmp_path, script, settings=settings)
    assert recorded is not None
    assert "hunter2" not in recorded.text
    directives = [e.data for e in recorded.entries if e.prefix == "!"]
    assert directives[1:] == [b"client-tls", b"shutdown", b"upstream-closed"]
    assert directives[0].startswith(b"session {") and b'"starttls_available": true' in directives[0]
    assert b"* BYE" in recorded.live_client  # the drain's last word
    assert_replays_to_live(recorded)


def test_transcript_files_are_private_to_the_proxy_user(tmp_path: Path) -> None:
    recorded = record(tmp_path, login_script(b"a1 LOGIN alice hunter2\r\n"))
    assert recorded is not None
    assert recorded.path.stat().st_mode & 0o777 == 0o600


def test_an_unusable_directory_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"recorder\.directory"):
        Recorder(RecorderConfig(enabled=True, directory=blocker / "rec"))


# --- size cap and rotation -------------------------------------------------------------


def noop_script(count: int) -> Script:
    script = [("s", GREETING)]
    for i in range(count):
        script += [("c", b"a%d NOOP\r\n" % i), ("s", b"a%d OK\r\n" % i)]
    return script


def test_a_transcript_stops_at_max_file_bytes(tmp_path: Path) -> None:
    script = noop_script(400)
    recorded = record(tmp_path, script, max_file_bytes=4096)
    assert recorded is not None
    assert recorded.path.stat().st_size <= 4096 + 100
    assert recorded.text.rstrip().endswith("# recording stopped: max_file_bytes (4096)")
    assert "a10 NOOP" in recorded.text and "a399 NOOP" not in recorded.text


def test_old_transcripts_are_deleted_beyond_max_total_bytes(tmp_path: Path) -> None:
    script = noop_script(150)  # about 3000 octets each: two fit under the cap, not three
    directory = tmp_path / "rec"
    directory.mkdir()
    (directory / "00000000T000000Z-old.trace").write_text("# old\n" * 2000)
    config = RecorderConfig(
        enabled=True, directory=directory, max_total_bytes=8192, max_file_bytes=4096
    )
    recorder = Recorder(config)
    for n in range(10):
        settings = SessionSettings(peer=PeerInfo(session_id=f"n{n}"))
        session = recorder.wrap(ProxySession(settings), settings)
        drive(session, script)
        session.finish("closed")
    names = sorted(p.name for p in directory.iterdir())
    assert not any(name.endswith("-old.trace") for name in names)
    assert [name.split("-")[1] for name in names] == ["n8.trace", "n9.trace"]
    assert sum(p.stat().st_size for p in directory.iterdir()) <= 8192
    assert not any(name.endswith(".part") for name in names)


# --- which sessions ---------------------------------------------------------------------


class ScriptedSession:
    """A stand-in session that returns given events (for selection, no protocol needed)."""

    client_paused = upstream_paused = False
    idle_deadline_kind = None

    def __init__(self, events: list[ev.Event]) -> None:
        self.events = events

    def receive_from_client(self, data: bytes) -> list[ev.Event]:
        events, self.events = [ev.SendToUpstream(data), *self.events], []
        return events

    def receive_from_upstream(self, data: bytes) -> list[ev.Event]:
        return [ev.SendToClient(data)]

    def client_closed(self) -> list[ev.Event]:
        return [ev.Close("client-closed")]

    client_tls_established = upstream_tls_established = upstream_closed = client_closed
    shutdown = timed_out = client_closed


def recorded_ids(
    tmp_path: Path, sessions: Mapping[str, Sequence[ev.Event]], **config: Any
) -> set[str]:
    directory = tmp_path / "sel"
    recorder = Recorder(RecorderConfig(enabled=True, directory=directory, **config))
    for session_id, events in sessions.items():
        settings = SessionSettings(peer=PeerInfo(session_id=session_id))
        wrapped = recorder.wrap(ScriptedSession(list(events)), settings)
        wrapped.receive_from_upstream(b"* OK hi\r\n")
        wrapped.receive_from_client(b"a1 NOOP\r\n")
        wrapped.client_closed()
        wrapped.finish("client-closed")
    return {p.name.split("-", 1)[1].removesuffix(".trace") for p in directory.glob("*.trace")}


def _auth(user: str) -> ev.Authenticated:
    return ev.Authenticated(user, "LOGIN")


def _family(family: str) -> ev.ClientIdentified:
    return ev.ClientIdentified(family, None, 0.9)


def test_users_filter_records_only_those_users(tmp_path: Path) -> None:
    sessions = {"a": [_auth("Alice@Example.org")], "b": [_auth("bob")], "c": []}
    assert recorded_ids(tmp_path, sessions, users=["alice@example.org"]) == {"a"}


def test_families_filter_records_only_those_clients(tmp_path: Path) -> None:
    sessions: dict[str, list[ev.Event]] = {
        "a": [_family("outlook"), _auth("alice")],
        "b": [_family("thunderbird"), _auth("bob")],
        "c": [_family("outlook")],  # never logged in: decided when it ends
    }
    assert recorded_ids(tmp_path, sessions, families=["outlook"]) == {"a", "c"}


def test_users_and_families_must_both_match(tmp_path: Path) -> None:
    sessions: dict[str, list[ev.Event]] = {
        "a": [_family("outlook"), _auth("alice")],
        "b": [_family("outlook"), _auth("bob")],
        "c": [_family("thunderbird"), _auth("alice")],
    }
    assert recorded_ids(tmp_path, sessions, users=["alice"], families=["outlook"]) == {"a"}


def test_without_filters_every_session_is_recorded(tmp_path: Path) -> None:
    assert recorded_ids(tmp_path, {"a": [], "b": [_auth("bob")]}) == {"a", "b"}


def test_sample_rate_decides_per_session_and_unsampled_sessions_are_not_wrapped(
    tmp_path: Path,
) -> None:
    draws = iter([0.1, 0.7, 0.2, 0.9])
    config = RecorderConfig(enabled=True, directory=tmp_path / "s", sample_rate=0.5)
    factory = Recorder(config, rng=lambda: next(draws)).session_factory(ProxySession)
    sessions = [factory(SessionSettings()) for _ in range(4)]
    assert [isinstance(s, RecordingSession) for s in sessions] == [True, False, True, False]
    assert isinstance(sessions[1], ProxySession)  # nothing in between: zero cost
    for session in sessions:
        if isinstance(session, RecordingSession):
            session.finish("closed")
    assert len(list((tmp_path / "s").glob("*.trace"))) == 2


def test_the_recorder_is_off_by_default_and_needs_a_directory() -> None:
    assert RecorderConfig().enabled is False
    with pytest.raises(ValueError, match=r"recorder\.directory"):
        RecorderConfig(enabled=True)


def test_a_write_failure_ends_the_recording_not_the_session(tmp_path: Path) -> None:
    directory = tmp_path / "gone"
    recorder = Recorder(RecorderConfig(enabled=True, directory=directory))
    directory.rmdir()  # the directory vanished: opening the file fails
    settings = SessionSettings(rules=RuleSet.empty())
    session = recorder.wrap(ProxySession(settings), settings)
    live = drive(session, login_script(b"a1 LOGIN alice hunter2\r\n"))
    session.finish("closed")
    assert live.startswith(b"* OK [CAPABILITY")
    assert b"a1 OK logged in\r\n" in live
    assert not directory.exists()


# --- any chunking -----------------------------------------------------------------------

LOGINS = [
    b"a1 LOGIN alice hunter2\r\n",
    b'a1 LOGIN "alice" "hunter2"\r\n',
    b"a1 LOGIN {5+}\r\nalice {7+}\r\nhunter2\r\n",
    b"a1 AUTHENTICATE PLAIN " + base64.b64encode(b"\0alice\0hunter2") + b"\r\n",
]


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 64), st.sampled_from(LOGINS))
def test_any_chunking_records_no_secret_and_replays_to_the_live_bytes(
    chunk: int, login: bytes
) -> None:
    script = [*login_script(login), *fetch_script()[3:]]
    with tempfile.TemporaryDirectory() as directory:
        recorded = record(Path(directory), script, chunk=chunk, keep_literals="full")
    assert recorded is not None
    assert "hunter2" not in recorded.text
    assert base64.b64encode(b"\0alice\0hunter2").decode() not in recorded.text
    assert_replays_to_live(recorded)


# --- configuration ------------------------------------------------------------------------


def test_the_recorder_section_loads_from_a_file_and_the_environment(tmp_path: Path) -> None:
    config_file = tmp_path / "proxy.yaml"
    config_file.write_text(
        "recorder:\n  enabled: true\n  directory: /var/rec\n  families: [outlook]\n"
        "  keep_literals: truncate\n"
    )
    environ = {"IMAP_PROXY_RECORDER__SAMPLE_RATE": "0.25"}
    config = load_config(config_file, {}, environ).recorder
    assert config.enabled and config.directory == Path("/var/rec")
    assert config.families == ["outlook"] and config.sample_rate == 0.25
    assert config.keep_literals is KeepLiterals.TRUNCATE


@pytest.mark.parametrize(
    ("yaml_text", "problem"),
    [
        ("recorder:\n  keep_literals: some\n", "keep_literals"),
        ("recorder:\n  sample_rate: 2\n", "sample_rate"),
        ("recorder:\n  enabled: true\n", "recorder.directory"),
        ("recorder:\n  max_file_bytes: 100000\n  max_total_bytes: 5000\n", "max_total_bytes"),
        ("recorder:\n  match: all\n", "match"),
    ],
)
def test_a_bad_recorder_section_is_a_clear_error(
    tmp_path: Path, yaml_text: str, problem: str
) -> None:
    config_file = tmp_path / "proxy.yaml"
    config_file.write_text(yaml_text)
    with pytest.raises(ConfigError) as raised:
        load_config(config_file, {}, {})
    assert problem in "\n".join(raised.value.problems)


LEGACY_GREETING = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] legacy ready\r\n"


@CHUNKS
def test_literal_conversion_and_local_answers_record_and_replay(tmp_path: Path, chunk: int) -> None:
    """An upstream without LITERAL+ or ID: the proxy turns the client's `{n+}` into `{n}`
    and waits for each `+`, and answers ID itself (with the packaged rules)."""
    script = [
        ("s", LEGACY_GREETING),
        ("c", b'a0 ID ("name" "test")\r\n'),
        ("c", b"a1 LOGIN {5+}\r\nalice {7+}\r\nhunter2\r\n"),
        ("s", b"+ ready\r\n"),
        ("s", b"+ ready\r\n"),
        ("s", b"a1 OK logged in\r\n"),
        ("c", b"a2 LOGOUT\r\n"),
        ("s", b"* BYE bye\r\na2 OK done\r\n"),
        ("!", b"upstream-closed"),
    ]
    settings = SessionSettings(rules=SHIPPED_RULES, peer=PeerInfo(session_id="s1"))
    recorded = record(tmp_path, script, chunk=chunk, settings=settings)
    assert recorded is not None
    assert "hunter2" not in recorded.text
    assert ">s: alice {10}" in recorded.text  # converted, and redacted to its new size
    assert "c: a0 ID" in recorded.text and ">c: * ID NIL" in recorded.text
    result = replay(recorded.entries, rules=SHIPPED_RULES)
    assert result.to_client == recorded.live_client
    assert result.upstream_divergence is None


def test_a_literal_the_session_refuses_is_recorded_as_announced() -> None:
    # The session BYEs on the announcement itself; a rewritten (hashed) size would replay
    # as a literal it accepts.
    line = b"a APPEND INBOX {100001+}\r\n"
    assert StreamRedactor(commands=True, refused_over=100_000).feed(line) == line
    assert StreamRedactor(commands=True).feed(line) != line
