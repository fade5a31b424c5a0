"""Test certificates: one trustme CA per test session, and files on disk made from it.

How this works: `trustme.CA` creates a throw-away certificate authority in memory.
`write_tls_files` issues a server certificate for `127.0.0.1` and `localhost` from that
CA and writes the PEM files that programs outside this process need (Dovecot reads
`ssl_cert`/`ssl_key` from files; the proxy is started with `--tls-cert/--tls-key`).
The returned `TlsFiles` also builds `ssl.SSLContext` objects: clients that trust only
this CA (hostname checks on) and a server context presenting the issued certificate.
Nothing here trusts the system store, so a test that passes really used our CA.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

SERVER_IDENTITIES = ("localhost", "127.0.0.1")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files issued by the session CA, and SSL contexts built from them."""

    ca_file: Path
    cert_file: Path  # server certificate chain (leaf first)
    key_file: Path  # server private key (mode 0600)
    cert_and_key_file: Path  # key + chain in one file, for tools that want that

    def client_context(self, *, check_hostname: bool = True) -> ssl.SSLContext:
        """A client context that trusts only the test CA."""
        return client_ssl_context(self.ca_file, check_hostname=check_hostname)

    def server_context(self) -> ssl.SSLContext:
        """A server context presenting the issued certificate (for fake servers in tests)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


def new_ca() -> trustme.CA:
    """A fresh in-memory certificate authority."""
    return trustme.CA(organization_name="imap-proxy tests")


def client_ssl_context(ca_file: Path, *, check_hostname: bool = True) -> ssl.SSLContext:
    """A client `SSLContext` that trusts exactly the CA in `ca_file`."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.check_hostname = check_hostname
    return context


def write_tls_files(
    ca: trustme.CA, directory: Path, identities: tuple[str, ...] = SERVER_IDENTITIES
) -> TlsFiles:
    """Issue a server certificate for `identities` and write CA, chain and key to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert(*identities)
    ca_file = directory / "ca.pem"
    cert_file = directory / "server-cert.pem"
    key_file = directory / "server-key.pem"
    both_file = directory / "server-key-and-cert.pem"
    ca_file.write_bytes(ca.cert_pem.bytes())
    cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    _write_private(key_file, leaf.private_key_pem.bytes())
    _write_private(both_file, leaf.private_key_and_cert_chain_pem.bytes())
    return TlsFiles(
        ca_file=ca_file, cert_file=cert_file, key_file=key_file, cert_and_key_file=both_file
    )


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
