"""NeoMutt through the proxy, driven by keystrokes it pushes to itself, on both profiles.

How this works: NeoMutt is a full-screen program; it will not start without a terminal.
The test gives it one -- a pseudo-terminal from `os.openpty()`, 120x40, TERM=xterm -- and
no keystrokes at all: the muttrc ends with one `push` of the whole scenario (tag by
subject, copy to a new folder, save (= move) to it, delete, flag, sync, quit), which
NeoMutt runs as if typed, ending with `<quit>`. Confirmation prompts are all switched off,
so nothing waits for an answer; a run that hangs anyway is killed at the timeout and the
last screen output is shown. Dovecot, read directly, must then hold each message exactly
where the scenario put it.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

from tests.clients.conftest import CompatScenario
from tests.clients.support import (
    CLIENT_TIMEOUT,
    ClientFailedError,
    binary_version,
    make_message,
    require_binary,
    server_state,
    write_private,
)
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.proxy import RunningProxy

MUTTRC = """\
set imap_user="{user}"
set imap_pass="{password}"
set folder="imap://127.0.0.1:{port}/"
set spoolfile="+INBOX"
set ssl_starttls=no
set ssl_force_tls=no
set imap_check_subscribed=no
set header_cache=""
set message_cachedir=""
set record=""
set postponed=""
set confirmappend=no
set confirmcreate=no
set delete=yes
set move=no
set quit=yes
set mark_old=no
set wait_key=no
set beep=no
set sleep_time=0
set timeout=0
push "{keys}"
"""
SCENARIO_KEYS = (
    "<tag-pattern>~s copyme<enter><tag-prefix><copy-message>=Archive<enter>"
    "<untag-pattern>~A<enter>"
    "<tag-pattern>~s moveme<enter><tag-prefix><save-message>=Archive<enter>"
    "<untag-pattern>~A<enter>"
    "<delete-pattern>~s deleteme<enter>"
    "<tag-pattern>~s flagme<enter><tag-prefix><flag-message>"
    "<untag-pattern>~A<enter>"
    "<sync-mailbox>"
    "<quit>"
)
TERMINAL_ROWS, TERMINAL_COLUMNS = 40, 120


def run_in_terminal(argv: list[str], home: Path, timeout: float = CLIENT_TIMEOUT) -> bytes:
    """Run `argv` on a fresh pseudo-terminal until it exits; return what it drew.

    Raises ClientFailedError on a non-zero exit or when `timeout` passes (the process is
    killed then).
    """
    controller, terminal = os.openpty()
    fcntl.ioctl(
        terminal, termios.TIOCSWINSZ, struct.pack("HHHH", TERMINAL_ROWS, TERMINAL_COLUMNS, 0, 0)
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TERM": "xterm"}
    env |= {"LANG": "C.UTF-8", "TZ": "UTC"}
    process = subprocess.Popen(
        argv,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
        cwd=home,
        start_new_session=True,
    )
    os.close(terminal)
    screen = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClientFailedError(
                    f"{argv[0]} did not finish within {timeout}s; last output:\n"
                    f"{bytes(screen[-3000:]).decode(errors='replace')}"
                )
            readable, _, _ = select.select([controller], [], [], min(left, 1.0))
            if readable:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: the terminal's last user closed it
                    chunk = b""
                if not chunk:
                    break
                screen += chunk
            elif process.poll() is not None:
                break
        returncode = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    if returncode != 0:
        raise ClientFailedError(
            f"{argv[0]} exited {returncode}; last output:\n"
            f"{bytes(screen[-3000:]).decode(errors='replace')}"
        )
    return bytes(screen)


def test_neomutt_copy_save_delete_flag_expunge(
    proxy: RunningProxy,
    upstream: DovecotInstance,
    mail_user: MailUser,
    compat: CompatScenario,
    tmp_path: Path,
) -> None:
    binary = require_binary("neomutt")
    compat.set(
        kind="mail client",
        client="NeoMutt",
        version=binary_version("neomutt", "-v", pattern=r"NeoMutt (\S+)"),
        scenario="copy, save (move) to folder, delete, flag, expunge",
    )
    for key in ("keepme", "copyme", "moveme", "deleteme", "flagme"):
        upstream.append(mail_user.name, make_message(key))
    muttrc = write_private(
        tmp_path / "muttrc",
        MUTTRC.format(
            user=mail_user.name,
            password=mail_user.password,
            port=proxy.port,
            keys=SCENARIO_KEYS,
        ),
    )

    run_in_terminal([binary, "-n", "-F", str(muttrc)], home=tmp_path)

    state = server_state(upstream, mail_user)
    assert sorted(state.keys("INBOX"), key=str) == ["copyme", "flagme", "keepme"]
    assert sorted(state.keys("Archive"), key=str) == ["copyme", "moveme"]
    assert state.ids()["copyme"] == 2
    assert all(state.ids()[key] == 1 for key in ("keepme", "moveme", "flagme"))
    assert "deleteme" not in state.ids()
    assert "\\Flagged" in state.flags("INBOX", "flagme")
    assert "\\Flagged" not in state.flags("INBOX", "keepme")
    assert not any("\\Deleted" in m.flags for m in state.folders["INBOX"])
