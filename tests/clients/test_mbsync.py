"""mbsync (isync) two-way sync through the proxy, on both upstream profiles.

How this works: an mbsync config in the test's tmp dir pairs the proxy (far side, plain
IMAP, LOGIN) with a local maildir tree (near side), every folder, Create/Expunge/SyncState
both ways. The first run pulls the seeded mail down; then the test changes both sides --
a new local message, a locally deleted one, one moved locally from INBOX to a new folder
"Archive", a local flag, and on the server a new message and a \\Seen flag -- and runs
mbsync again. Dovecot, read directly, must then hold exactly the expected messages in the
expected folders with the expected flags, each once.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.clients.conftest import CompatScenario
from tests.clients.support import (
    TRASH_FOLDER,
    binary_version,
    deliver_to_maildir,
    maildir_flags,
    maildir_messages,
    make_message,
    require_binary,
    run_client,
    server_state,
    store_flags,
    write_private,
)
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.proxy import RunningProxy

MBSYNC_CONFIG = """\
IMAPAccount proxy
Host 127.0.0.1
Port {port}
User {user}
Pass {password}
SSLType None
AuthMechs LOGIN
Timeout 60

IMAPStore far
Account proxy

MaildirStore near
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel everything
Far :far:
Near :near:
Patterns *
Create Both
Remove None
Expunge Both
SyncState *
"""
_UID_IN_NAME = re.compile(r",U=\d+")
_TUID = re.compile(rb"^X-TUID: \S+\r\n", re.MULTILINE)


def run_mbsync(binary: str, config: Path, home: Path) -> None:
    run_client([binary, "-c", str(config), "--all", "--quiet"], home=home)


def test_mbsync_two_way_sync(
    proxy: RunningProxy,
    upstream: DovecotInstance,
    mail_user: MailUser,
    compat: CompatScenario,
    tmp_path: Path,
) -> None:
    binary = require_binary("mbsync")
    compat.set(
        kind="mail client",
        client="mbsync (isync)",
        version=binary_version("mbsync"),
        scenario="two-way sync: new, deleted, moved, flagged",
    )
    for key in ("keep", "gone", "moves", "flagme"):
        upstream.append(mail_user.name, make_message(key))
    upstream.append(mail_user.name, make_message("sent1"), mailbox="Sent")
    maildir = tmp_path / "Mail"
    maildir.mkdir()
    config = write_private(
        tmp_path / "mbsyncrc",
        MBSYNC_CONFIG.format(
            port=proxy.port, user=mail_user.name, password=mail_user.password, maildir=maildir
        ),
    )

    run_mbsync(binary, config, tmp_path)
    local_inbox = maildir_messages(maildir / "INBOX")
    assert sorted(local_inbox) == ["flagme", "gone", "keep", "moves"]
    assert sorted(maildir_messages(maildir / "Sent")) == ["sent1"]
    assert (maildir / TRASH_FOLDER[upstream.profile]).is_dir()

    # Local changes: one new, one deleted, one moved to a new folder, one flagged.
    deliver_to_maildir(maildir / "INBOX", make_message("local-new"), "local-new")
    local_inbox["gone"].unlink()
    moved = local_inbox["moves"]
    archive = maildir / "Archive"
    deliver_to_maildir(archive, b"", "placeholder").unlink()  # creates cur/new/tmp
    moved.rename(archive / "cur" / _UID_IN_NAME.sub("", moved.name))
    flagged = local_inbox["flagme"]
    flagged.rename(flagged.with_name(flagged.name.split(":2,")[0] + ":2,F"))
    # Server changes: one new message, one marked seen.
    upstream.append(mail_user.name, make_message("server-new"))
    store_flags(upstream, mail_user, "INBOX", "keep", "\\Seen")

    run_mbsync(binary, config, tmp_path)

    state = server_state(upstream, mail_user)
    assert sorted(state.keys("INBOX"), key=str) == ["flagme", "keep", "local-new", "server-new"]
    assert state.keys("Archive") == ["moves"]
    assert state.keys("Sent") == ["sent1"]
    assert all(count == 1 for count in state.ids().values()), state.ids()
    assert "gone" not in state.ids()
    assert "\\Flagged" in state.flags("INBOX", "flagme")
    assert "\\Seen" in state.flags("INBOX", "keep")
    # mbsync 1.4 adds an X-TUID header to what it uploads, to find the new message's UID.
    uploaded = [_TUID.sub(b"", m.body) for m in state.folders["INBOX"] if m.key == "local-new"]
    assert uploaded == [make_message("local-new")]
    local_inbox = maildir_messages(maildir / "INBOX")
    assert sorted(local_inbox) == ["flagme", "keep", "local-new", "server-new"]
    assert "S" in maildir_flags(local_inbox["keep"])
    assert sorted(maildir_messages(archive)) == ["moves"]
