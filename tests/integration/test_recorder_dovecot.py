"""The session recorder in the real proxy in front of a real Dovecot, and its replay.

How this works: the proxy runs with `recorder.enabled` in front of `dovecot_modern`; a raw
socket client logs in (with a password Dovecot really checks), selects, fetches a
message, appends one and logs out, keeping every byte it receives. The transcript is
written when the connection ends, just after the client has read its LOGOUT answer, so
the test waits for the file to appear (a deadline, not a timing assertion). Then: the
password is nowhere in the file; the file's client-visible bytes are the bytes the client
received; `replay` of the file through a fresh session gives those very bytes again; and
the `imap-proxy replay` command shows a diff once a rule changes what the client sees.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest

from imap_proxy.cli import main
from imap_proxy.config import RecorderConfig
from imap_proxy.quirks.store import load_snapshot
from imap_proxy.session import events as ev
from imap_proxy.session.replay import replay
from imap_proxy.wire import transcript
from tests.integration.test_proxy_dovecot import make_message, proxy_config
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.proxy import RawClient, running_proxy

DEADLINE = 30.0


def wait_for_transcript(directory: Path) -> Path:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        found = sorted(directory.glob("*.trace"))
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no transcript in {directory}: {list(directory.iterdir())}")


def session(client: RawClient, user: MailUser, login: bytes) -> bytes:
    """A whole session; every byte the client received."""
    received = client.read_line()
    client.send(login)
    if login.endswith(b"AUTHENTICATE PLAIN\r\n"):
        received += client.read_until(b"\r\n")  # "+ "
        plain = base64.b64encode(f"\0{user.name}\0{user.password}".encode())
        client.send(plain + b"\r\n")
    received += client.read_until(b"a1 OK")
    received += client.read_line()
    for tag, command in (
        (b"a2", b"SELECT INBOX"),
        (b"a3", b"FETCH 1:* (FLAGS BODY.PEEK[])"),
        (b"a4", b"NOOP"),
    ):
        client.send(tag + b" " + command + b"\r\n")
        received += client.read_until(tag + b" OK")
        received += client.read_line()
    message = make_message("recorded", b"A body line the recorder sees.\r\n" * 20)
    client.send(b"a5 APPEND INBOX {%d+}\r\n" % len(message) + message + b"\r\n")
    received += client.read_until(b"a5 OK")
    received += client.read_line()
    client.send(b"a6 LOGOUT\r\n")
    received += client.read_all()
    return received


def record_session(
    dovecot: DovecotInstance, user: MailUser, directory: Path, login: bytes, **recorder: Any
) -> tuple[bytes, Path]:
    dovecot.append(user.name, make_message("already there", b"Private words.\r\n" * 9))
    config = proxy_config(
        dovecot, recorder=RecorderConfig(enabled=True, directory=directory, **recorder)
    )
    with running_proxy(config) as proxy, proxy.raw() as client:
        live = session(client, user, login)
        path = wait_for_transcript(directory)
    return live, path


def test_a_recorded_session_replays_to_the_bytes_the_client_received_live(
    dovecot_modern: DovecotInstance, fresh_mail_user: Any, tmp_path: Path
) -> None:
    user: MailUser = fresh_mail_user(dovecot_modern)
    login = b'a1 LOGIN %s "%s"\r\n' % (user.name.encode(), user.password.encode())
    live, path = record_session(dovecot_modern, user, tmp_path / "rec", login, keep_literals="full")
    text = path.read_text(encoding="utf-8")
    assert user.password not in text
    assert f'C: a1 LOGIN {user.name} "[redacted]"' in text
    assert "Private words." in text  # keep_literals: full
    entries = transcript.parse(text)
    assert transcript.client_bytes(entries) == live

    snapshot = load_snapshot(None)  # what the live proxy ran: the packaged rules
    result = replay(entries, rules=snapshot.rules, fingerprints=snapshot.fingerprints)
    assert result.to_client == live
    assert result.upstream_divergence is None
    assert result.of_type(ev.Authenticated) == [ev.Authenticated(user.name, "LOGIN")]


def test_authenticate_plain_is_redacted_and_bodies_hashed_by_default(
    dovecot_modern: DovecotInstance, fresh_mail_user: Any, tmp_path: Path
) -> None:
    user: MailUser = fresh_mail_user(dovecot_modern)
    live, path = record_session(
        dovecot_modern, user, tmp_path / "rec", b"a1 AUTHENTICATE PLAIN\r\n"
    )
    text = path.read_text(encoding="utf-8")
    plain = base64.b64encode(f"\0{user.name}\0{user.password}".encode()).decode()
    assert user.password not in text and plain not in text
    assert "Private words." not in text and "sha256:" in text
    assert b"Private words." in live  # the client did get the body
    entries = transcript.parse(text)
    snapshot = load_snapshot(None)
    result = replay(entries, rules=snapshot.rules, fingerprints=snapshot.fingerprints)
    assert result.to_client == transcript.client_bytes(entries)
    assert result.of_type(ev.Authenticated) == [ev.Authenticated(user.name, "PLAIN")]


CAPABILITY_RULE = """\
rules:
  - id: hide-idle
    summary: Hide IDLE from every client (an experiment, as through a test proxy).
    evidence: {fires: imaplib-opener.txt, silent: imaplib-opener.txt}
    actions:
      - type: capabilities
        remove: [IDLE]
"""


def test_replay_command_shows_what_a_rule_changes(
    dovecot_modern: DovecotInstance,
    fresh_mail_user: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    user: MailUser = fresh_mail_user(dovecot_modern)
    login = b"a1 LOGIN %s %s\r\n" % (user.name.encode(), user.password.encode())
    _live, path = record_session(dovecot_modern, user, tmp_path / "rec", login)

    assert main(["replay", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "with the packaged rules: " in out and "the same bytes as recorded" in out

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "experiment.yaml").write_text(CAPABILITY_RULE)
    assert main(["replay", str(path), "--rules", str(rules)]) == 0
    out = capsys.readouterr().out
    removed = [line for line in out.splitlines() if line.startswith("-") and " IDLE" in line]
    added = [line for line in out.splitlines() if line.startswith("+") and "CAPABILITY" in line]
    assert removed and added
    assert all(" IDLE" not in line for line in added)
    assert main(["replay", str(path), "--rules", str(rules), "--check"]) == 1
    capsys.readouterr()
