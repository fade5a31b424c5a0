"""`imap-proxy run --upstream HOST:PORT` as an operator starts it: no config file.

The proxy runs as a real process (the installed console script when it is on PATH, else
`python -m imap_proxy`), logs its bound address, proxies a real Dovecot, never logs a
password even at debug level, and on SIGTERM says BYE to idle clients and exits 0.
"""

from __future__ import annotations

import imaplib
import json
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty, Queue

from tests.support.dovecot import DovecotInstance, MailUser

from .test_proxy_dovecot import NewUser


def command() -> list[str]:
    script = shutil.which("imap-proxy")
    return [script] if script else [sys.executable, "-m", "imap_proxy"]


@contextmanager
def proxy_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], int, list[str]]]:
    process = subprocess.Popen(
        [*command(), "run", *args, "--listen", "127.0.0.1:0", "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    queue: Queue[str] = Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def pump() -> None:
        for line in stdout:
            lines.append(line)
            queue.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    port = None
    try:
        while port is None:
            try:
                line = queue.get(timeout=20)
            except Empty:
                raise AssertionError(f"no 'listening' log line: {lines}") from None
            event = json.loads(line)
            if event.get("event") == "listening":
                port = int(event["port"])
        yield process, port, lines
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        reader.join(10)
        stdout.close()


def test_run_with_only_an_upstream_proxies_dovecot_and_drains_on_sigterm(
    dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user: MailUser = fresh_mail_user(dovecot_modern)
    upstream = f"127.0.0.1:{dovecot_modern.port}"
    with proxy_process("--upstream", upstream, "--log-level", "debug") as (process, port, lines):
        client = imaplib.IMAP4("127.0.0.1", port, timeout=20)
        client.login(user.name, user.password)
        assert client.select("INBOX")[0] == "OK"
        assert client.append("INBOX", None, None, b"Subject: via cli\r\n\r\nhi\r\n")[0] == "OK"

        process.send_signal(signal.SIGTERM)
        # The idle, logged-in client is told, then disconnected.
        response = client.readline()
        assert response.startswith(b"* BYE")
        assert process.wait(20) == 0
        client.shutdown()

    log = "".join(lines)
    assert user.password not in log
    assert dovecot_modern.mailbox_messages(user.name) == [b"Subject: via cli\r\n\r\nhi\r\n"]
