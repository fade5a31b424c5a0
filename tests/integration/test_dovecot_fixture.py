"""The private-Dovecot fixtures, proved with direct imaplib sessions (no proxy involved).

How this works: each test talks straight to a fixture instance and checks one promise the
rest of the suite relies on -- capabilities per profile before and after login, TLS with
the session CA, SPECIAL-USE present/absent, the legacy "Deleted" folder, fresh users that
see no one else's mail, kill_user_processes really ending a session, and stop() leaving no
process behind. A few tests pin what the legacy profiles still *accept* although they do
not advertise it, because proxy tests must not assume the server enforces the trimmed list.
"""

from __future__ import annotations

import contextlib
import imaplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.support import dovecot as dovecot_support
from tests.support.dovecot import (
    LEGACY_CAPABILITY,
    LEGACY_NOLITERALPLUS_CAPABILITY,
    DovecotInstance,
    DovecotStartError,
    MailUser,
    reap_orphaned_instances,
    require_dovecot,
    start_dovecot,
)
from tests.support.processes import group_members, list_processes
from tests.support.tls import TlsFiles, client_ssl_context, write_tls_files

NewUser = Callable[[DovecotInstance], MailUser]
SPECIAL_USE = {"Trash": b"\\Trash", "Sent": b"\\Sent", "Drafts": b"\\Drafts", "Junk": b"\\Junk"}
MESSAGE = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: %s\r\n\r\nbody %s\r\n"


def greeting_capabilities(greeting: bytes) -> list[str]:
    assert greeting.startswith(b"* OK [CAPABILITY "), greeting
    return greeting[len(b"* OK [CAPABILITY ") :].split(b"]", 1)[0].decode().split()


def post_login_capabilities(connection: imaplib.IMAP4) -> list[str]:
    status, data = connection.capability()
    assert status == "OK"
    line = data[-1]
    assert isinstance(line, bytes)
    return line.decode().split()


def list_lines(connection: imaplib.IMAP4) -> dict[str, bytes]:
    """LIST "" * as {mailbox name: attribute list}."""
    status, data = connection.list()
    assert status == "OK"
    result: dict[str, bytes] = {}
    for line in data:
        assert isinstance(line, bytes)
        attributes, _, name = line.rpartition(b" ")
        result[name.strip(b'"').decode()] = attributes
    return result


@contextlib.contextmanager
def raw_session(instance: DovecotInstance) -> Iterator[tuple[socket.socket, Callable[[], bytes]]]:
    sock = socket.create_connection((instance.host, instance.port), timeout=5)
    reader = sock.makefile("rb")
    try:
        yield sock, reader.readline
    finally:
        reader.close()
        sock.close()


def exchange(sock: socket.socket, readline: Callable[[], bytes], command: bytes) -> list[bytes]:
    """Send `command` (tag first) and read up to and including its tagged response."""
    tag = command.split(b" ", 1)[0] + b" "
    sock.sendall(command)
    lines = [readline()]
    while not lines[-1].startswith(tag):
        assert lines[-1], "connection closed"
        lines.append(readline())
    return lines


# -- modern ----------------------------------------------------------------------------
def test_dovecot_tests_get_the_marker(
    dovecot_modern: DovecotInstance, request: pytest.FixtureRequest
) -> None:
    assert request.node.get_closest_marker("dovecot") is not None


def test_modern_greeting_advertises_starttls_and_id(dovecot_modern: DovecotInstance) -> None:
    capabilities = greeting_capabilities(dovecot_modern.greeting())
    for expected in ("IMAP4rev1", "STARTTLS", "ID", "IDLE", "LITERAL+", "AUTH=PLAIN"):
        assert expected in capabilities
    assert "LOGINDISABLED" not in capabilities  # plaintext login allowed on loopback


def test_modern_post_login_capabilities(dovecot_modern: DovecotInstance) -> None:
    connection = dovecot_modern.imap("alice")
    try:
        capabilities = post_login_capabilities(connection)
    finally:
        connection.logout()
    for expected in ("IMAP4rev1", "MOVE", "SPECIAL-USE", "UIDPLUS", "IDLE", "ID", "NAMESPACE"):
        assert expected in capabilities


def test_modern_special_use_folders_exist(dovecot_modern: DovecotInstance) -> None:
    connection = dovecot_modern.imap("bob")
    try:
        folders = list_lines(connection)
    finally:
        connection.logout()
    for name, flag in SPECIAL_USE.items():
        assert flag in folders[name], (name, folders)
    assert "INBOX" in folders


def test_modern_implicit_tls_verifies_against_test_ca(dovecot_modern: DovecotInstance) -> None:
    connection = dovecot_modern.imap("alice", tls=True)
    try:
        assert isinstance(connection.sock, ssl.SSLSocket)
        assert connection.sock.version() in {"TLSv1.2", "TLSv1.3"}
        assert connection.noop()[0] == "OK"
    finally:
        connection.logout()


def test_modern_tls_port_is_rejected_without_the_ca(
    dovecot_modern: DovecotInstance, tmp_path: Path
) -> None:
    other = write_tls_files(trustme.CA(), tmp_path)
    assert dovecot_modern.tls_port is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(
            dovecot_modern.host,
            dovecot_modern.tls_port,
            ssl_context=other.client_context(),
            timeout=5,
        )


def test_modern_starttls_then_login(dovecot_modern: DovecotInstance) -> None:
    connection = dovecot_modern.connect()
    try:
        status, _ = connection.starttls(ssl_context=dovecot_modern.ssl_context())
        assert status == "OK"
        assert isinstance(connection.sock, ssl.SSLSocket)
        assert "STARTTLS" not in connection.capabilities
        status, _ = connection.login("alice", dovecot_modern.users["alice"])
        assert status == "OK"
    finally:
        connection.logout()


def test_tls_files_server_context_is_trusted_by_client_context(tls_files: TlsFiles) -> None:
    assert tls_files.key_file.stat().st_mode & 0o077 == 0
    server_context = tls_files.server_context()
    client_context = client_ssl_context(tls_files.ca_file)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname(), timeout=5)
        accepted, _ = listener.accept()
        client.setblocking(False)
        accepted.setblocking(False)
        tls_client = client_context.wrap_socket(
            client, server_hostname="localhost", do_handshake_on_connect=False
        )
        tls_server = server_context.wrap_socket(
            accepted, server_side=True, do_handshake_on_connect=False
        )
        done = {"client": False, "server": False}
        deadline = time.monotonic() + 5
        while not all(done.values()) and time.monotonic() < deadline:
            for name, end in (("client", tls_client), ("server", tls_server)):
                if not done[name]:
                    try:
                        end.do_handshake()
                        done[name] = True
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
        peer = tls_client.getpeercert()
        tls_client.close()
        tls_server.close()
    assert all(done.values())
    assert peer is not None
    assert ("IP Address", "127.0.0.1") in peer["subjectAltName"]


# -- legacy ----------------------------------------------------------------------------
LEGACY_PROFILES = [
    pytest.param("dovecot_legacy", LEGACY_CAPABILITY, id="legacy"),
    pytest.param(
        "dovecot_legacy_noliteralplus", LEGACY_NOLITERALPLUS_CAPABILITY, id="noliteralplus"
    ),
]


@pytest.mark.dovecot
@pytest.mark.parametrize(("fixture_name", "capability"), LEGACY_PROFILES)
def test_legacy_capabilities_before_and_after_login(
    fixture_name: str, capability: str, request: pytest.FixtureRequest
) -> None:
    instance: DovecotInstance = request.getfixturevalue(fixture_name)
    assert instance.tls_port is None
    # Pre-login: imap-login uses imap_capability too, and appends only the SASL
    # mechanisms (no STARTTLS: ssl = no).
    greeting = greeting_capabilities(instance.greeting())
    assert greeting == [*capability.split(), "AUTH=PLAIN", "AUTH=LOGIN"]
    connection = instance.imap("alice")
    try:
        after = post_login_capabilities(connection)
    finally:
        connection.logout()
    assert after == capability.split()
    for absent in ("MOVE", "SPECIAL-USE", "ID", "STARTTLS", "IMAP4rev2"):
        assert absent not in greeting
        assert absent not in after


@pytest.mark.dovecot
@pytest.mark.parametrize(("fixture_name", "capability"), LEGACY_PROFILES)
def test_legacy_login_tagged_ok_carries_trimmed_list(
    fixture_name: str, capability: str, request: pytest.FixtureRequest
) -> None:
    instance: DovecotInstance = request.getfixturevalue(fixture_name)
    with raw_session(instance) as (sock, readline):
        readline()
        reply = exchange(sock, readline, b"a LOGIN alice alice-pass-1\r\n")
        assert reply[-1].startswith(b"a OK [CAPABILITY " + capability.encode() + b"]")


def test_legacy_has_deleted_folder_and_no_special_use(dovecot_legacy: DovecotInstance) -> None:
    connection = dovecot_legacy.imap("alice")
    try:
        folders = list_lines(connection)
    finally:
        connection.logout()
    assert {"INBOX", "Deleted", "Sent", "Drafts", "Junk"} <= set(folders)
    assert "Trash" not in folders
    for attributes in folders.values():
        for flag in SPECIAL_USE.values():
            assert flag not in attributes


def test_legacy_still_accepts_what_it_does_not_advertise(
    dovecot_legacy_noliteralplus: DovecotInstance,
) -> None:
    """imap_capability trims the advertisement only: a proxy test must not rely on the
    legacy upstream refusing MOVE, ID or non-synchronizing literals."""
    with raw_session(dovecot_legacy_noliteralplus) as (sock, readline):
        readline()
        # {n+} without LITERAL+: Dovecot reads the literal without sending "+".
        login = exchange(sock, readline, b"a LOGIN alice {12+}\r\nalice-pass-1\r\n")
        assert login[-1].startswith(b"a OK")
        assert exchange(sock, readline, b"b SELECT INBOX\r\n")[-1].startswith(b"b OK")
        move = exchange(sock, readline, b"c MOVE 1 Deleted\r\n")
        assert b"Unknown command" not in move[-1]
        identity = exchange(sock, readline, b"d ID NIL\r\n")
        assert identity[0].startswith(b"* ID (")
        assert identity[-1].startswith(b"d OK")


# -- users, mail and processes ---------------------------------------------------------
def test_fresh_users_are_empty_and_isolated(
    dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    first, second = fresh_mail_user(dovecot_modern), fresh_mail_user(dovecot_modern)
    assert first.name != second.name
    assert dovecot_modern.mailbox_messages(first.name) == []
    uid = dovecot_modern.append(first.name, MESSAGE % (b"one", b"one"))
    dovecot_modern.append(first.name, MESSAGE % (b"two", b"two"), mailbox="Trash")
    assert uid == 1
    assert dovecot_modern.mailbox_messages(first.name) == [MESSAGE % (b"one", b"one")]
    assert dovecot_modern.mailbox_messages(first.name, "Trash") == [MESSAGE % (b"two", b"two")]
    assert dovecot_modern.mailbox_messages(second.name) == []
    assert dovecot_modern.mailbox_messages(second.name, "Trash") == []


def test_mailbox_messages_returns_uid_order_and_full_bytes(
    dovecot_legacy: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_legacy)
    bodies = [MESSAGE % (b"n%d" % n, b"x" * (n * 1000)) for n in range(3)]
    for body in bodies:
        dovecot_legacy.append(user.name, body, mailbox="Deleted", flags="\\Seen")
    assert dovecot_legacy.mailbox_messages(user.name, "Deleted") == bodies


def test_reset_user_empties_mailboxes(
    dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_modern)
    dovecot_modern.append(user.name, MESSAGE % (b"r", b"r"))
    dovecot_modern.reset_user(user.name)
    assert dovecot_modern.mailbox_messages(user.name) == []
    connection = dovecot_modern.imap(user.name)
    try:
        assert "Trash" in list_lines(connection)  # auto-created again
    finally:
        connection.logout()


def test_removed_user_is_not_reused(dovecot_modern: DovecotInstance) -> None:
    user = dovecot_modern.add_user()
    dovecot_modern.append(user.name, MESSAGE % (b"gone", b"gone"))
    dovecot_modern.remove_user(user.name)
    assert user.name not in dovecot_modern.users
    assert not (dovecot_modern.mail_root / user.name).exists()
    assert all(spare.name != user.name for spare in dovecot_modern.spare_users)


def test_kill_user_processes_ends_a_logged_in_session(
    dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_modern)
    bystander = fresh_mail_user(dovecot_modern)
    victim = dovecot_modern.imap(user.name)
    survivor = dovecot_modern.imap(bystander.name)
    try:
        victim.select("INBOX")
        survivor.select("INBOX")
        killed = dovecot_modern.kill_user_processes(user.name)
        assert len(killed) == 1
        live = {info.pid for info in list_processes()}
        assert killed[0] not in live
        with pytest.raises(imaplib.IMAP4.abort):
            victim.noop()
        assert survivor.noop()[0] == "OK"
        assert dovecot_modern.user_process_ids(user.name) == []
        assert dovecot_modern.user_process_ids(bystander.name) != []
        again = dovecot_modern.imap(user.name)  # the user can log in again
        assert again.noop()[0] == "OK"
        again.logout()
    finally:
        victim.shutdown()
        survivor.logout()
    assert "killed with signal 9" in dovecot_modern.log_text()


# -- lifecycle -------------------------------------------------------------------------
@pytest.mark.dovecot
def test_stop_leaves_no_process_and_no_files(tls_files: TlsFiles) -> None:
    require_dovecot()
    started = time.monotonic()
    instance = start_dovecot("modern", tls_files)
    startup = time.monotonic() - started
    assert startup < 5, f"Dovecot took {startup:.2f}s to start"  # typically ~0.05 s
    session = instance.imap("alice")
    session.select("INBOX")
    pids = instance.process_ids()
    assert instance.master_pid in pids
    assert instance.user_process_ids("alice")
    assert len(pids) >= 4  # master, log, config, anvil, auth, imap, ...
    instance.stop()
    session.shutdown()
    live = {info.pid for info in list_processes()}
    assert not set(pids) & live
    assert not instance.root_dir.exists()
    with pytest.raises(OSError):
        socket.create_connection((instance.host, instance.port), timeout=1).close()


@pytest.mark.dovecot
def test_start_retries_when_a_port_is_taken(
    tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_dovecot()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        taken = squatter.getsockname()[1]
        real_free_port = dovecot_support.free_port
        handed_out: list[int] = []

        def first_one_taken() -> int:
            port = taken if not handed_out else real_free_port()
            handed_out.append(port)
            return port

        monkeypatch.setattr(dovecot_support, "free_port", first_one_taken)
        instance = start_dovecot("legacy", tls_files)
        try:
            assert handed_out[0] == taken
            assert instance.port != taken
            assert instance.greeting().startswith(b"* OK")
        finally:
            instance.stop()


@pytest.mark.dovecot
def test_start_failure_reports_the_dovecot_log(
    tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_dovecot()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        taken = squatter.getsockname()[1]
        monkeypatch.setattr(dovecot_support, "free_port", lambda: taken)
        monkeypatch.setattr(dovecot_support, "START_ATTEMPTS", 2)  # ~2 s per attempt
        before = {info.pid for info in list_processes()}
        with pytest.raises(DovecotStartError) as raised:
            start_dovecot("legacy", tls_files)
    message = str(raised.value)
    assert "Address already in use" in message
    assert "master stderr" in message
    after = {info.pid for info in list_processes()}
    assert not any(
        b"dovecot" in info.title for info in list_processes() if info.pid in after - before
    )


@pytest.mark.dovecot
def test_instances_of_a_killed_test_run_are_reaped() -> None:
    require_dovecot()
    script = (
        "import time\n"
        "from tests.support.dovecot import start_dovecot\n"
        "instance = start_dovecot('legacy')\n"
        "print(instance.root_dir, instance.master_pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
    )
    try:
        assert owner.stdout is not None
        root_text, master_text = owner.stdout.readline().decode().split()
    finally:
        owner.kill()  # SIGKILL: no teardown, no atexit -- the instance is orphaned
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
    root_dir, master = Path(root_text), int(master_text)
    members = group_members(master)
    assert master in members
    reaped = reap_orphaned_instances()
    assert root_dir in reaped
    assert not {info.pid for info in list_processes()} & set(members)
    assert not root_dir.exists()
