"""PROXY protocol end to end: a load balancer's header in, a v2 header out to a real Dovecot.

How this works: a private Dovecot (tests/support/dovecot.py, legacy profile) is started
with one extra listener that has `haproxy = yes` and 127.0.0.0/8 in
`haproxy_trusted_networks`: Dovecot refuses any connection there that does not open with
a valid PROXY header, and logs the address the header names as `rip=`. The proxy runs in
process (`running_proxy`) with `proxy_protocol.trusted` = loopback and `send_upstream`,
so the test client plays the load balancer: it sends a v2 header claiming a documentation
address, then logs in. The login working proves Dovecot accepted the proxy's header; its
log line proves the claimed client address went all the way through.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.support.dovecot as dovecot_support
from imap_proxy.config import ProxyConfig
from imap_proxy.wire.proxy_header import encode_proxy_v2
from tests.support.dovecot import DovecotInstance, free_port, require_dovecot, start_dovecot
from tests.support.proxy import RawClient, running_proxy

CLAIMED = ("198.51.100.23", 40123)


class HaproxyDovecot:
    def __init__(self, instance: DovecotInstance, haproxy_port: int) -> None:
        self.instance = instance
        self.haproxy_port = haproxy_port


@pytest.fixture(scope="module")
def haproxy_dovecot() -> Iterator[HaproxyDovecot]:
    require_dovecot()
    port = free_port()
    render = dovecot_support.render_config

    def with_haproxy_listener(*args: Any, **kwargs: Any) -> str:
        extra = (
            "\nhaproxy_trusted_networks = 127.0.0.0/8\n"
            "service imap-login {\n"
            "  inet_listener imap_haproxy {\n"
            f"    address = 127.0.0.1\n    port = {port}\n    haproxy = yes\n"
            "  }\n}\n"
        )
        return render(*args, **kwargs) + extra

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dovecot_support, "render_config", with_haproxy_listener)
        instance = start_dovecot("legacy")
    try:
        yield HaproxyDovecot(instance, port)
    finally:
        instance.stop()


def config(upstream_port: int) -> ProxyConfig:
    return ProxyConfig.model_validate(
        {
            "listen": ["127.0.0.1:0"],
            "upstream": {"address": f"127.0.0.1:{upstream_port}"},
            "proxy_protocol": {"trusted": ["127.0.0.0/8"], "send_upstream": True},
        }
    )


def wait_for_log(path: Path, pattern: str, timeout: float = 10.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = re.search(pattern, path.read_text(errors="replace"))
        if found or time.monotonic() > deadline:
            assert found, f"{pattern!r} not in the Dovecot log"
            return found
        time.sleep(0.05)


def test_dovecot_refuses_a_connection_without_a_header(haproxy_dovecot: HaproxyDovecot) -> None:
    """The fixture is what it claims: the listener insists on PROXY headers."""
    with socket.create_connection(("127.0.0.1", haproxy_dovecot.haproxy_port), timeout=10) as s:
        s.sendall(b"a1 NOOP\r\n")
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(4096):
                received += chunk
    assert not received.startswith(b"* OK")
    wait_for_log(haproxy_dovecot.instance.log_path, r"haproxy")


def test_claimed_client_address_reaches_dovecot_in_a_v2_header(
    haproxy_dovecot: HaproxyDovecot,
) -> None:
    instance = haproxy_dovecot.instance
    user = instance.add_user()
    with running_proxy(config(haproxy_dovecot.haproxy_port)) as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
        with RawClient(sock) as client:
            client.send(encode_proxy_v2(CLAIMED, ("192.0.2.1", 143)))
            assert client.read_line().startswith(b"* OK")
            client.send(f"a1 LOGIN {user.name} {user.password}\r\n".encode())
            assert client.read_until(b"a1 ").endswith(b"a1 ")
            assert client.read_line().startswith(b"OK")
            client.send(b"a2 LOGOUT\r\n")
            client.read_all()
    wait_for_log(instance.log_path, rf"Login: user=<{user.name}>.*rip={re.escape(CLAIMED[0])}")
