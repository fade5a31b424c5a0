"""Numbered test messages in a Dovecot mailbox, and what a mailbox holds, read directly.

How this works: `seed()` appends m1..mN to INBOX through Dovecot (some flagged \\Deleted,
as another device would leave them); `subjects()` and `flags_by_subject()` read a mailbox
straight from Dovecot, bypassing the proxy, so a test checks where each message really is.
"""

from __future__ import annotations

import re

from tests.support.dovecot import DovecotInstance, MailUser


def message(subject: str) -> bytes:
    return f"From: a@example.org\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n".encode()


def seed(
    upstream: DovecotInstance, user: MailUser, count: int, deleted: tuple[int, ...] = ()
) -> None:
    """`count` messages m1..mN in INBOX; those in `deleted` flagged \\Deleted by another
    session."""
    for number in range(1, count + 1):
        flags = "\\Deleted" if number in deleted else ""
        upstream.append(user.name, message(f"m{number}"), "INBOX", flags)


def subjects(upstream: DovecotInstance, user: MailUser, mailbox: str) -> list[str]:
    found = []
    for body in upstream.mailbox_messages(user.name, mailbox):
        match = re.search(rb"Subject: (\S+)", body)
        assert match is not None
        found.append(match.group(1).decode())
    return found


def flags_by_subject(upstream: DovecotInstance, user: MailUser, mailbox: str) -> dict[str, str]:
    direct = upstream.imap(user.name)
    try:
        direct.select(mailbox, readonly=True)
        _typ, data = direct.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        out: dict[str, str] = {}
        for item in data:
            if isinstance(item, tuple):
                flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
                subject = re.search(rb"Subject: (\S+)", item[1])
                assert flags is not None and subject is not None
                out[subject.group(1).decode()] = flags.group(1).decode()
        return out
    finally:
        direct.logout()
