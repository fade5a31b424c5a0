"""The metrics listener: `/metrics`, `/healthz` and `/readyz` over a tiny HTTP/1.1 responder.

How this works: `serve_http(address, metrics, readiness)` binds `HOST:PORT` (port 0 picks a
free one), reports the bound port through `task_status.started()`, and answers each
accepted connection in its own task: it reads one request head (at most `MAX_HEAD`
octets, within `REQUEST_TIMEOUT`), answers it, and closes the connection (`Connection:
close`; no keep-alive, no request bodies). GET and HEAD only. Anything malformed gets a
400, an oversized head a 431, a slow client a 408 (best effort), another method a 405,
an unknown path a 404; no request can make it raise. After an error answer the server
half-closes and discards input for up to `LINGER_TIMEOUT`, so that unread bytes do not
turn the close into a reset that destroys the answer. At most `MAX_CLIENTS` requests are
answered at once; further connections wait their turn in the accept queue.

* `/metrics`: the Prometheus text format of the `Metrics` registry.
* `/healthz`: 200 `ok` while the process runs (the event loop answers, that is all).
* `/readyz`: 200 `ready` when every check in `Readiness.checks` passes, else 503 with one
  line per failing check. A check is a callable returning None (fine) or a short reason.
  The `UpstreamProbe` is one: every `interval` seconds it opens a TCP connection to the
  upstream within `timeout` and closes it, sets `imap_proxy_upstream_up`, and fails its
  check with the reason until the next success. Other parts append their own checks
  (the rule engine: "rules loaded"; the server: "draining").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import trio
from prometheus_client import CONTENT_TYPE_LATEST

from imap_proxy.config import ProxyConfig, split_host_port
from imap_proxy.net.upstream import describe_failure
from imap_proxy.observe.logging import get_logger
from imap_proxy.observe.metrics import Metrics

MAX_HEAD: Final = 8192
REQUEST_TIMEOUT: Final = 10.0
SEND_TIMEOUT: Final = 10.0
LINGER_TIMEOUT: Final = 1.0
MAX_LINGER_OCTETS: Final = 1024 * 1024
MAX_CLIENTS: Final = 16
PROBE_INTERVAL: Final = 5.0
PROBE_TIMEOUT: Final = 2.0
NOT_PROBED: Final = "upstream not probed yet"

ReadyCheck = Callable[[], str | None]

_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TEXT: Final = "text/plain; charset=utf-8"

_log = get_logger("imap_proxy.observe.http")


@dataclass(slots=True)
class Readiness:
    """The checks `/readyz` runs; each returns None when fine, else a short reason."""

    checks: list[ReadyCheck] = field(default_factory=list)

    def failures(self) -> list[str]:
        reasons: list[str] = []
        for check in list(self.checks):
            try:
                reason = check()
            except Exception:
                _log.exception("readiness check failed")
                reason = "readiness check raised"
            if reason is not None:
                reasons.append(reason)
        return reasons


class UpstreamProbe:
    """A periodic TCP connect to the upstream; a ready check and the upstream_up gauge."""

    def __init__(
        self,
        address: str,
        metrics: Metrics | None = None,
        *,
        interval: float = PROBE_INTERVAL,
        timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self.host, self.port = split_host_port(address)
        self.metrics = metrics
        self.interval = interval
        self.timeout = timeout
        self.failure: str | None = NOT_PROBED

    def check(self) -> str | None:
        return self.failure

    async def probe_once(self) -> bool:
        """One connect attempt; updates the check and the gauge. True when it connected."""
        try:
            with trio.fail_after(self.timeout):
                stream = await trio.open_tcp_stream(self.host, self.port)
            await trio.aclose_forcefully(stream)
        except (OSError, trio.TooSlowError) as exc:
            failure: str | None = f"upstream unreachable: {describe_failure(exc)}"
        else:
            failure = None
        if failure != self.failure:
            _log.info("upstream probe", up=failure is None, reason=failure)
        self.failure = failure
        if self.metrics is not None:
            self.metrics.set_upstream_up(failure is None)
        return failure is None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.probe_once()
            await trio.sleep(self.interval)


class _BadRequest(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = _TEXT

    def encode(self, *, head_only: bool = False) -> bytes:
        head = (
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}\r\n"
            f"Content-Type: {self.content_type}\r\n"
            f"Content-Length: {len(self.body)}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii")
        return head if head_only else head + self.body


def parse_request_head(head: bytes) -> tuple[str, str]:
    """(method, path without query) of a request head; `_BadRequest(400)` if malformed."""
    request_line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise _BadRequest(400)
    method, target = parts[0], parts[1]
    if not method.isalpha() or not method.isupper() or not target.startswith(b"/"):
        raise _BadRequest(400)
    try:
        path = target.decode("ascii").split("?", 1)[0]
    except UnicodeDecodeError:
        raise _BadRequest(400) from None
    return method.decode("ascii"), path


class ObservabilityServer:
    """Routes requests to the metrics registry and the readiness checks."""

    def __init__(
        self,
        metrics: Metrics,
        readiness: Readiness,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.metrics = metrics
        self.readiness = readiness
        self.request_timeout = request_timeout
        self._limiter = trio.CapacityLimiter(MAX_CLIENTS)

    def respond(self, method: str, path: str) -> Response:
        if method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n")
        if path == "/metrics":
            return Response(200, self.metrics.exposition(), CONTENT_TYPE_LATEST)
        if path == "/healthz":
            return Response(200, b"ok\n")
        if path == "/readyz":
            failures = self.readiness.failures()
            if failures:
                text = "not ready\n" + "".join(f"{reason}\n" for reason in failures)
                return Response(503, text.encode("utf-8", "replace"))
            return Response(200, b"ready\n")
        return Response(404, b"not found\n")

    async def handle(self, stream: trio.abc.Stream) -> None:
        async with self._limiter:
            try:
                await self._answer(stream)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away
            except Exception:
                _log.exception("metrics request failed")
            finally:
                with trio.move_on_after(1.0):
                    await trio.aclose_forcefully(stream)

    async def _answer(self, stream: trio.abc.Stream) -> None:
        method = "GET"
        with trio.move_on_after(self.request_timeout) as scope:
            try:
                head = await _read_head(stream)
                method, path = parse_request_head(head)
                response = self.respond(method, path)
            except _BadRequest as bad:
                response = Response(bad.status, f"{_REASONS[bad.status].lower()}\n".encode())
        if scope.cancelled_caught:
            response = Response(408, b"request timeout\n")
        with trio.move_on_after(SEND_TIMEOUT):
            await stream.send_all(response.encode(head_only=method == "HEAD"))
        if response.status >= 400:
            await _linger(stream)


async def _linger(stream: trio.abc.Stream) -> None:
    """Half-close and discard what the client still sends, briefly: closing with unread
    input makes the kernel send a reset, which can destroy the response in flight."""
    if not isinstance(stream, trio.abc.HalfCloseableStream):
        return
    with trio.move_on_after(LINGER_TIMEOUT):
        await stream.send_eof()
        discarded = 0
        while discarded < MAX_LINGER_OCTETS:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            discarded += len(chunk)


async def _read_head(stream: trio.abc.Stream) -> bytes:
    buffer = bytearray()
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            end = buffer.find(b"\n\n")
        if end >= 0:
            return bytes(buffer[:end])
        if len(buffer) > MAX_HEAD:
            raise _BadRequest(431)
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise _BadRequest(400)
        buffer += chunk


async def serve_http(
    address: str,
    metrics: Metrics,
    readiness: Readiness,
    *,
    request_timeout: float = REQUEST_TIMEOUT,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /metrics, /healthz and /readyz on `address` until cancelled; reports the port."""
    host, port = split_host_port(address)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = int(listeners[0].socket.getsockname()[1])
    server = ObservabilityServer(metrics, readiness, request_timeout=request_timeout)
    for listener in listeners:
        name = listener.socket.getsockname()
        _log.info("metrics listening", address=str(name[0]), port=int(name[1]))
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(bound)
            for listener in listeners:
                nursery.start_soon(_accept_loop, listener, server, nursery)
    finally:
        with trio.CancelScope(shield=True):
            for listener in listeners:
                with contextlib.suppress(OSError, trio.ClosedResourceError):
                    await listener.aclose()


async def _accept_loop(
    listener: trio.SocketListener, server: ObservabilityServer, nursery: trio.Nursery
) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:  # EMFILE and friends: back off, keep serving
            _log.warning("metrics accept failed", error=str(exc))
            await trio.sleep(0.1)
            continue
        nursery.start_soon(server.handle, stream)


async def serve_observability(
    address: str,
    metrics: Metrics,
    readiness: Readiness,
    probe: UpstreamProbe | None = None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The HTTP endpoint plus, if given, the upstream probe (its check added to readiness)."""
    async with trio.open_nursery() as nursery:
        if probe is not None:
            readiness.checks.append(probe.check)
            await nursery.start(probe.run)
        port: int = await nursery.start(serve_http, address, metrics, readiness)
        task_status.started(port)


async def serve_proxy_observability(
    config: ProxyConfig,
    metrics: Metrics,
    checks: list[ReadyCheck],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """What `serve()` runs for `metrics_listen`: the endpoint and a probe of the upstream.

    `checks` is the server's own list (`ServerHandle.ready_checks`), shared, so that checks
    appended to it later (rules loaded) count too.
    """
    assert config.metrics_listen is not None
    probe = UpstreamProbe(config.upstream.address, metrics)
    await serve_observability(
        config.metrics_listen, metrics, Readiness(checks), probe, task_status=task_status
    )
