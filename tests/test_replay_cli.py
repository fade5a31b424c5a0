"""`imap-proxy replay`: exit codes, the with/without-rules diff, and divergence warnings.

How this works: `main()` runs in-process on the recording checked in under
tests/transcripts/recorded/ (made through the proxy in front of Dovecot) and on small
hand-written transcripts; stdout and stderr are captured. The same command on a fresh
recording is exercised in tests/integration/test_recorder_dovecot.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imap_proxy.cli import main

RECORDED = Path(__file__).parent / "transcripts" / "recorded"
RECORDING = str(sorted(RECORDED.glob("*.trace"))[0])

HIDE_IDLE = """\
rules:
  - id: hide-idle
    summary: Hide IDLE from every client.
    evidence: {fires: imaplib-opener.txt, silent: imaplib-opener.txt}
    actions:
      - type: capabilities
        remove: [IDLE]
"""

STRIP_SEPARATOR = """\
rules:
  - id: strip-separator
    summary: Strip a trailing separator from mailbox names, for every client.
    evidence: {fires: imaplib-opener.txt, silent: imaplib-opener.txt}
    actions:
      - type: strip_trailing_separator
"""

HAND_WRITTEN = """\
s: * OK [CAPABILITY IMAP4rev1 LITERAL+] ready
>c: * OK [CAPABILITY IMAP4rev1 LITERAL+] ready
C: a1 LOGIN alice "[redacted]"
S: a1 OK logged in
C: a2 SELECT "Sent/"
S: a2 NO [NONEXISTENT] Mailbox doesn't exist: Sent/
C: a3 LOGOUT
S: * BYE bye
S: a3 OK done
"""


def rules_dir(tmp_path: Path, text: str) -> str:
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "experiment.yaml").write_text(text)
    return str(directory)


def test_replay_of_a_recording_with_its_own_rules_is_the_same_bytes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["replay", RECORDING, "--check"]) == 0
    out = capsys.readouterr().out
    assert "with the packaged rules: " in out
    assert out.count("the same bytes as recorded") == 2  # no packaged rule fires here
    assert "no difference" in out


def test_a_capability_rule_shows_as_a_diff_and_fails_the_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = rules_dir(tmp_path, HIDE_IDLE)
    assert main(["replay", RECORDING, "--rules", rules]) == 0
    out = capsys.readouterr().out
    assert "--- client sees without rules" in out
    assert f"+++ client sees with {rules}" in out
    minus = [line for line in out.splitlines() if line.startswith("-* OK [CAPABILITY")]
    plus = [line for line in out.splitlines() if line.startswith("+* OK [CAPABILITY")]
    assert len(minus) == len(plus) == 1
    assert " IDLE " in minus[0] and " IDLE" not in plus[0]
    assert plus[0][1:] == minus[0][1:].replace(" IDLE", "")
    assert "differs from the recording" in out
    assert main(["replay", RECORDING, "--rules", rules, "--check"]) == 1
    capsys.readouterr()
    assert main(["replay", RECORDING, "--rules", rules, "--diff", "recorded"]) == 0
    assert "--- client received (recorded)" in capsys.readouterr().out


def test_a_rule_that_changes_upstream_commands_is_reported_as_a_divergence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "hand.trace"
    trace.write_text(HAND_WRITTEN)
    assert main(["replay", str(trace), "--rules", rules_dir(tmp_path, STRIP_SEPARATOR)]) == 0
    out = capsys.readouterr().out
    warning = out[out.index("! with") :]
    assert "sent the upstream other bytes than recorded, at line 5" in warning
    assert 'recorded: a2 SELECT "Sent/"' in warning
    assert 'replayed: a2 SELECT "Sent"' in warning or "replayed: a2 SELECT Sent" in warning
    assert "! without rules" not in out  # without rules, the dialogue is as recorded


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        (b"root:x:0:0:root:/root:/bin/sh\n", "not a transcript: line 1"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"# only a comment\n", "nothing sent by a client or upstream"),
        (b"S: * OK hi\nC64: not base64!\n", "bad base64"),
        (b"!: session [1, 2]\nS: * OK hi\n", "session directive is not a JSON object"),
        (b"!: reboot\n", "unknown directive"),
    ],
)
def test_an_unreadable_trace_exits_2_with_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str
) -> None:
    path = tmp_path / "bad.trace"
    if content is not None:
        path.write_bytes(content)
    assert main(["replay", str(path)]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.err.startswith("imap-proxy: ") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err + captured.out


def test_invalid_rules_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = rules_dir(tmp_path, "rules:\n  - id: Not Valid\n")
    assert main(["replay", RECORDING, "--rules", rules]) == 2
    assert "imap-proxy: " in capsys.readouterr().err


def test_the_fingerprint_command_reads_recordings_too(capsys: pytest.CaptureFixture[str]) -> None:
    """One parser: `imap-proxy fingerprint` takes a recording (directives and all)."""
    assert main(["fingerprint", RECORDING]) == 0
    assert capsys.readouterr().out.startswith("client: ")
