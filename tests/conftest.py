"""Shared fixtures: the session's test CA and the private Dovecot upstreams.

How this works: session-scoped fixtures are created on first use, so a run that needs no
Dovecot starts none. `dovecot_modern`, `dovecot_legacy` and `dovecot_legacy_noliteralplus`
each start one private instance (tests/support/dovecot.py) and stop it, process group and
all, at session end. Where Dovecot cannot run (not installed, not root) they skip with the
reason -- except under CI=true, where that is a failure, never a silent skip. Tests that
use them get the `dovecot` marker, so `-m "not dovecot"` leaves them out.
Session instances are shared: a test that writes mail uses `fresh_mail_user` (a new,
empty user, deleted afterwards) or `DovecotInstance.reset_user`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import trustme

from tests.support.dovecot import (
    DovecotInstance,
    DovecotUnavailableError,
    MailUser,
    require_dovecot,
    start_dovecot,
)
from tests.support.imap4d import Imap4dInstance, imap4d_unavailable_reason, start_imap4d
from tests.support.tls import TlsFiles, new_ca, write_tls_files

DOVECOT_FIXTURES = frozenset(
    {
        "dovecot_modern",
        "dovecot_legacy",
        "dovecot_legacy_noliteralplus",
        "dovecot_rev2only",
        "dovecot_legacy_nouidplus",
        "dovecot_legacy_noidle",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if DOVECOT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.dovecot)


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """The session's throw-away certificate authority."""
    return new_ca()


@pytest.fixture(scope="session")
def tls_files(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """CA file, server cert/key for 127.0.0.1 and localhost, and SSL contexts."""
    return write_tls_files(tls_ca, tmp_path_factory.mktemp("tls"))


def _running_dovecot(profile: str, tls: TlsFiles) -> Iterator[DovecotInstance]:
    require_dovecot()
    try:
        instance = start_dovecot(profile, tls)
    except DovecotUnavailableError as error:
        pytest.skip(str(error))
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def dovecot_modern(tls_files: TlsFiles) -> Iterator[DovecotInstance]:
    yield from _running_dovecot("modern", tls_files)


@pytest.fixture(scope="session")
def dovecot_legacy(tls_files: TlsFiles) -> Iterator[DovecotInstance]:
    yield from _running_dovecot("legacy", tls_files)


@pytest.fixture(scope="session")
def dovecot_legacy_noliteralplus(tls_files: TlsFiles) -> Iterator[DovecotInstance]:
    yield from _running_dovecot("legacy_noliteralplus", tls_files)


@pytest.fixture(scope="session")
def dovecot_rev2only(tls_files: TlsFiles) -> Iterator[DovecotInstance]:
    """Announces IMAP4rev2 and not IMAP4rev1 (it still speaks rev1: it is Dovecot 2.3)."""
    yield from _running_dovecot("rev2only", tls_files)


@pytest.fixture(scope="session")
def dovecot_legacy_nouidplus(tls_files: TlsFiles) -> Iterator[DovecotInstance]:
    """Announces neither MOVE nor UIDPLUS (the MOVE emulation's modes without UIDPLUS)."""
    yield from _running_dovecot("legacy_nouidplus", tls_files)


@pytest.fixture(scope="session")
def dovecot_legacy_noidle(tls_files: TlsFiles) -> Iterator[DovecotInstance]:
    """Announces no IDLE (the IDLE bridge's polling mode); it still executes NOOP."""
    yield from _running_dovecot("legacy_noidle", tls_files)


@pytest.fixture
def imap4d() -> Iterator[Imap4dInstance]:
    """A GNU mailutils imap4d of its own (no MOVE, no UIDPLUS), PREAUTH, empty mail."""
    reason = imap4d_unavailable_reason()
    if reason is not None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"CI must run the imap4d tests: {reason}", pytrace=False)
        pytest.skip(reason)
    instance = start_imap4d()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def fresh_mail_user() -> Iterator[Callable[[DovecotInstance], MailUser]]:
    """`fresh_mail_user(instance)` -> a new user with empty mailboxes on that instance.

    The users are removed (sessions killed, mail deleted) when the test ends.
    """
    created: list[tuple[DovecotInstance, MailUser]] = []

    def make(instance: DovecotInstance) -> MailUser:
        user = instance.add_user()
        created.append((instance, user))
        return user

    yield make
    for instance, user in created:
        if instance.running:
            instance.remove_user(user.name)
