"""getmail6 retrieval into a maildir through the proxy, without and with delete.

How this works: getmail6 reads an rcfile (SimpleIMAPRetriever against the proxy, plain
IMAP; a Maildir destination in the test's tmp dir) and keeps its "oldmail" state in its
own getmail dir there. With `delete = false` it retrieves every message once and leaves
them on the server; a second run retrieves nothing. Then a new message arrives and a run
with `delete = true` retrieves just that one and deletes it, together with the ones it
retrieved before (getmail deletes every message it has retrieved once delete is on). After each step Dovecot, read
directly, must hold exactly the messages expected, and the maildir each message once.
getmail refuses to deliver as root, so under root (as CI runs) the maildir belongs to the
unprivileged account the Dovecot fixtures use and the destination's `user` names it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.conftest import CompatScenario
from tests.clients.support import (
    binary_version,
    maildir_messages,
    make_message,
    require_binary,
    run_client,
    server_state,
    write_private,
)
from tests.support.dovecot import DovecotInstance, MailUser, mail_account
from tests.support.proxy import RunningProxy

GETMAILRC = """\
[retriever]
type = SimpleIMAPRetriever
server = 127.0.0.1
port = {port}
username = {user}
password = {password}
mailboxes = ("INBOX",)
record_mailbox = false
timeout = 60

[destination]
type = Maildir
path = {maildir}/
{user_line}

[options]
verbose = 0
read_all = false
delete = {delete}
received = false
delivered_to = false
"""


@pytest.fixture
def delivery_maildir() -> Iterator[tuple[Path, str]]:
    """An empty maildir getmail may deliver to, and the destination's `user = ...` line."""
    root = Path(tempfile.mkdtemp(prefix="imap-proxy-getmail-"))
    root.chmod(0o755)
    maildir = root / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    user_line = ""
    if os.geteuid() == 0:
        uid, gid = mail_account()
        for path in (maildir, *maildir.iterdir()):
            os.chown(path, uid, gid)
        user_line = f"user = {pwd.getpwuid(uid).pw_name}"
    yield maildir, user_line
    shutil.rmtree(root, ignore_errors=True)


def test_getmail_without_and_with_delete(
    proxy: RunningProxy,
    upstream: DovecotInstance,
    mail_user: MailUser,
    compat: CompatScenario,
    delivery_maildir: tuple[Path, str],
    tmp_path: Path,
) -> None:
    binary = require_binary("getmail")
    compat.set(
        kind="mail client",
        client="getmail6",
        version=binary_version("getmail"),
        scenario="retrieve to maildir, keep then delete",
    )
    for key in ("first", "second"):
        upstream.append(mail_user.name, make_message(key))
    maildir, user_line = delivery_maildir
    state_dir = tmp_path / "getmail"
    state_dir.mkdir()

    def run(delete: bool) -> None:
        rcfile = write_private(
            state_dir / f"getmailrc-{str(delete).lower()}",
            GETMAILRC.format(
                port=proxy.port,
                user=mail_user.name,
                password=mail_user.password,
                maildir=maildir,
                user_line=user_line,
                delete=str(delete).lower(),
            ),
        )
        # the oldmail state file is named after server and user, so both rcfiles share it
        run_client([binary, f"--getmaildir={state_dir}", f"--rcfile={rcfile.name}"], home=tmp_path)

    run(delete=False)
    local = maildir_messages(maildir)
    assert sorted(local) == ["first", "second"]
    # getmail stores LF line ends and puts a Return-Path line on top
    stored = local["first"].read_bytes().removeprefix(b"Return-Path: <unknown>\n")
    assert stored == make_message("first").replace(b"\r\n", b"\n")
    assert sorted(server_state(upstream, mail_user).keys("INBOX"), key=str) == [
        "first",
        "second",
    ]

    run(delete=False)
    assert sorted(maildir_messages(maildir)) == ["first", "second"]

    upstream.append(mail_user.name, make_message("late"))
    run(delete=True)
    assert sorted(maildir_messages(maildir)) == ["first", "late", "second"]
    # getmail's delete also removes the messages it retrieved in earlier runs
    state = server_state(upstream, mail_user)
    assert state.keys("INBOX") == []
    assert not any(state.ids()), state.ids()
