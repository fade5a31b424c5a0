"""Helpers for driving real mail clients through the proxy and checking Dovecot afterwards.

How this works: each client test writes the client's own configuration into its tmp dir,
runs the client binary with `run_client` (always under a timeout, stdin closed, HOME set to
the tmp dir so nothing of the machine's own configuration is read) and then reads the
mailbox state *directly* from Dovecot with `server_state`, never through the proxy, so a
proxy that merely agreed with itself could not pass. Messages are told apart by their
Message-ID header (`make_message` puts one in every test message), which is how "no
message lost or duplicated" is checked: `ServerState.ids()` counts every Message-ID in
every folder. `require_binary` skips a test whose client is not installed, except under
CI=true, where the clients are installed and a missing one is a failure.
"""

from __future__ import annotations

import functools
import imaplib
import os
import re
import shutil
import socket
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from imap_proxy.config import ProxyConfig, UpstreamConfig, UpstreamSecurity
from tests.support.dovecot import DovecotInstance, MailUser, imap_quote

CLIENT_TIMEOUT = 90.0  # seconds for one client run; a hang fails the test, not the suite
PROFILES = ("modern", "legacy")
TRASH_FOLDER = {
    "modern": "Trash",
    "legacy": "Deleted",
    "legacy_noliteralplus": "Deleted",
    "rev2only": "Deleted",
}
_MESSAGE_ID = re.compile(rb"^Message-ID:\s*<([^>]+)>", re.IGNORECASE | re.MULTILINE)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_binary(name: str) -> str:
    """The path of client binary `name`; skip if missing (fail under CI)."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} is not installed (Debian package: see .ci/run)"
    if in_ci():
        pytest.fail(f"CI must run every client: {reason}", pytrace=False)
    pytest.skip(reason)


@functools.cache
def binary_version(name: str, *args: str, pattern: str = r"\d+(?:\.\d+)+") -> str:
    """The version `name --version` (or `name *args`) prints: the first match of `pattern`
    (its first group if it has one)."""
    argv = [name, *(args or ("--version",))]
    done = subprocess.run(
        argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL, check=False
    )
    text = (done.stdout + done.stderr).decode(errors="replace")
    found = re.search(pattern, text)
    if found is None:
        return "unknown"
    return found.group(1) if found.re.groups else found.group(0)


def client_proxy_config(upstream: DovecotInstance) -> ProxyConfig:
    """The proxy on a free loopback port, plain both ways, in front of `upstream`."""
    return ProxyConfig.model_validate(
        {
            "listen": ["127.0.0.1:0"],
            "upstream": UpstreamConfig(
                address=f"127.0.0.1:{upstream.port}", security=UpstreamSecurity.PLAIN
            ),
        }
    )


def make_message(key: str, body: str = "Hello.") -> bytes:
    """A small RFC 5322 message whose Message-ID is `<key@compat.test>`."""
    return (
        f"From: sender@example.org\r\nTo: rcpt@example.org\r\nSubject: {key}\r\n"
        f"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{key}@compat.test>\r\n"
        f"\r\n{body} ({key})\r\n"
    ).encode()


def message_key(message: bytes) -> str | None:
    """The part of the Message-ID before `@`, as `make_message` wrote it."""
    found = _MESSAGE_ID.search(message)
    return found.group(1).decode().split("@")[0] if found else None


# -- running clients -------------------------------------------------------------------
class ClientFailedError(AssertionError):
    """A client exited with an unexpected status; the message carries its output."""


def run_client(
    argv: list[str],
    *,
    home: Path,
    ok_codes: tuple[int, ...] = (0,),
    timeout: float = CLIENT_TIMEOUT,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a client with HOME=`home`, stdin closed, under `timeout`; check its exit status."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        **(extra_env or {}),
    }
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=home,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise ClientFailedError(
            f"{argv[0]} did not finish within {timeout}s\n--- stdout ---\n"
            f"{_text(error.stdout)}\n--- stderr ---\n{_text(error.stderr)}"
        ) from None
    if done.returncode not in ok_codes:
        raise ClientFailedError(
            f"{' '.join(argv)} exited {done.returncode} (expected {ok_codes})\n"
            f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"
        )
    return done


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


def write_private(path: Path, text: str) -> Path:
    """Write a configuration file readable by its owner only (clients insist on 0600)."""
    path.write_text(text)
    path.chmod(0o600)
    return path


# -- reading Dovecot directly ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StoredMessage:
    key: str | None
    flags: frozenset[str]
    body: bytes


@dataclass(frozen=True, slots=True)
class ServerState:
    """Every folder of one user and the messages in each, read directly from Dovecot."""

    folders: dict[str, list[StoredMessage]]

    def keys(self, folder: str) -> list[str | None]:
        return [message.key for message in self.folders[folder]]

    def ids(self) -> Counter[str | None]:
        """How often each message key occurs across all folders."""
        return Counter(message.key for messages in self.folders.values() for message in messages)

    def flags(self, folder: str, key: str) -> frozenset[str]:
        found = [m.flags for m in self.folders[folder] if m.key == key]
        assert len(found) == 1, f"{key} occurs {len(found)} times in {folder}"
        return found[0]


_LIST_LINE = re.compile(rb'^\((?P<attrs>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.+)$')
_FETCH_ITEM = re.compile(rb"FLAGS \((?P<flags>[^)]*)\)")


def server_state(instance: DovecotInstance, user: MailUser) -> ServerState:
    """Read all folders and messages of `user` over a direct (not proxied) connection."""
    connection = instance.imap(user.name)
    try:
        status, listing = connection.list()
        assert status == "OK", listing
        names = []
        for line in listing:
            assert isinstance(line, bytes), line
            found = _LIST_LINE.match(line)
            assert found is not None, line
            if b"\\Noselect" in found.group("attrs"):
                continue
            names.append(found.group("name").decode().strip('"'))
        folders = {name: _read_folder(connection, name) for name in names}
        return ServerState(folders)
    finally:
        connection.logout()


def _read_folder(connection: imaplib.IMAP4, name: str) -> list[StoredMessage]:
    status, data = connection.select(imap_quote(name), readonly=True)
    assert status == "OK", (name, data)
    if data == [b"0"]:
        return []
    status, data = connection.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
    assert status == "OK", (name, data)
    messages: list[StoredMessage] = []
    for item in data:
        if not isinstance(item, tuple):
            continue
        flags = _FETCH_ITEM.search(item[0])
        assert flags is not None, item[0]
        messages.append(
            StoredMessage(
                key=message_key(item[1]),
                flags=frozenset(flags.group("flags").decode().split()) - {"\\Recent"},
                body=item[1],
            )
        )
    return messages


def append_raw(instance: DovecotInstance, user: MailUser, messages: list[bytes]) -> None:
    """APPEND `messages` to INBOX directly over a socket (imaplib refuses servers that
    announce IMAP4rev2 without IMAP4rev1, like the rev2only profile)."""
    with socket.create_connection((instance.host, instance.port), timeout=10) as sock:
        stream = sock.makefile("rwb")
        stream.readline()  # greeting
        stream.write(f'L LOGIN "{user.name}" "{user.password}"\r\n'.encode())
        commands = b"".join(
            b"A%d APPEND INBOX {%d+}\r\n%s\r\n" % (number, len(message), message)
            for number, message in enumerate(messages)
        )
        stream.write(commands + b"Z LOGOUT\r\n")
        stream.flush()
        completions = [line for line in stream if line[:1] != b"*"]
    assert completions and all(b" OK " in line for line in completions), completions


def store_flags(
    instance: DovecotInstance, user: MailUser, folder: str, key: str, flags: str
) -> None:
    """Add `flags` to the message `key` in `folder`, directly on Dovecot."""
    connection = instance.imap(user.name)
    try:
        connection.select(imap_quote(folder))
        status, found = connection.uid("SEARCH", "HEADER", "Message-ID", f"<{key}@compat.test>")
        assert status == "OK" and found[0], (key, found)
        status, data = connection.uid("STORE", found[0].decode(), "+FLAGS", f"({flags})")
        assert status == "OK", data
    finally:
        connection.logout()


# -- maildirs (the local side of mbsync, offlineimap, getmail) ----------------------------
def maildir_messages(folder: Path) -> dict[str, Path]:
    """Message key -> file, for every message in the maildir `folder` (new/ and cur/)."""
    found: dict[str, Path] = {}
    for sub in ("new", "cur"):
        directory = folder / sub
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            key = message_key(path.read_bytes())
            assert key is not None, f"no Message-ID in {path}"
            assert key not in found, f"{key} twice in {folder}: {found[key]} and {path}"
            found[key] = path
    return found


def maildir_flags(path: Path) -> str:
    """The maildir info flags of a message file (`...:2,FS` -> "FS")."""
    _, _, info = path.name.partition(":2,")
    return info


def deliver_to_maildir(folder: Path, message: bytes, name: str) -> Path:
    """Put `message` into `folder/new` as a new, locally written message."""
    for sub in ("new", "cur", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    path = folder / "new" / f"{name}.local"
    path.write_bytes(message)
    return path
