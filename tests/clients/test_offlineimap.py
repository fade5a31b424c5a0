"""offlineimap3 sync through the proxy, on both upstream profiles.

How this works: an offlineimap config in the test's tmp dir pairs the proxy (remote, plain
IMAP) with a local maildir tree; offlineimap3 sends `ID` before logging in when the server
advertises it, which the proxy always does (forwarded to the modern Dovecot, answered by
the proxy for the legacy one). The first run (`-o -u quiet`) pulls the seeded mail; the
test then deletes one message and flags another locally, writes a new local message into
another folder, and adds one on the server; the second run must leave Dovecot, read
directly, with exactly the expected messages, folders and flags.
"""

from __future__ import annotations

from pathlib import Path

from tests.clients.conftest import CompatScenario
from tests.clients.support import (
    binary_version,
    deliver_to_maildir,
    maildir_flags,
    maildir_messages,
    make_message,
    require_binary,
    run_client,
    server_state,
    write_private,
)
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.proxy import RunningProxy

OFFLINEIMAP_CONFIG = """\
[general]
accounts = proxy
metadata = {home}/metadata
ui = quiet

[Account proxy]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {maildir}
sep = .

[Repository remote]
type = IMAP
remotehost = 127.0.0.1
remoteport = {port}
remoteuser = {user}
remotepass = {password}
ssl = no
starttls = no
timeout = 60
holdconnectionopen = no
"""


def run_offlineimap(binary: str, config: Path, home: Path) -> None:
    run_client([binary, "-c", str(config), "-o", "-u", "quiet"], home=home)


def test_offlineimap_sync(
    proxy: RunningProxy,
    upstream: DovecotInstance,
    mail_user: MailUser,
    compat: CompatScenario,
    tmp_path: Path,
) -> None:
    binary = require_binary("offlineimap")
    compat.set(
        kind="mail client",
        client="offlineimap3",
        version=binary_version("offlineimap"),
        scenario="sync both ways: new, deleted, flagged",
    )
    for key in ("keep", "gone", "flagme"):
        upstream.append(mail_user.name, make_message(key))
    upstream.append(mail_user.name, make_message("draft1"), mailbox="Drafts")
    maildir = tmp_path / "Mail"
    maildir.mkdir()
    config = write_private(
        tmp_path / "offlineimaprc",
        OFFLINEIMAP_CONFIG.format(
            home=tmp_path,
            maildir=maildir,
            port=proxy.port,
            user=mail_user.name,
            password=mail_user.password,
        ),
    )

    run_offlineimap(binary, config, tmp_path)
    local_inbox = maildir_messages(maildir / "INBOX")
    assert sorted(local_inbox) == ["flagme", "gone", "keep"]
    assert sorted(maildir_messages(maildir / "Drafts")) == ["draft1"]

    local_inbox["gone"].unlink()
    flagged = local_inbox["flagme"]
    flagged.rename(flagged.with_name(flagged.name.split(":2,")[0] + ":2,FS"))
    deliver_to_maildir(maildir / "Drafts", make_message("local-draft"), "local-draft")
    upstream.append(mail_user.name, make_message("server-new"))

    run_offlineimap(binary, config, tmp_path)

    state = server_state(upstream, mail_user)
    assert sorted(state.keys("INBOX"), key=str) == ["flagme", "keep", "server-new"]
    assert sorted(state.keys("Drafts"), key=str) == ["draft1", "local-draft"]
    assert all(count == 1 for count in state.ids().values()), state.ids()
    assert "gone" not in state.ids()
    assert {"\\Flagged", "\\Seen"} <= state.flags("INBOX", "flagme")
    assert "\\Flagged" not in state.flags("INBOX", "keep")
    assert sorted(maildir_messages(maildir / "INBOX")) == ["flagme", "keep", "server-new"]
    assert maildir_flags(maildir_messages(maildir / "INBOX")["flagme"]) == "FS"
