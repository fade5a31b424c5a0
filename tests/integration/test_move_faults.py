"""The upstream connection cut at each step of a MOVE emulation: no message is ever lost.

A `FaultRelay` between the proxy and Dovecot (legacy profile) cuts the connection right
when the proxy sends one of the emulation's commands (the FETCH of the UIDs, UID COPY,
UID STORE, UID EXPUNGE), either after passing that command on (Dovecot may still run it) or before.
The client must get a clear `* BYE`, the emulation must be reported as failed, and on
Dovecot, checked directly once the session's process is gone, every message must be in
the source or the target mailbox, and another session's \\Deleted message still there.
"""

from __future__ import annotations

import time

import pytest

from imap_proxy.config import ProxyConfig
from imap_proxy.session import events as ev
from tests.integration.test_move_emulation import NewUser
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.fault_relay import FaultRelay
from tests.support.mailstate import flags_by_subject, seed, subjects
from tests.support.proxy import running_proxy

STEPS = [
    (b"MOVE 1:2 Sent", rb"^ipx\d+ FETCH "),
    (b"UID MOVE 1:2 Sent", rb"^ipx\d+ UID COPY "),
    (b"UID MOVE 1:2 Sent", rb"^ipx\d+ UID STORE "),
    (b"UID MOVE 1:2 Sent", rb"^ipx\d+ UID EXPUNGE "),
]


def wait_for_sessions_to_end(upstream: DovecotInstance, user: MailUser) -> None:
    deadline = time.monotonic() + 15
    while upstream.user_process_ids(user.name):
        assert time.monotonic() < deadline, "Dovecot kept the cut session's process"
        time.sleep(0.05)


@pytest.mark.parametrize("forwarded", [True, False], ids=["sent", "not-sent"])
@pytest.mark.parametrize(
    ("command", "cut_on"), STEPS, ids=["fetch-uids", "copy", "store", "expunge"]
)
def test_upstream_cut_mid_move_loses_no_message(
    dovecot_legacy: DovecotInstance,
    fresh_mail_user: NewUser,
    command: bytes,
    cut_on: bytes,
    forwarded: bool,
) -> None:
    user = fresh_mail_user(dovecot_legacy)
    seed(dovecot_legacy, user, count=4, deleted=(4,))
    observed: list[ev.Event] = []
    with FaultRelay(
        (dovecot_legacy.host, dovecot_legacy.port), cut_on, forward_cut_line=forwarded
    ) as relay:
        config = ProxyConfig.model_validate(
            {"listen": ["127.0.0.1:0"], "upstream": {"address": f"127.0.0.1:{relay.port}"}}
        )
        with running_proxy(config, observer=observed.append) as proxy, proxy.raw() as raw:
            raw.read_line()
            raw.send(b"L LOGIN %s %s\r\n" % (user.name.encode(), user.password.encode()))
            raw.read_until(b"L OK")
            raw.read_line()
            raw.send(b"S SELECT INBOX\r\n")
            raw.read_until(b"S OK")
            raw.read_line()
            raw.send(b"a " + command + b"\r\n")
            rest = raw.read_all()
        assert relay.cut.is_set()
    name = command.split(b" 1:2")[0]
    assert rest == b"* BYE [UNAVAILABLE] Upstream server closed the connection during " + (
        name + b"\r\n"
    )
    assert ev.EmulationFinished("move-emulation", "move", "failed") in observed
    wait_for_sessions_to_end(dovecot_legacy, user)
    inbox = subjects(dovecot_legacy, user, "INBOX")
    sent = subjects(dovecot_legacy, user, "Sent")
    assert set(inbox) | set(sent) == {"m1", "m2", "m3", "m4"}, (inbox, sent)
    assert "m3" in inbox and "m4" in inbox  # not moved; m4 is another session's \Deleted
    assert "\\Deleted" in flags_by_subject(dovecot_legacy, user, "INBOX")["m4"]
    if (cut_on.endswith(b"COPY ") and not forwarded) or cut_on.endswith(b"FETCH "):
        assert sent == []  # nothing was copied, so nothing may have been flagged
        assert all(
            "\\Deleted" not in flags
            for subject, flags in flags_by_subject(dovecot_legacy, user, "INBOX").items()
            if subject != "m4"
        )
