"""TLS policy end to end: old protocol versions refused, upstream certificates verified,
private keys and credentials kept out of the logs.

How this works: the real `serve()` runs on loopback with an implicit-TLS listener (the
session CA's certificate) in front of the scripted fake upstream. Clients are trio
`SSLStream`s whose context pins one protocol version. For verification, the fake upstream
presents a certificate from a *second* trustme CA that the proxy was not told to trust.
Logs are captured with structlog's `capture_logs` and searched for the key's PEM body,
the password and the SASL payload. (The contexts' settings themselves are checked in
test_tls.py; the Dovecot suite's debug logs in tests/integration/test_no_secrets_in_logs.py.)
"""

from __future__ import annotations

import base64
import ssl
import warnings
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
import trio
import trustme

from imap_proxy.config import TLSConfig, UpstreamConfig
from imap_proxy.net.connection import LISTENER_TLS
from imap_proxy.net.server import ServerHandle, serve
from tests.net.fakes import LineClient, UpstreamScript, fake_imap_server
from tests.net.test_server import connect, proxy_config, stop
from tests.support.tls import TlsFiles, write_tls_files


def pinned_client_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that speaks exactly `version` (and would accept weak ciphers)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():  # TLSv1_1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    context.set_ciphers("ALL:@SECLEVEL=0")
    return context


async def tls_handshake(handle: ServerHandle, context: ssl.SSLContext) -> trio.SSLStream[Any]:
    stream = await trio.open_tcp_stream("127.0.0.1", handle.port(LISTENER_TLS))
    tls = trio.SSLStream(stream, context, server_hostname="localhost")
    try:
        await tls.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tls)
        raise
    return tls


def tls_config(port: int, tls_files: TlsFiles, **overrides: object) -> Any:
    return proxy_config(
        port,
        listen_tls=["127.0.0.1:0"],
        tls=TLSConfig(cert=tls_files.cert_file, key=tls_files.key_file),
        **overrides,
    )


async def test_tls_1_1_clients_are_refused_tls_1_2_and_1_3_served(tls_files: TlsFiles) -> None:
    async with trio.open_nursery() as nursery:
        port = await fake_imap_server(nursery, UpstreamScript())
        handle: ServerHandle = await nursery.start(serve, tls_config(port, tls_files))
        with structlog.testing.capture_logs() as logs:
            with pytest.raises((ssl.SSLError, trio.BrokenResourceError)):
                await tls_handshake(handle, pinned_client_context(ssl.TLSVersion.TLSv1_1))
            for _ in range(100):  # the proxy logs its side once its handshake gives up
                if any(entry["event"] == "client TLS handshake failed" for entry in logs):
                    break
                await trio.sleep(0.02)
        failed = [entry for entry in logs if entry["event"] == "client TLS handshake failed"]
        assert failed and failed[0]["reason"] == "TLS handshake failed"
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            tls = await tls_handshake(handle, pinned_client_context(version))
            cipher, protocol, _ = tls.cipher()
            assert protocol == {ssl.TLSVersion.TLSv1_2: "TLSv1.2"}.get(version, "TLSv1.3")
            if version is ssl.TLSVersion.TLSv1_2:  # offered ALL, given forward-secret AEAD
                assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA" in cipher)
            assert (await LineClient(tls).read_line()).startswith(b"* OK")
            await tls.aclose()
        await stop(handle, nursery)


async def test_upstream_certificate_from_an_untrusted_ca(
    tls_files: TlsFiles, tmp_path: Path
) -> None:
    stranger = write_tls_files(trustme.CA(organization_name="not trusted"), tmp_path)
    async with trio.open_nursery() as nursery:
        port = await fake_imap_server(nursery, UpstreamScript(), stranger.server_context())
        upstream = UpstreamConfig(
            address=f"127.0.0.1:{port}", security="tls", ca_file=tls_files.ca_file
        )
        handle: ServerHandle = await nursery.start(serve, proxy_config(port, upstream=upstream))
        with structlog.testing.capture_logs() as logs:
            client = await connect(handle)
            answer = await client.read_until_eof()
        assert answer == b"* BYE [UNAVAILABLE] certificate verify failed\r\n"
        warned = [entry for entry in logs if entry["event"] == "upstream unavailable"]
        assert warned and warned[0]["reason"] == "certificate verify failed"
        assert warned[0]["log_level"] == "warning"
        await stop(handle, nursery)


def pem_body(path: Path) -> list[str]:
    """The base64 lines of a PEM file (what a leaked key would show)."""
    return [line for line in path.read_text().splitlines() if line and "-----" not in line]


async def test_private_keys_and_credentials_never_reach_the_logs(
    tls_files: TlsFiles, tmp_path: Path
) -> None:
    # A key file of our own, so that a reload can be made to fail by spoiling it.
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(tls_files.key_file.read_bytes())
    key_lines = pem_body(key_file)
    other_key = tmp_path / "other.pem"
    write_tls_files(trustme.CA(), tmp_path / "other")
    other_key.write_bytes((tmp_path / "other" / "server-key.pem").read_bytes())
    password = "s3cret-Pa55word"
    plain = base64.b64encode(f"\0carol\0{password}".encode()).decode()
    tls = TLSConfig(cert=tls_files.cert_file, key=key_file)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            port = await fake_imap_server(nursery, UpstreamScript())
            handle: ServerHandle = await nursery.start(
                serve, proxy_config(port, listen_tls=["127.0.0.1:0"], tls=tls)
            )
            client = await connect(handle)
            await client.read_line()
            await client.send(f"a LOGIN carol {password}\r\n".encode())
            await client.read_line()
            await client.send(f"b AUTHENTICATE PLAIN {plain}\r\n".encode())
            await client.read_line()
            await client.send(f'c LOGIN "carol" {{{len(password)}+}}\r\n{password}\r\n'.encode())
            await client.read_line()
            key_file.write_bytes(other_key.read_bytes())  # a key that does not fit the cert
            assert not handle.reload()
            key_file.write_text("-----BEGIN PRIVATE KEY-----\n" + key_lines[0] + "\n")
            assert not handle.reload()
            await client.stream.aclose()
            await stop(handle, nursery)
    text = repr(logs)
    assert "tls" in text.lower() and "reload" in text.lower()  # the failures were logged
    assert any(entry["event"] == "authenticated" for entry in logs)
    secrets = [password, plain, *key_lines, *pem_body(other_key)]
    leaked = [secret[:12] for secret in secrets if secret in text]
    assert not leaked, f"secrets in the logs: {leaked}"
