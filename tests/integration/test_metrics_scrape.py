"""The metrics listener of a real proxy in front of a real Dovecot, scraped over HTTP.

How this works: the proxy runs with `metrics_listen: 127.0.0.1:0` in front of the
`dovecot_modern` fixture; imaplib logs in, selects, fetches and logs out through it; then
/metrics is fetched with http.client and parsed with prometheus_client's own parser, and
the counters that session must have moved are checked, along with `promtool check
metrics` on the very scrape. Some figures are recorded when a connection closes, which
happens just after the client has read its LOGOUT answer, so the test polls the scrape
until the session shows up (a deadline, not a timing assertion). A second proxy, whose
upstream port has nothing listening, shows /readyz 503 and upstream_up 0.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from imap_proxy.config import ProxyConfig, UpstreamConfig
from tests.integration.test_proxy_dovecot import make_message, proxy_config
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.proxy import running_proxy

DEADLINE = 30.0
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def fetch(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def samples(text: bytes) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def sample(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def total(found: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` that has these labels (and any others)."""
    wanted = set(labels.items())
    return sum(
        value
        for (sample_name, have), value in found.items()
        if sample_name == name and wanted <= have
    )


def wait_for(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def promtool_check(scrape: bytes) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (Debian package prometheus)")
        return  # the rest of the test still ran; test_metrics.py reports the skip
    result = subprocess.run(
        [promtool, "check", "metrics"], input=scrape, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_a_session_through_the_proxy_moves_the_counters(
    dovecot_modern: DovecotInstance, fresh_mail_user: Callable[[DovecotInstance], MailUser]
) -> None:
    user = fresh_mail_user(dovecot_modern)
    dovecot_modern.append(user.name, make_message("metrics scrape"))
    config = proxy_config(dovecot_modern, metrics_listen="127.0.0.1:0")
    with running_proxy(config) as proxy:
        port = proxy.handle.metrics_port
        assert port is not None
        assert fetch(port, "/healthz") == (200, b"ok\n")
        wait_for("/readyz 200", lambda: fetch(port, "/readyz")[0] == 200)
        assert fetch(port, "/readyz")[1] == b"ready\n"

        client = proxy.imap()
        client.login(user.name, user.password)
        assert client.select("INBOX")[0] == "OK"
        fetched, data = client.fetch("1", "(RFC822)")
        assert fetched == "OK"
        first = data[0]
        assert isinstance(first, tuple)
        assert b"metrics scrape" in first[1]
        # Open connections count live: the message is in the scrape before the session ends.
        live = samples(fetch(port, "/metrics")[1])
        assert sample(live, "imap_proxy_bytes_total", direction="upstream_to_client") > len(
            first[1]
        )
        assert sample(live, "imap_proxy_connections_active", listener="imap") == 1
        assert client.logout()[0] == "BYE"

        def session_counted() -> bool:
            found = samples(fetch(port, "/metrics")[1])
            return total(found, "imap_proxy_sessions_total") >= 1

        wait_for("the session in the scrape", session_counted)
        status, scrape = fetch(port, "/metrics")

    assert status == 200
    found = samples(scrape)
    assert sample(found, "imap_proxy_connections_accepted_total", listener="imap", tls="none") == 1
    assert sample(found, "imap_proxy_connections_active", listener="imap") == 0
    assert total(found, "imap_proxy_sessions_total") == 1
    assert total(found, "imap_proxy_sessions_total") == 1
    for command in ("LOGIN", "SELECT", "FETCH", "LOGOUT"):
        # Whatever family the fingerprint settled on: the commands are counted under it.
        counted = total(found, "imap_proxy_commands_total", command=command, outcome="OK")
        assert counted == 1, command
        assert sample(found, "imap_proxy_command_duration_seconds_count", command=command) == 1
    assert sample(found, "imap_proxy_bytes_total", direction="client_to_upstream") > 0
    # The message itself came from the upstream.
    assert sample(found, "imap_proxy_bytes_total", direction="upstream_to_client") > len(
        make_message("metrics scrape")
    )
    assert sample(found, "imap_proxy_upstream_connects_total", outcome="ok") == 1
    assert sample(found, "imap_proxy_upstream_connect_duration_seconds_count") == 1
    # Busy polling is on by default: its counters are exported (how many polls a session
    # makes depends on how fast this machine answers, so only their presence is asserted).
    for outcome in ("data", "timeout"):
        assert ("imap_proxy_busy_polls_total", frozenset({("outcome", outcome)})) in found
    assert ("imap_proxy_busy_poll_seconds_total", frozenset()) in found
    assert sample(found, "imap_proxy_upstream_up") == 1
    assert user.name.encode() not in scrape
    promtool_check(scrape)


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_readyz_is_503_while_the_upstream_is_dead() -> None:
    config = ProxyConfig(
        listen=["127.0.0.1:0"],
        metrics_listen="127.0.0.1:0",
        upstream=UpstreamConfig(address=f"127.0.0.1:{dead_port()}", connect_timeout=5),
    )
    with running_proxy(config) as proxy:
        port = proxy.handle.metrics_port
        assert port is not None
        wait_for("/readyz 503", lambda: fetch(port, "/readyz")[0] == 503)
        status, body = fetch(port, "/readyz")
        assert status == 503
        assert b"upstream unreachable: connection refused" in body
        assert fetch(port, "/healthz")[0] == 200  # alive all the same

        with proxy.raw() as client:
            assert client.read_all().startswith(b"* BYE [UNAVAILABLE]")
        wait_for(
            "the refused connect in the scrape",
            lambda: (
                sample(
                    samples(fetch(port, "/metrics")[1]),
                    "imap_proxy_upstream_connects_total",
                    outcome="refused",
                )
                == 1
            ),
        )
        found = samples(fetch(port, "/metrics")[1])
    assert sample(found, "imap_proxy_upstream_up") == 0
    assert sample(found, "imap_proxy_upstream_connects_total", outcome="ok") == 0


def test_refused_connections_are_counted(dovecot_modern: DovecotInstance) -> None:
    config = proxy_config(dovecot_modern, metrics_listen="127.0.0.1:0")
    config = config.model_copy(
        update={"limits": config.limits.model_copy(update={"max_connections": 1})}
    )
    with running_proxy(config) as proxy:
        port = proxy.handle.metrics_port
        assert port is not None
        with proxy.raw() as first:
            assert first.read_line().startswith(b"* OK")
            with proxy.raw() as second:
                assert second.read_all() == b"* BYE [UNAVAILABLE] Too many connections\r\n"
            found = samples(fetch(port, "/metrics")[1])
    rejected = sample(
        found, "imap_proxy_connections_rejected_total", listener="imap", reason="max_connections"
    )
    assert rejected == 1
    assert sample(found, "imap_proxy_limits_hit_total", limit="max_connections", side="client") == 1
    assert sample(found, "imap_proxy_connections_accepted_total", listener="imap", tls="none") == 1
