"""GNU mailutils imap4d as a second real upstream: a server without MOVE and UIDPLUS.

How this works: `start_imap4d()` makes a temp directory (its own config file, an mbox
spool and a home directory for folders, owned by the unprivileged mail account) and a
loopback listener. A thread accepts connections and runs, for each one, `imap4d
--inetd` on that socket, inetd style, as the unprivileged account, with `preauth stdio`:
the session starts authenticated (`* PREAUTH`) as that account, so no system user or
password is involved. Each instance has its own mail; `stop()` closes the listener,
kills any imap4d still running and removes the directory.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.dovecot import mail_account

IMAP4D_BINARY = Path("/usr/sbin/imap4d")
HOST = "127.0.0.1"
_CONFIG = """\
logging {{ syslog false; }};
mailbox {{ mailbox-pattern "{spool}/${{user}}"; }};
namespace personal {{ prefix "" {{ directory "{home}"; delimiter "/"; }}; }};
preauth stdio;
"""


def imap4d_unavailable_reason() -> str | None:
    if not IMAP4D_BINARY.exists():
        return f"{IMAP4D_BINARY} not found: install mailutils-imap4d"
    if os.geteuid() != 0:
        return "the imap4d fixture needs root (it runs imap4d as an unprivileged account)"
    return None


@dataclass(eq=False)
class Imap4dInstance:
    root: Path
    listener: socket.socket
    port: int = 0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def imap(self) -> imaplib.IMAP4:
        """A direct imaplib connection (already authenticated: PREAUTH)."""
        return imaplib.IMAP4(HOST, self.port, timeout=30)

    def append(self, message: bytes, mailbox: str = "INBOX", flags: str = "") -> None:
        direct = self.imap()
        try:
            status, data = direct.append(mailbox, f"({flags})" if flags else None, None, message)
            if status != "OK":
                raise RuntimeError(f"APPEND to {mailbox} failed: {data!r}")
        finally:
            direct.logout()

    def create(self, mailbox: str) -> None:
        direct = self.imap()
        try:
            direct.create(mailbox)
        finally:
            direct.logout()

    def wait_for_sessions_to_end(self, timeout: float = 15.0) -> None:
        """Until every imap4d has exited (each writes its mbox changes on the way out)."""
        with self._lock:
            processes = list(self.processes)
        for process in processes:
            process.wait(timeout)

    def mailbox(self, mailbox: str) -> dict[str, str]:
        """Subject -> flags of every message in `mailbox` (read-only), in order."""
        direct = self.imap()
        try:
            status, selected = direct.select(mailbox, readonly=True)
            if status != "OK":
                raise RuntimeError(f"EXAMINE {mailbox} failed: {selected!r}")
            if selected[0] == b"0":
                return {}
            status, data = direct.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            found: dict[str, str] = {}
            for item in data:
                if isinstance(item, tuple):
                    flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
                    subject = re.search(rb"(?i)Subject: (\S+)", item[1])
                    if flags is None or subject is None:
                        raise RuntimeError(f"unexpected FETCH data {item!r}")
                    found[subject.group(1).decode()] = flags.group(1).decode()
            return found
        finally:
            direct.logout()

    def _serve(self) -> None:
        uid, gid = mail_account()
        config = self.root / "imap4d.conf"
        while True:
            try:
                connection, _address = self.listener.accept()
            except OSError:
                return
            with connection:
                process = subprocess.Popen(
                    [str(IMAP4D_BINARY), f"--config-file={config}", "--inetd"],
                    stdin=connection.fileno(),
                    stdout=connection.fileno(),
                    stderr=subprocess.DEVNULL,
                    user=uid,
                    group=gid,
                    extra_groups=[],
                    cwd=self.root,
                    env={"PATH": "/usr/bin:/bin", "HOME": str(self.root / "home")},
                )
            with self._lock:
                self.processes = [p for p in self.processes if p.poll() is None] + [process]

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            processes = list(self.processes)
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


def _account_name(uid: int) -> str:
    return pwd.getpwuid(uid).pw_name


def start_imap4d() -> Imap4dInstance:
    uid, gid = mail_account()
    root = Path(tempfile.mkdtemp(prefix="imap-proxy-imap4d-"))
    root.chmod(0o755)
    spool, home = root / "spool", root / "home"
    for directory in (spool, home):
        directory.mkdir()
        os.chown(directory, uid, gid)
    inbox = spool / _account_name(uid)
    inbox.write_bytes(b"")  # an empty mbox: imap4d does not create INBOX itself
    os.chown(inbox, uid, gid)
    (root / "imap4d.conf").write_text(_CONFIG.format(spool=spool, home=home))
    listener = socket.create_server((HOST, 0))
    instance = Imap4dInstance(root, listener, port=int(listener.getsockname()[1]))
    instance._thread = threading.Thread(target=instance._serve, daemon=True)
    instance._thread.start()
    return instance
