"""fetchmail retrieval through the proxy (keep, then flush), on both upstream profiles.

How this works: fetchmail polls the proxy over plain IMAP (`--sslproto ''` turns off its
opportunistic STARTTLS) with an rcfile of mode 0600, and hands every message to an MDA
script that writes it into a directory of its own, one file per delivery -- so a message
fetched twice shows up as two files. First `--keep` twice: every message delivered once,
all still on the server and marked \\Seen, the second poll finds nothing new (exit 1).
Then a new message arrives and fetchmail runs with `--flush` and without `--keep`: it
delivers only the new one and deletes everything from the server, which Dovecot, read
directly, must confirm.
"""

from __future__ import annotations

from pathlib import Path

from tests.clients.conftest import CompatScenario
from tests.clients.support import (
    binary_version,
    make_message,
    message_key,
    require_binary,
    run_client,
    server_state,
    write_private,
)
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.proxy import RunningProxy

FETCHMAILRC = """\
set no bouncemail
poll 127.0.0.1 service {port} protocol IMAP auth password timeout 60
    user "{user}" there with password "{password}" is "root" here
"""
MDA_SCRIPT = """\
#!/bin/sh
# one file per delivery, never overwritten
exec cat > "$(mktemp "{outbox}/msg.XXXXXXXX")"
"""
NO_MAIL = 1  # fetchmail's exit status when there was nothing to fetch


def delivered(outbox: Path) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    for path in sorted(outbox.iterdir()):
        data = path.read_bytes()
        key = message_key(data)
        assert key is not None, data
        found.setdefault(key, []).append(data)
    return found


def test_fetchmail_keep_then_flush(
    proxy: RunningProxy,
    upstream: DovecotInstance,
    mail_user: MailUser,
    compat: CompatScenario,
    tmp_path: Path,
) -> None:
    binary = require_binary("fetchmail")
    compat.set(
        kind="mail client",
        client="fetchmail",
        version=binary_version("fetchmail", "--version", pattern=r"release (\S+?)\+"),
        scenario="retrieve with --keep, then --flush",
    )
    keys = ["first", "second", "third"]
    for key in keys:
        upstream.append(mail_user.name, make_message(key))
    outbox = tmp_path / "delivered"
    outbox.mkdir()
    mda = tmp_path / "mda.sh"
    mda.write_text(MDA_SCRIPT.format(outbox=outbox))
    mda.chmod(0o700)
    rcfile = write_private(
        tmp_path / "fetchmailrc",
        FETCHMAILRC.format(port=proxy.port, user=mail_user.name, password=mail_user.password),
    )
    base = [binary, "-f", str(rcfile), "--nosyslog", "--sslproto", "", "--mda", str(mda)]

    run_client([*base, "--keep"], home=tmp_path)
    mail = delivered(outbox)
    assert sorted(mail) == sorted(keys)
    for key in keys:
        assert len(mail[key]) == 1, f"{key} delivered {len(mail[key])} times"
        expected = make_message(key).replace(b"\r\n", b"\n")
        assert mail[key][0].endswith(expected), mail[key][0]
    state = server_state(upstream, mail_user)
    assert sorted(state.keys("INBOX"), key=str) == sorted(keys)
    assert all("\\Seen" in state.flags("INBOX", key) for key in keys)

    run_client([*base, "--keep"], home=tmp_path, ok_codes=(NO_MAIL,))
    assert sum(len(copies) for copies in delivered(outbox).values()) == len(keys)

    upstream.append(mail_user.name, make_message("late"))
    run_client([*base, "--flush"], home=tmp_path)
    mail = delivered(outbox)
    assert sorted(mail) == sorted([*keys, "late"])
    assert all(len(copies) == 1 for copies in mail.values()), mail
    state = server_state(upstream, mail_user)
    assert state.keys("INBOX") == []
    assert not any(state.ids()), state.ids()
