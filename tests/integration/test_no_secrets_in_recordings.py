"""No password and no SASL payload in any session recording of the whole Dovecot suite,
and every recording replays to the bytes it recorded.

How this works: like test_no_secrets_in_logs.py (whose plugin collects every user and
password the Dovecot fixtures were given), the Dovecot integration suite
(tests/integration/test_proxy_dovecot.py: imaplib, imapclient and raw sockets; LOGIN with
atoms, quoted strings and literals, AUTHENTICATE PLAIN, STARTTLS, implicit TLS, IDLE,
40 MB messages, drains) runs in a child pytest, here with IMAP_PROXY_TEST_RECORD_DIR set,
so every proxy it starts records every session (tests/support/proxy.py), with the
default literal policy. The parent then searches every transcript for every password and
for the base64 of every AUTHENTICATE PLAIN payload, checks the recordings are not
trivially clean (many sessions, LOGIN and AUTHENTICATE in them), and replays each
recording made with the packaged rules: it must give back its recorded client bytes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imap_proxy.quirks.model import packaged_rules_dir
from imap_proxy.quirks.store import load_snapshot
from imap_proxy.session.replay import replay
from imap_proxy.wire import transcript
from tests.integration.test_no_secrets_in_logs import CHILD_TIMEOUT, run_suite_for_secrets
from tests.support.proxy import TEST_RECORD_DIR_ENV


@pytest.mark.dovecot
@pytest.mark.timeout(CHILD_TIMEOUT + 120)
def test_recordings_of_the_dovecot_suite_hold_no_secrets_and_replay(tmp_path: Path) -> None:
    record_dir = tmp_path / "recordings"
    secrets = run_suite_for_secrets(tmp_path, {TEST_RECORD_DIR_ENV: str(record_dir)})
    any_secret = re.compile("|".join(re.escape(secret) for secret in sorted(secrets)))

    paths = sorted(record_dir.glob("*.trace"))
    assert len(paths) >= 20, len(paths)
    texts = {path: path.read_text(encoding="utf-8") for path in paths}
    leaks = [path.name for path, text in texts.items() if any_secret.search(text)]
    assert not leaks, f"secrets in {len(leaks)} recording(s): {leaks[:5]}"
    everything = "\n".join(texts.values())
    assert everything.count(" LOGIN ") >= 10 and "AUTHENTICATE PLAIN" in everything.upper()
    assert "!: client-tls" in everything  # STARTTLS sessions were recorded too

    packaged = load_snapshot(None)
    rules_line = f"# rules: {packaged_rules_dir()}\n"
    replayed = 0
    for path, text in texts.items():
        if rules_line not in text:
            continue  # a test with its own rules: replayed with those elsewhere
        entries = transcript.parse(text)
        result = replay(entries, rules=packaged.rules, fingerprints=packaged.fingerprints)
        assert result.to_client == transcript.client_bytes(entries), path.name
        replayed += 1
    assert replayed >= 20, replayed
