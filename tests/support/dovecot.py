"""A private Dovecot per test session: the real upstream for integration tests.

How this works: `start_dovecot(profile, ...)` makes a fresh directory under /tmp, renders
the config templates in tests/fixtures/dovecot/ (common.conf + modern.conf or legacy.conf)
with free loopback ports, its own base_dir/state_dir/log file, a passwd-file of test users
and a maildir root, and runs `/usr/sbin/dovecot -F -c <that config>` in a new session
(so the master's pid is the process group of every Dovecot process it forks). It waits
until each port accepts a connection and sends its `* OK` greeting (over TLS for the
implicit-TLS port, verified against the test CA). Ports are picked by binding port 0 and
closing; if Dovecot then loses the race for a port (its master retries a busy port for
about 2 s, then exits), it is started again on new ports.
Mail processes run as an unprivileged account (`nobody` unless IMAP_PROXY_TEST_MAIL_USER
names another), so the suite must run as root, as CI does.

`DovecotInstance` is the handle tests use: direct imaplib sessions, seeding and reading
mailboxes, adding throw-away users, SIGKILLing the `imap` processes of one user (found
through /proc by their `verbose_proctitle` titles), and `stop()`, which terminates the
master, kills whatever is left of the process group and checks that nothing survived.

Profiles: `modern` (STARTTLS + implicit TLS, SPECIAL-USE Trash/Sent/Drafts/Junk),
`legacy` (capabilities trimmed to LEGACY_CAPABILITY, folder "Deleted" without \\Trash),
`legacy_noliteralplus` (the same with LEGACY_NOLITERALPLUS_CAPABILITY), `rev2only` (the
same announcing REV2ONLY_CAPABILITY: IMAP4rev2 without the IMAP4rev1 token),
`legacy_nouidplus` (the same with LEGACY_NOUIDPLUS_CAPABILITY: neither MOVE nor UIDPLUS;
Dovecot still executes UID EXPUNGE and still sends COPYUID, it only does not say so),
`legacy_noidle` (the same with LEGACY_NOIDLE_CAPABILITY: no IDLE, for the IDLE bridge's
polling mode).
"""

from __future__ import annotations

import atexit
import contextlib
import imaplib
import itertools
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import pytest

from tests.support.processes import (
    group_members,
    list_processes,
    pid_alive,
    read_pid,
    signal_quietly,
    wait_gone,
)
from tests.support.tls import TlsFiles, client_ssl_context

DOVECOT_BINARY = Path("/usr/sbin/dovecot")
TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "dovecot"
DH_PARAMS = Path("/usr/share/dovecot/dh.pem")
HOST = "127.0.0.1"
ROOT_PREFIX = "imap-proxy-dovecot-"
ADDRESS_IN_USE = "Address already in use"

PROFILES = (
    "modern",
    "legacy",
    "legacy_noliteralplus",
    "rev2only",
    "legacy_nouidplus",
    "legacy_noidle",
)
REV2ONLY_CAPABILITY = "IMAP4rev2 IDLE LITERAL+ UIDPLUS"  # a server that dropped the rev1 token
LEGACY_CAPABILITY = "IMAP4rev1 LITERAL+ IDLE NAMESPACE UIDPLUS"
LEGACY_NOLITERALPLUS_CAPABILITY = "IMAP4rev1 IDLE NAMESPACE"
LEGACY_NOUIDPLUS_CAPABILITY = "IMAP4rev1 LITERAL+ IDLE NAMESPACE"  # neither MOVE nor UIDPLUS
LEGACY_NOIDLE_CAPABILITY = "IMAP4rev1 LITERAL+ NAMESPACE UIDPLUS"  # still executes NOOP
_CAPABILITY_BY_PROFILE = {
    "legacy": LEGACY_CAPABILITY,
    "legacy_noliteralplus": LEGACY_NOLITERALPLUS_CAPABILITY,
    "rev2only": REV2ONLY_CAPABILITY,
    "legacy_nouidplus": LEGACY_NOUIDPLUS_CAPABILITY,
    "legacy_noidle": LEGACY_NOIDLE_CAPABILITY,
}

DEFAULT_USERS: dict[str, str] = {
    "alice": "alice-pass-1",
    "bob": "bob-pass-2",
    **{f"user{number}": f"user{number}-pass" for number in range(1, 11)},
}

SPARE_USERS = 200  # fresh users provisioned per batch (see DovecotInstance.add_user)
PASSWD_RELOAD_WAIT = 1.1
START_TIMEOUT = 15.0
START_ATTEMPTS = 5
_instance_numbers = itertools.count(1)
_fresh_numbers = itertools.count(1)


class DovecotUnavailableError(RuntimeError):
    """Dovecot cannot run here at all (binary missing, not root)."""


class DovecotStartError(RuntimeError):
    """Dovecot was there but did not come up; the message carries its log."""


class DovecotStopError(RuntimeError):
    """Processes of the instance survived SIGKILL."""


@dataclass(frozen=True, slots=True)
class MailUser:
    name: str
    password: str


def unavailable_reason() -> str | None:
    """Why a private Dovecot cannot be started on this machine, or None if it can."""
    if not DOVECOT_BINARY.exists():
        return f"{DOVECOT_BINARY} not found: install dovecot-imapd (see .ci/run)"
    if os.geteuid() != 0:
        return "the private Dovecot needs root (it drops mail processes to an unprivileged user)"
    return None


def require_dovecot() -> None:
    """Skip the calling test/fixture where Dovecot cannot run -- but fail under CI=true,
    where the Dovecot tests must never be skipped silently."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"CI must run the Dovecot tests: {reason}", pytrace=False)
    pytest.skip(reason)


def imap_quote(mailbox: str) -> str:
    """`mailbox` as an IMAP quoted string (ASCII names only), for imaplib arguments."""
    if not mailbox.isascii():
        raise ValueError(f"non-ASCII mailbox names need modified UTF-7: {mailbox!r}")
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(eq=False, slots=True)
class DovecotInstance:
    """A running private Dovecot; see the module docstring."""

    host: str
    port: int
    tls_port: int | None
    users: dict[str, str]
    mail_root: Path
    log_path: Path
    ca_file: Path | None
    profile: str
    root_dir: Path
    config_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    spare_users: list[MailUser] = field(default_factory=list, repr=False)

    # -- state -------------------------------------------------------------------
    @property
    def master_pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return _read_text(self.log_path)

    def process_ids(self) -> list[int]:
        """Live processes of this instance (the master's process group)."""
        return group_members(self.master_pid)

    def user_process_ids(self, user: str) -> list[int]:
        """Pids of the `imap` processes serving `user` (title `.../imap [user ip ...]`)."""
        pattern = re.compile(rb"/imap \[" + re.escape(user.encode()) + rb"[ \]]")
        return [
            info.pid
            for info in list_processes()
            if info.group_id == self.master_pid and pattern.search(info.title)
        ]

    # -- connections -------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        if self.ca_file is None:
            raise RuntimeError(f"profile {self.profile} has no TLS")
        return client_ssl_context(self.ca_file)

    def connect(self, *, tls: bool = False, timeout: float = 10.0) -> imaplib.IMAP4:
        """A direct, not yet authenticated imaplib connection (implicit TLS if `tls`)."""
        if not tls:
            return imaplib.IMAP4(self.host, self.port, timeout=timeout)
        if self.tls_port is None:
            raise RuntimeError(f"profile {self.profile} has no implicit-TLS port")
        return imaplib.IMAP4_SSL(
            self.host, self.tls_port, ssl_context=self.ssl_context(), timeout=timeout
        )

    def imap(self, user: str, *, tls: bool = False) -> imaplib.IMAP4:
        """A direct imaplib connection, logged in as `user`."""
        connection = self.connect(tls=tls)
        try:
            connection.login(user, self.users[user])
        except BaseException:
            connection.shutdown()
            raise
        return connection

    def greeting(self) -> bytes:
        """The raw greeting line of the plain port (pre-login capabilities included)."""
        with socket.create_connection((self.host, self.port), timeout=5) as sock:
            return _read_line(sock)

    # -- mailboxes ---------------------------------------------------------------
    def mailbox_messages(self, user: str, mailbox: str = "INBOX") -> list[bytes]:
        """Full RFC 822 bytes of every message in `mailbox`, in UID order (read-only)."""
        connection = self.imap(user)
        try:
            status, data = connection.select(imap_quote(mailbox), readonly=True)
            if status != "OK":
                raise RuntimeError(f"EXAMINE {mailbox} failed for {user}: {data!r}")
            status, data = connection.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
            if status != "OK":
                raise RuntimeError(f"UID FETCH failed in {mailbox} for {user}: {data!r}")
            by_uid: list[tuple[int, bytes]] = []
            for item in data:
                if isinstance(item, tuple):
                    found = re.search(rb"UID (\d+)", item[0])
                    if found is None:
                        raise RuntimeError(f"no UID in FETCH response {item[0]!r}")
                    by_uid.append((int(found.group(1)), item[1]))
            return [body for _uid, body in sorted(by_uid)]
        finally:
            connection.logout()

    def append(
        self, user: str, message: bytes, mailbox: str = "INBOX", flags: str = ""
    ) -> int | None:
        """APPEND `message` (CRLF line ends) for `user`; returns the new UID (APPENDUID)."""
        connection = self.imap(user)
        try:
            status, data = connection.append(
                imap_quote(mailbox), f"({flags})" if flags else None, None, message
            )
            if status != "OK":
                raise RuntimeError(f"APPEND to {mailbox} failed for {user}: {data!r}")
            found = re.search(rb"\[APPENDUID \d+ (\d+)\]", data[0] or b"")
            return int(found.group(1)) if found else None
        finally:
            connection.logout()

    # -- users -------------------------------------------------------------------
    def add_user(self) -> MailUser:
        """A user nobody has used yet on this instance: empty mailboxes, own password.

        Dovecot rereads a changed passwd-file at most once a second, so users are
        provisioned in batches (SPARE_USERS at start) and handed out from that pool;
        only when it runs dry is the file rewritten, with a wait for the reload.
        """
        if not self.spare_users:
            self.spare_users.extend(_spare_users(SPARE_USERS))
            self._write_passwd()
            time.sleep(PASSWD_RELOAD_WAIT)
        user = self.spare_users.pop(0)
        self.users[user.name] = user.password
        return user

    def remove_user(self, name: str) -> None:
        """Retire a user from add_user: sessions killed, mail deleted, never handed out again."""
        self.reset_user(name)
        del self.users[name]

    def reset_user(self, name: str) -> None:
        """Kill the user's sessions and delete all their mail; folders are recreated
        (the `auto = create` ones) on the next login."""
        if name not in self.users:
            raise KeyError(name)
        self.kill_user_processes(name)
        shutil.rmtree(self.mail_root / name, ignore_errors=True)

    def kill_user_processes(self, user: str) -> list[int]:
        """SIGKILL every `imap` process serving `user`; returns their pids once gone."""
        pids = self.user_process_ids(user)
        for pid in pids:
            signal_quietly(pid, signal.SIGKILL)
        left = wait_gone(pids, timeout=5.0)
        if left:
            raise RuntimeError(f"imap processes of {user} survived SIGKILL: {left}")
        return pids

    def _write_passwd(self) -> None:
        table = dict(self.users)
        table.update((user.name, user.password) for user in self.spare_users)
        _write_passwd_file(self.root_dir / "passwd", table)

    # -- lifecycle ---------------------------------------------------------------
    def stop(self, *, remove_files: bool = True, graceful: bool = True) -> None:
        """Stop Dovecot and every process it forked; raise if any survived SIGKILL.

        Graceful: SIGTERM to the master (it ends its children, ~1 s), then SIGKILL for
        anything left in the process group. Not graceful: SIGKILL for the whole group.
        """
        _live_instances.discard(self)
        if not graceful:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.master_pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        leftovers = self.process_ids()
        for pid in leftovers:
            signal_quietly(pid, signal.SIGKILL)
        survivors = wait_gone(leftovers, timeout=5.0)
        if survivors:
            raise DovecotStopError(f"Dovecot processes survived SIGKILL: {survivors}")
        if remove_files and not os.environ.get("IMAP_PROXY_KEEP_DOVECOT"):
            shutil.rmtree(self.root_dir, ignore_errors=True)


_live_instances: set[DovecotInstance] = set()


@atexit.register
def _stop_forgotten_instances() -> None:
    for instance in list(_live_instances):
        with contextlib.suppress(Exception):
            instance.stop()


# -- starting ----------------------------------------------------------------------
def reap_orphaned_instances() -> list[Path]:
    """Stop and delete instances left by a test run that died without stopping them.

    Each instance directory records the pid of the process that started it
    (owner.pid); Dovecot records its master pid (base/master.pid). Only when the owner
    is gone, and that master still runs with this directory's config, is its process
    group killed. Directories are kept if IMAP_PROXY_KEEP_DOVECOT is set.
    """
    reaped: list[Path] = []
    for root_dir in Path(tempfile.gettempdir()).glob(f"{ROOT_PREFIX}*"):
        owner = read_pid(root_dir / "owner.pid")
        if owner is None or pid_alive(owner):
            continue
        master = read_pid(root_dir / "base" / "master.pid")
        config = str(root_dir / "dovecot.conf").encode()
        if master is not None and any(
            info.pid == master and config in info.title for info in list_processes()
        ):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(master, signal.SIGKILL)
            wait_gone(group_members(master), timeout=5.0)
        if not os.environ.get("IMAP_PROXY_KEEP_DOVECOT"):
            shutil.rmtree(root_dir, ignore_errors=True)
        reaped.append(root_dir)
    return reaped


def mail_account() -> tuple[int, int]:
    """uid/gid the mail processes run as (IMAP_PROXY_TEST_MAIL_USER, default nobody)."""
    entry = pwd.getpwnam(os.environ.get("IMAP_PROXY_TEST_MAIL_USER", "nobody"))
    if entry.pw_uid == 0:
        raise DovecotUnavailableError("mail processes must not run as root")
    return entry.pw_uid, entry.pw_gid


def free_port() -> int:
    """A loopback port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_dovecot(
    profile: str, tls: TlsFiles | None = None, *, users: dict[str, str] | None = None
) -> DovecotInstance:
    """Start a private Dovecot in `profile`; `tls` is required for `modern`."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    if profile == "modern" and tls is None:
        raise ValueError("the modern profile needs TLS files")
    reason = unavailable_reason()
    if reason is not None:
        raise DovecotUnavailableError(reason)
    reap_orphaned_instances()
    root_dir = Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{profile}-"))
    root_dir.chmod(0o755)  # Dovecot's unprivileged processes must traverse it
    (root_dir / "owner.pid").write_text(f"{os.getpid()}\n")
    mail_uid, mail_gid = mail_account()
    mail_root = root_dir / "mail"
    mail_root.mkdir()
    os.chown(mail_root, mail_uid, mail_gid)
    mail_root.chmod(0o750)
    user_table = dict(DEFAULT_USERS if users is None else users)
    spare = _spare_users(SPARE_USERS)
    _write_passwd_file(
        root_dir / "passwd", user_table | {user.name: user.password for user in spare}
    )
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        tls_port = free_port() if profile == "modern" else None
        instance = _launch(
            profile, root_dir, mail_root, user_table, port, tls_port, tls, (mail_uid, mail_gid)
        )
        instance.spare_users.extend(spare)
        try:
            _wait_until_ready(instance)
        except DovecotStartError as error:
            with contextlib.suppress(DovecotStopError):
                instance.stop(remove_files=False, graceful=False)
            if ADDRESS_IN_USE not in str(error) or attempt == START_ATTEMPTS:
                shutil.rmtree(root_dir, ignore_errors=True)
                raise
            continue
        return instance
    raise AssertionError("unreachable")  # the loop returns or raises


def _launch(
    profile: str,
    root_dir: Path,
    mail_root: Path,
    users: dict[str, str],
    port: int,
    tls_port: int | None,
    tls: TlsFiles | None,
    mail_ids: tuple[int, int],
) -> DovecotInstance:
    log_path = root_dir / "dovecot.log"
    for stale in ("base", "state"):
        shutil.rmtree(root_dir / stale, ignore_errors=True)
        (root_dir / stale).mkdir()
    log_path.write_bytes(b"")
    config_path = root_dir / "dovecot.conf"
    config_path.write_text(
        render_config(profile, root_dir, mail_root, log_path, port, tls_port, tls, mail_ids)
    )
    with (root_dir / "master.stderr").open("wb") as stderr:
        process = subprocess.Popen(
            [str(DOVECOT_BINARY), "-F", "-c", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,
        )
    instance = DovecotInstance(
        host=HOST,
        port=port,
        tls_port=tls_port,
        users=users,
        mail_root=mail_root,
        log_path=log_path,
        ca_file=tls.ca_file if tls else None,
        profile=profile,
        root_dir=root_dir,
        config_path=config_path,
        process=process,
    )
    _live_instances.add(instance)
    return instance


def render_config(
    profile: str,
    root_dir: Path,
    mail_root: Path,
    log_path: Path,
    port: int,
    tls_port: int | None,
    tls: TlsFiles | None,
    mail_ids: tuple[int, int],
) -> str:
    """The dovecot.conf text for `profile` (common.conf + the profile's part)."""
    values = {
        "profile": profile,
        "instance_name": f"imapproxy-test-{os.getpid()}-{next(_instance_numbers)}",
        "root_dir": str(root_dir),
        "log_path": str(log_path),
        "passwd_file": str(root_dir / "passwd"),
        "mail_root": str(mail_root),
        "mail_uid": str(mail_ids[0]),
        "mail_gid": str(mail_ids[1]),
        "port": str(port),
        "tls_port": str(tls_port),
        "cert_file": str(tls.cert_file) if tls else "",
        "key_file": str(tls.key_file) if tls else "",
        "ssl_dh_line": f"ssl_dh = <{DH_PARAMS}" if DH_PARAMS.exists() else "",
        "capability": _CAPABILITY_BY_PROFILE.get(profile, ""),
    }
    part = "modern.conf" if profile == "modern" else "legacy.conf"
    return "".join(
        Template((TEMPLATE_DIR / name).read_text()).substitute(values)
        for name in ("common.conf", part)
    )


def _wait_until_ready(instance: DovecotInstance) -> None:
    """Return once every port greets; raise DovecotStartError (with the logs) if not."""
    deadline = time.monotonic() + START_TIMEOUT
    pending: list[tuple[int, bool]] = [(instance.port, False)]
    if instance.tls_port is not None:
        pending.append((instance.tls_port, True))
    last_error = ""
    while pending:
        if not instance.running:
            raise _start_error(instance, f"dovecot exited with {instance.process.returncode}")
        if time.monotonic() >= deadline:
            raise _start_error(instance, f"no greeting within {START_TIMEOUT}s: {last_error}")
        port, use_tls = pending[0]
        try:
            line = _probe_greeting(instance, port, use_tls)
        except (OSError, ssl.SSLError) as error:
            last_error = f"port {port}: {error!r}"
            time.sleep(0.02)
            continue
        if not line.startswith(b"* OK"):
            raise _start_error(instance, f"unexpected greeting on port {port}: {line!r}")
        pending.pop(0)


def _probe_greeting(instance: DovecotInstance, port: int, use_tls: bool) -> bytes:
    with socket.create_connection((instance.host, port), timeout=2) as sock:
        if not use_tls:
            return _read_line(sock)
        with instance.ssl_context().wrap_socket(sock, server_hostname=instance.host) as wrapped:
            return _read_line(wrapped)


def _start_error(instance: DovecotInstance, what: str) -> DovecotStartError:
    stderr = _read_text(instance.root_dir / "master.stderr")
    return DovecotStartError(
        f"private Dovecot ({instance.profile}) did not start: {what}\n"
        f"--- master stderr ---\n{stderr}\n--- {instance.log_path} ---\n{instance.log_text()}"
    )


def _read_line(sock: socket.socket) -> bytes:
    received = b""
    while not received.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _spare_users(count: int) -> list[MailUser]:
    return [
        MailUser(f"fresh{next(_fresh_numbers)}", secrets.token_urlsafe(12)) for _ in range(count)
    ]


def _write_passwd_file(path: Path, users: dict[str, str]) -> None:
    """Write `user:{PLAIN}password` lines atomically.

    Dovecot rereads a passwd-file when its mtime (whole seconds) or size changed, so each
    rewrite gets an mtime at least one second after the previous one.
    """
    previous = int(path.stat().st_mtime) if path.exists() else 0
    temporary = path.with_suffix(".new")
    temporary.write_text("".join(f"{name}:{{PLAIN}}{pw}\n" for name, pw in users.items()))
    temporary.chmod(0o644)
    stamp = max(int(time.time()), previous + 1)
    os.utime(temporary, (stamp, stamp))
    os.replace(temporary, path)
