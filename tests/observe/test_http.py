"""The metrics listener over real loopback sockets: routes, bad requests, readiness, probe.

How this works: each test runs `serve_http` (or `serve_observability`) on 127.0.0.1:0 in
the test's nursery and talks raw HTTP/1.1 to it with trio sockets, one request per
connection, reading until the server closes. The upstream probe is pointed at a real
trio listener (reachable) and at a port nothing listens on (refused).
"""

from __future__ import annotations

import socket

import pytest
import trio

from imap_proxy.observe.http import (
    NOT_PROBED,
    Readiness,
    UpstreamProbe,
    parse_request_head,
    serve_http,
    serve_observability,
)
from imap_proxy.observe.metrics import Metrics


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `raw`, read until the server closes; (status, headers, body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        if raw:
            await stream.send_all(raw)
        received = bytearray()
        while chunk := await stream.receive_some(65536):
            received += chunk
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, text = line.partition(":")
        headers[name.strip().lower()] = text.strip()
    return int(status_line.split()[1]), headers, body


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await request(port, f"{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start(
    nursery: trio.Nursery, metrics: Metrics, readiness: Readiness, **options: float
) -> int:
    port: int = await nursery.start(
        lambda task_status: serve_http(
            "127.0.0.1:0", metrics, readiness, task_status=task_status, **options
        )
    )
    return port


async def test_metrics_healthz_and_unknown_paths(nursery: trio.Nursery) -> None:
    metrics = Metrics()
    metrics.record_rule_reload(True)
    port = await start(nursery, metrics, Readiness())

    status, headers, body = await get(port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    assert b'imap_proxy_rule_reloads_total{outcome="ok"} 1.0' in body

    assert (await get(port, "/healthz"))[::2] == (200, b"ok\n")
    assert (await get(port, "/metrics?debug=1"))[0] == 200
    assert (await get(port, "/nope"))[0] == 404
    assert (await get(port, "/metrics", "POST"))[0] == 405


async def test_head_answers_headers_only(nursery: trio.Nursery) -> None:
    port = await start(nursery, Metrics(), Readiness())
    status, headers, body = await get(port, "/healthz", "HEAD")
    assert status == 200
    assert headers["content-length"] == "3"
    assert body == b""


@pytest.mark.parametrize(
    "raw",
    [
        b"\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /metrics\r\n\r\n",
        b"GET metrics HTTP/1.1\r\n\r\n",
        b"get /metrics HTTP/1.1\r\n\r\n",
        b"GET /m\xffetrics HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS ClientHello
    ],
)
async def test_malformed_requests_get_400(nursery: trio.Nursery, raw: bytes) -> None:
    port = await start(nursery, Metrics(), Readiness())
    assert (await request(port, raw))[0] == 400
    assert (await get(port, "/healthz"))[0] == 200  # and the server goes on


async def test_an_endless_head_gets_431(nursery: trio.Nursery) -> None:
    port = await start(nursery, Metrics(), Readiness())
    raw = b"GET /metrics HTTP/1.1\r\n" + b"X-Filler: " + b"a" * 20_000 + b"\r\n\r\n"
    assert (await request(port, raw))[0] == 431


async def test_a_silent_client_is_timed_out(nursery: trio.Nursery) -> None:
    port = await start(nursery, Metrics(), Readiness(), request_timeout=0.2)
    status, _headers, _body = await request(port, b"GET /metrics HTTP/1.1\r\n")
    assert status == 408
    assert (await get(port, "/healthz"))[0] == 200


async def test_readyz_runs_every_check(nursery: trio.Nursery) -> None:
    reasons: dict[str, str | None] = {"rules": "rules not loaded", "other": None}
    readiness = Readiness([lambda: reasons["rules"], lambda: reasons["other"]])
    port = await start(nursery, Metrics(), readiness)
    status, _headers, body = await get(port, "/readyz")
    assert status == 503
    assert body == b"not ready\nrules not loaded\n"
    reasons["rules"] = None
    assert (await get(port, "/readyz"))[::2] == (200, b"ready\n")


async def test_a_raising_check_means_not_ready(nursery: trio.Nursery) -> None:
    def broken() -> str | None:
        raise RuntimeError("boom")

    port = await start(nursery, Metrics(), Readiness([broken]))
    status, _headers, body = await get(port, "/readyz")
    assert status == 503
    assert b"readiness check raised" in body


def test_parse_request_head() -> None:
    assert parse_request_head(b"GET /readyz?x=1 HTTP/1.0\r\nHost: a") == ("GET", "/readyz")


async def test_probe_follows_the_upstream(nursery: trio.Nursery) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    upstream_port = listeners[0].socket.getsockname()[1]
    metrics = Metrics()
    probe = UpstreamProbe(f"127.0.0.1:{upstream_port}", metrics, timeout=5.0)
    assert probe.check() == NOT_PROBED
    assert await probe.probe_once()
    assert probe.check() is None
    assert metrics.registry.get_sample_value("imap_proxy_upstream_up") == 1
    for listener in listeners:
        await listener.aclose()
    assert not await probe.probe_once()
    assert probe.check() == "upstream unreachable: connection refused"
    assert metrics.registry.get_sample_value("imap_proxy_upstream_up") == 0


async def test_serve_observability_wires_the_probe_into_readyz(nursery: trio.Nursery) -> None:
    metrics = Metrics()
    readiness = Readiness()
    probe = UpstreamProbe(f"127.0.0.1:{free_port()}", metrics, interval=3600, timeout=5.0)
    port: int = await nursery.start(
        lambda task_status: serve_observability(
            "127.0.0.1:0", metrics, readiness, probe, task_status=task_status
        )
    )
    # The first probe runs as the endpoint starts; wait for it rather than for a time.
    while probe.check() == NOT_PROBED:
        await trio.sleep(0.01)
    status, _headers, body = await get(port, "/readyz")
    assert status == 503
    assert b"upstream unreachable: connection refused" in body
    _status, _headers, scrape = await get(port, "/metrics")
    assert b"imap_proxy_upstream_up 0.0" in scrape
