"""SIGHUP reloads the quirk rules of a running `imap-proxy run --rules DIR`, dropping nobody.

How this works: the proxy runs as a separate process (test_lifecycle's `proxy_process`)
in front of the `legacy` Dovecot, whose capabilities lack ID, with a rules directory in a
temporary directory that starts as a copy of the packaged rules. There the shipped
`answer-id-in-every-state` rule is what makes the greeting advertise ID (the modern
profile announces ID itself, so a rule change cannot show there). 50 sessions log in and
select INBOX. The test then rewrites the directory - that rule disabled, a rule adding a
marker capability added, imaplib's fingerprint family renamed - and sends SIGHUP: every
one of the 50 sessions still answers NOOP, each keeps the rule set it started with (its
CAPABILITY still has ID and no marker), a new session's greeting has the marker and no
ID, and a new imaplib session is counted in /metrics under the renamed family. An invalid rule file is
then refused on SIGHUP with an error log line naming the file; new sessions keep the last
good set. Removing the broken file and reloading again is accepted. /metrics counts the
reloads by outcome.
"""

from __future__ import annotations

import imaplib
import shutil
import signal
import urllib.request
from pathlib import Path

from imap_proxy.quirks.model import FINGERPRINT_FILE, packaged_rules_dir
from tests.support.dovecot import DovecotInstance, MailUser

from .test_lifecycle import WAIT, proxy_process
from .test_proxy_dovecot import NewUser

SESSIONS = 50
RENAMED_FAMILY = "python-imaplib-v2"
MARKER = "X-RULES-RELOADED"
MARKER_RULE = f"""\
rules:
  - id: advertise-reload-marker
    summary: Test rule - advertise a marker capability, so a session shows its rule set.
    evidence: {{fires: none.txt, silent: none.txt}}
    actions: [{{type: capabilities, add: [{MARKER}]}}]
"""
BROKEN_RULE = """\
rules:
  - id: broken-rule
    summary: Test rule with an action that does not exist.
    evidence: {fires: none.txt, silent: none.txt}
    actions: [{type: rewrite_everything}]
"""


def greeting_capabilities(port: int) -> list[str]:
    """What a new session's greeting advertises (upper case)."""
    client = imaplib.IMAP4("127.0.0.1", port, timeout=WAIT)
    try:
        welcome = client.welcome.decode()
    finally:
        client.shutdown()
    assert "[CAPABILITY " in welcome, welcome
    return welcome.split("[CAPABILITY ", 1)[1].split("]", 1)[0].upper().split()


def session_capabilities(session: imaplib.IMAP4) -> list[str]:
    typ, data = session.capability()
    assert typ == "OK"
    line: bytes = data[0]
    return line.decode().upper().split()


def scrape(metrics_port: int) -> str:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        body: bytes = response.read()
    return body.decode()


def rule_reloads(metrics: str) -> dict[str, float]:
    counts = {}
    for line in metrics.splitlines():
        if line.startswith("imap_proxy_rule_reloads_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('outcome="', 1)[1].split('"', 1)[0]] = float(value)
    return counts


def session_families(metrics: str) -> set[str]:
    """The client families of the sessions counted so far."""
    return {
        line.split('client_family="', 1)[1].split('"', 1)[0]
        for line in metrics.splitlines()
        if line.startswith("imap_proxy_sessions_total{") and not line.endswith(" 0.0")
    }


def test_sighup_reloads_rules_for_new_sessions_and_drops_none(
    dovecot_legacy: DovecotInstance, fresh_mail_user: NewUser, tmp_path: Path
) -> None:
    user: MailUser = fresh_mail_user(dovecot_legacy)
    rules = tmp_path / "rules"
    shutil.copytree(packaged_rules_dir(), rules)
    core = rules / "core.yaml"
    args = (
        "--upstream", f"127.0.0.1:{dovecot_legacy.port}",
        "--listen", "127.0.0.1:0",
        "--rules", str(rules),
        "--metrics-listen", "127.0.0.1:0",
    )  # fmt: skip
    with proxy_process(*args) as proxy:
        port = proxy.ports["imap"]
        metrics_port = int(proxy.wait_for_log("metrics listening")["port"])
        before = greeting_capabilities(port)
        assert "ID" in before and MARKER not in before  # the packaged answer-id rule at work

        sessions: list[imaplib.IMAP4] = []
        try:
            for _ in range(SESSIONS):
                session = imaplib.IMAP4("127.0.0.1", port, timeout=WAIT)
                sessions.append(session)
                session.login(user.name, user.password)
                assert session.select("INBOX")[0] == "OK"

            # The new set: answer-id disabled, a marker capability added.
            text = core.read_text()
            disabled = text.replace(
                "  - id: answer-id-in-every-state\n",
                "  - id: answer-id-in-every-state\n    enabled: false\n",
            )
            assert disabled != text
            core.write_text(disabled)
            (rules / "marker.yaml").write_text(MARKER_RULE)
            # ... and the fingerprint definitions with imaplib's family renamed.
            definitions = rules / FINGERPRINT_FILE
            renamed = definitions.read_text().replace(
                "family: python-imaplib\n", f"family: {RENAMED_FAMILY}\n"
            )
            assert renamed != definitions.read_text()
            definitions.write_text(renamed)
            proxy.process.send_signal(signal.SIGHUP)
            reloaded = proxy.wait_for_log("rules reloaded")
            assert reloaded["generation"] == 2

            for session in sessions:
                assert session.noop()[0] == "OK"
            # Sessions keep the rule set they started with ...
            old = session_capabilities(sessions[0])
            assert "ID" in old and MARKER not in old
            # ... and new ones get the new set.
            after = greeting_capabilities(port)
            assert MARKER in after and "ID" not in after, after
            newcomer = imaplib.IMAP4("127.0.0.1", port, timeout=WAIT)
            newcomer.login(user.name, user.password)
            newcomer.select("INBOX")
            newcomer.logout()
            assert RENAMED_FAMILY in session_families(scrape(metrics_port))

            # An invalid rule file: refused, logged, the last good set stays.
            (rules / "broken.yaml").write_text(BROKEN_RULE)
            proxy.process.send_signal(signal.SIGHUP)
            refused = proxy.wait_for_log("rules not reloaded; the previous set stays active")
            assert refused["level"] == "error"
            assert any("broken.yaml: rule broken-rule: actions.0" in p for p in refused["problems"])
            failure = proxy.wait_for_log(
                "reload failed; the previous state stays", what="reload_rules"
            )
            assert failure["level"] == "error"
            assert greeting_capabilities(port) == after
            for session in sessions:
                assert session.noop()[0] == "OK"

            # Fixed (and the marker rule removed): accepted again.
            (rules / "broken.yaml").unlink()
            (rules / "marker.yaml").unlink()
            proxy.process.send_signal(signal.SIGHUP)
            assert proxy.wait_for_log("rules reloaded")["generation"] == 3
            last = greeting_capabilities(port)
            assert MARKER not in last and "ID" not in last, last

            assert rule_reloads(scrape(metrics_port)) == {"ok": 2.0, "failed": 1.0}
            for session in sessions:
                assert session.noop()[0] == "OK"
        finally:
            for session in sessions:
                session.logout()
        proxy.process.send_signal(signal.SIGTERM)
        assert proxy.process.wait(WAIT) == 0


def test_rules_watch_reloads_changed_files_without_a_signal(
    dovecot_legacy: DovecotInstance, fresh_mail_user: NewUser, tmp_path: Path
) -> None:
    user: MailUser = fresh_mail_user(dovecot_legacy)
    rules = tmp_path / "rules"
    shutil.copytree(packaged_rules_dir(), rules)
    args = (
        "--upstream", f"127.0.0.1:{dovecot_legacy.port}",
        "--listen", "127.0.0.1:0",
        "--rules", str(rules),
        "--rules-watch", "0.2",
    )  # fmt: skip
    with proxy_process(*args) as proxy:
        port = proxy.ports["imap"]
        assert MARKER not in greeting_capabilities(port)
        session = imaplib.IMAP4("127.0.0.1", port, timeout=WAIT)
        try:
            session.login(user.name, user.password)
            (rules / "marker.yaml").write_text(MARKER_RULE)
            proxy.wait_for_log("rules changed on disk: reloading")
            assert proxy.wait_for_log("rules reloaded")["generation"] == 2
            assert MARKER in greeting_capabilities(port)
            assert session.noop()[0] == "OK"

            (rules / "broken.yaml").write_text(BROKEN_RULE)
            refused = proxy.wait_for_log("rules not reloaded; the previous set stays active")
            assert any("broken.yaml" in problem for problem in refused["problems"])
            assert MARKER in greeting_capabilities(port)
            assert session.noop()[0] == "OK"
        finally:
            session.logout()
        proxy.process.send_signal(signal.SIGTERM)
        assert proxy.process.wait(WAIT) == 0
    # The broken set was refused once, not again at every check.
    refusals = [line for line in proxy.lines if "rules not reloaded" in line]
    assert len(refusals) == 1, refusals
