"""No password and no SASL payload ever reaches the logs, with debug logging on.

How this works: the test runs the Dovecot integration tests
(tests/integration/test_proxy_dovecot.py) in a child pytest, with
IMAP_PROXY_TEST_LOG_FILE set so that every proxy `running_proxy` starts logs at debug
level, as JSON lines, into one file (tests/support/proxy.py). This module is also loaded
into the child as a plugin (`-p`): its `pytest_configure` wraps the Dovecot fixture's
passwd-file writer so that every user and password any Dovecot instance was given is
appended to a second file (IMAP_PROXY_TEST_PASSWORDS_FILE) — random passwords of fresh
users included. The parent then searches every log line for every password, and for the
base64 of every AUTHENTICATE PLAIN payload those users could have sent, and checks the
log is not trivially clean (it holds command and authentication events).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PASSWORDS_FILE_ENV = "IMAP_PROXY_TEST_PASSWORDS_FILE"
LOG_FILE_ENV = "IMAP_PROXY_TEST_LOG_FILE"
ROOT = Path(__file__).resolve().parents[2]
# The everyday suite, and the attacks and faults (odd LOGINs, cut literals, aborted SASL).
SUITE = (
    "tests/integration/test_proxy_dovecot.py",
    "tests/integration/test_adversarial.py",
    "tests/integration/test_fault_injection.py",
)
CHILD_TIMEOUT = 900  # the whole Dovecot suite runs in the child (about 25 s here)


# --- plugin side (runs inside the child pytest) ---------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    """Record every user:password written to any Dovecot passwd-file of this run."""
    target = os.environ.get(PASSWORDS_FILE_ENV)
    if not target:
        return
    from tests.support import dovecot

    write = dovecot._write_passwd_file

    def recording_write(path: Path, users: dict[str, str]) -> None:
        with open(target, "a", encoding="utf-8") as record:
            record.writelines(f"{name}\t{password}\n" for name, password in users.items())
        write(path, users)

    dovecot._write_passwd_file = recording_write


# --- test side ------------------------------------------------------------------------


def plain_payloads(user: str, password: str) -> list[str]:
    """The base64 an AUTHENTICATE PLAIN client sends, without and with an authzid."""
    forms = [f"\0{user}\0{password}", f"{user}\0{user}\0{password}"]
    return [base64.b64encode(form.encode()).decode() for form in forms]


def run_suite_for_secrets(tmp_path: Path, environment: dict[str, str]) -> set[str]:
    """Run the Dovecot suite in a child pytest with `environment` added (where to log or
    record); return every password it used and their AUTHENTICATE PLAIN forms."""
    passwords_file = tmp_path / "passwords.tsv"
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.integration.test_no_secrets_in_logs",
            *SUITE,
        ],
        cwd=ROOT,
        env=os.environ | environment | {PASSWORDS_FILE_ENV: str(passwords_file)},
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    output = child.stdout[-4000:] + child.stderr[-4000:]
    if "skipped" in child.stdout and " passed" not in child.stdout:
        pytest.skip("the Dovecot suite was skipped in the child:\n" + output)
    assert child.returncode == 0, output

    users = dict(
        line.split("\t", 1) for line in passwords_file.read_text().splitlines() if "\t" in line
    )
    secrets = {password for password in users.values() if password}
    secrets.update(p for user, password in users.items() for p in plain_payloads(user, password))
    assert len(users) >= 12, users.keys()  # the default users and the fresh ones at least
    return secrets


@pytest.mark.dovecot
@pytest.mark.timeout(CHILD_TIMEOUT + 60)
def test_debug_logs_of_the_dovecot_suite_hold_no_secrets(tmp_path: Path) -> None:
    log_file = tmp_path / "proxy-debug.jsonl"
    secrets = run_suite_for_secrets(tmp_path, {LOG_FILE_ENV: str(log_file)})

    lines = log_file.read_text(encoding="utf-8").splitlines()
    events: list[dict[str, Any]] = [json.loads(line) for line in lines if line.startswith("{")]
    names = [event.get("event") for event in events]
    assert names.count("command started") >= 50
    assert names.count("command completed") >= 50
    assert names.count("authenticated") >= 10
    mechanisms = {
        event.get("mechanism") for event in events if event.get("event") == "authenticated"
    }
    assert {"LOGIN", "PLAIN"} <= mechanisms, mechanisms
    assert any(event.get("level") == "debug" for event in events)

    any_secret = re.compile("|".join(re.escape(secret) for secret in sorted(secrets)))
    leaks = [number for number, line in enumerate(lines, 1) if any_secret.search(line)]
    assert not leaks, f"secrets on {len(leaks)} log line(s), the first is line {leaks[0]}"
