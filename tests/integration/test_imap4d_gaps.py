"""Two catalogue rules against a second real server: GNU mailutils imap4d.

How this works: imap4d, started per connection in inetd mode with `--preauth` (logged in
as the current user, its mailbox a spool file under the test's tmp_path), sits behind a
small TCP-to-pipes bridge so the proxy can dial it. imap4d has no ENABLE and answers an
empty command line with `* BAD Null command`: with the packaged rules new Outlook's ENABLE
gets OK and iOS Mail's bare CRLF goes unanswered; with no rules, both get BAD.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from imap_proxy.config import ProxyConfig
from imap_proxy.quirks.fingerprint import FingerprintSet
from imap_proxy.quirks.model import RuleSet, load_rules
from imap_proxy.quirks.store import QuirkSnapshot, RuleStore
from tests.support.proxy import running_proxy

IMAP4D = shutil.which("imap4d") or "/usr/sbin/imap4d"
MBOX = b"From a@example.org Thu Dec  3 10:00:00 2026\nFrom: a@example.org\nSubject: t\n\nhi\n\n"


@contextmanager
def imap4d_bridge(spool: Path) -> Iterator[int]:
    """A loopback port; each connection gets its own `imap4d --preauth --inetd`."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    children: list[subprocess.Popen[bytes]] = []

    def serve(client: socket.socket) -> None:
        child = subprocess.Popen(
            [IMAP4D, "--preauth", "--inetd", "--set", f"mailbox.mail-spool={spool}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        children.append(child)
        assert child.stdin is not None and child.stdout is not None
        stdin, stdout = child.stdin, child.stdout

        def upstream_to_client() -> None:
            with suppress(OSError, ValueError):
                while data := os.read(stdout.fileno(), 65536):
                    client.sendall(data)
            with suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)

        pump = threading.Thread(target=upstream_to_client, daemon=True)
        pump.start()
        with suppress(OSError, ValueError):
            while data := client.recv(65536):
                stdin.write(data)
                stdin.flush()
        with suppress(OSError):
            stdin.close()
        pump.join(10)
        stdout.close()
        client.close()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(client,), daemon=True).start()

    acceptor = threading.Thread(target=accept_loop, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        acceptor.join(5)
        listener.close()
        for child in children:
            child.kill()
            child.wait(10)


def _outlook_and_ios_lines(port: int, rules: RuleSet) -> bytes:
    store = RuleStore(QuirkSnapshot(rules, FingerprintSet.packaged()))
    config = ProxyConfig.model_validate(
        {"listen": ["127.0.0.1:0"], "upstream": {"address": f"127.0.0.1:{port}"}}
    )
    with running_proxy(config, rules=store) as proxy, proxy.raw() as raw:
        received = raw.read_line()
        for line in (b"A4 ENABLE CONDSTORE\r\n", b"\r\nA5 SELECT INBOX\r\n", b"A6 LOGOUT\r\n"):
            raw.send(line)
            tag = line.strip().split(b" ")[0]
            while not (answer := raw.read_line()).startswith(tag + b" "):
                received += answer
            received += answer
        return received


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    if not Path(IMAP4D).exists():
        pytest.fail(f"GNU mailutils imap4d is not installed at {IMAP4D}")
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / getpass.getuser()).write_bytes(MBOX)
    return directory


def test_enable_and_empty_lines_are_handled_in_front_of_imap4d(spool: Path) -> None:
    with imap4d_bridge(spool) as port:
        bare = _outlook_and_ios_lines(port, RuleSet.empty())
        shipped = _outlook_and_ios_lines(port, load_rules())
    # imap4d itself: ENABLE is an invalid command, the bare CRLF a "Null command".
    assert b"A4 BAD" in bare and b"* BAD" in bare
    # Through the packaged rules (answer-enable, ignore-empty-lines): no BAD at all.
    assert b"* ENABLED\r\nA4 OK ENABLE completed\r\n" in shipped
    assert b"BAD" not in shipped and b"A5 OK" in shipped
