"""TLS contexts and the upstream dialer's error translation.

How this works: contexts are inspected directly; `connect_upstream` is run against fake
upstreams on loopback (plain, and implicit TLS with the session CA's certificate), and
against a closed port and a server that never answers, to check the client-safe reason
each failure is translated into.
"""

from __future__ import annotations

import functools
import ssl

import pytest
import structlog.testing
import trio

from imap_proxy.config import TLSConfig, UpstreamConfig
from imap_proxy.net.tls import (
    TLSSetupError,
    reload_server_certificate,
    server_ssl_context,
    upstream_server_name,
    upstream_ssl_context,
)
from imap_proxy.net.upstream import UpstreamDialer, UpstreamUnavailable, connect_upstream
from tests.net.fakes import (
    GREETING,
    LineClient,
    UpstreamScript,
    fake_imap_server,
    free_port_refusing,
)
from tests.support.tls import TlsFiles


def test_server_context_is_hardened(tls_files: TlsFiles) -> None:
    context = server_ssl_context(TLSConfig(cert=tls_files.cert_file, key=tls_files.key_file))
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all("ECDHE" in name and ("GCM" in name or "CHACHA" in name) for name in tls12)
    strict = server_ssl_context(
        TLSConfig(cert=tls_files.cert_file, key=tls_files.key_file, min_version="1.3")
    )
    assert strict.minimum_version is ssl.TLSVersion.TLSv1_3


def test_server_context_needs_readable_files(tls_files: TlsFiles) -> None:
    with pytest.raises(TLSSetupError):
        server_ssl_context(TLSConfig())
    missing = TLSConfig(cert=tls_files.cert_file.with_name("nope.pem"), key=tls_files.key_file)
    with pytest.raises(TLSSetupError):
        server_ssl_context(missing)
    context = server_ssl_context(TLSConfig(cert=tls_files.cert_file, key=tls_files.key_file))
    with pytest.raises(TLSSetupError):
        reload_server_certificate(context, missing)


def test_upstream_context_verifies_by_default_and_warns_when_not(tls_files: TlsFiles) -> None:
    verified = upstream_ssl_context(UpstreamConfig(ca_file=tls_files.ca_file))
    assert verified.verify_mode is ssl.CERT_REQUIRED and verified.check_hostname
    with structlog.testing.capture_logs() as logs:
        unverified = upstream_ssl_context(UpstreamConfig(verify=False))
    assert unverified.verify_mode is ssl.CERT_NONE and not unverified.check_hostname
    assert [entry["log_level"] for entry in logs] == ["warning"]
    named = UpstreamConfig(address="10.0.0.1:993", server_name="imap.example")
    assert upstream_server_name(named) == "imap.example"
    assert upstream_server_name(UpstreamConfig(address="10.0.0.1:993")) == "10.0.0.1"


async def test_connect_plain_upstream() -> None:
    async with trio.open_nursery() as nursery:
        port = await fake_imap_server(nursery, UpstreamScript())
        stream = await connect_upstream(UpstreamConfig(address=f"127.0.0.1:{port}"))
        assert await LineClient(stream).read_line() == GREETING
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_refused_is_translated() -> None:
    up = UpstreamConfig(address=f"127.0.0.1:{free_port_refusing()}")
    with pytest.raises(UpstreamUnavailable) as caught:
        await connect_upstream(up)
    assert caught.value.reason == "connection refused"


async def test_tls_handshake_timeout_is_translated() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        up = UpstreamConfig(address=f"127.0.0.1:{port}", security="tls", connect_timeout=0.2)
        with pytest.raises(UpstreamUnavailable) as caught:
            await connect_upstream(up)
        assert caught.value.reason == "timed out"
        nursery.cancel_scope.cancel()


async def test_implicit_tls_upstream_verified_against_ca(tls_files: TlsFiles) -> None:
    async with trio.open_nursery() as nursery:
        port = await fake_imap_server(nursery, UpstreamScript(), tls_files.server_context())
        good = UpstreamConfig(
            address=f"127.0.0.1:{port}", security="tls", ca_file=tls_files.ca_file
        )
        stream = await UpstreamDialer(good).connect()
        assert isinstance(stream, trio.SSLStream)
        assert await LineClient(stream).read_line() == GREETING
        await stream.aclose()
        # The system CAs do not know the test CA: verification must fail, safely worded.
        untrusted = UpstreamConfig(address=f"127.0.0.1:{port}", security="tls")
        with pytest.raises(UpstreamUnavailable) as caught:
            await connect_upstream(untrusted)
        assert caught.value.reason == "certificate verify failed"
        wrong_name = UpstreamConfig(
            address=f"127.0.0.1:{port}",
            security="tls",
            ca_file=tls_files.ca_file,
            server_name="imap.elsewhere.example",
        )
        with pytest.raises(UpstreamUnavailable) as caught:
            await connect_upstream(wrong_name)
        assert caught.value.reason == "certificate verify failed"
        nursery.cancel_scope.cancel()
