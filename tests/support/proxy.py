"""Run the real proxy (`imap_proxy.net.server.serve`) in a background thread for tests.

How this works: `running_proxy(config)` starts `trio.run()` in a daemon thread, waits until
`serve()` reports its ServerHandle (listeners bound on port 0), and yields a
`RunningProxy` with the bound ports. Tests then drive it with ordinary blocking clients
(imaplib, imapclient, raw sockets). On exit the proxy is drained (or cancelled) from the
test thread through trio's cross-thread calls, and the thread is joined.

Debug logs to a file (for tests/integration/test_no_secrets_in_logs.py): with the
environment variable IMAP_PROXY_TEST_LOG_FILE set to a path, `running_proxy` configures
logging at debug level, as JSON lines appended to that file, before starting the proxy.
Likewise IMAP_PROXY_TEST_RECORD_DIR turns the session recorder on, into that directory
(tests/integration/test_no_secrets_in_recordings.py).
"""

from __future__ import annotations

import atexit
import contextlib
import imaplib
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import structlog
import trio

from imap_proxy.config import LogFormat, ProxyConfig, RecorderConfig
from imap_proxy.net.server import ServerHandle, serve
from imap_proxy.observe.logging import configure_logging

TEST_LOG_FILE_ENV = "IMAP_PROXY_TEST_LOG_FILE"
TEST_RECORD_DIR_ENV = "IMAP_PROXY_TEST_RECORD_DIR"
_test_log_streams: dict[str, TextIO] = {}
_test_log_lock = threading.Lock()


@dataclass
class RunningProxy:
    handle: ServerHandle
    token: trio.lowlevel.TrioToken
    cancel_scope: trio.CancelScope

    @property
    def port(self) -> int:
        return self.handle.port("imap")

    @property
    def tls_port(self) -> int:
        return self.handle.port("imaps")

    def imap(self) -> imaplib.IMAP4:
        return imaplib.IMAP4("127.0.0.1", self.port, timeout=30)

    def imap_tls(self, context: ssl.SSLContext) -> imaplib.IMAP4_SSL:
        return imaplib.IMAP4_SSL("127.0.0.1", self.tls_port, ssl_context=context, timeout=30)

    def raw(self) -> RawClient:
        return RawClient(socket.create_connection(("127.0.0.1", self.port), timeout=30))

    def reload(self) -> bool:
        """SIGHUP's work: run every reloader; False if one failed."""
        return trio.from_thread.run_sync(self.handle.reload, trio_token=self.token)

    def drain(self) -> None:
        trio.from_thread.run_sync(self.handle.drain, trio_token=self.token)

    def active_connections(self) -> int:
        return trio.from_thread.run_sync(
            lambda: self.handle.active_connections, trio_token=self.token
        )


class RawClient:
    """A socket speaking IMAP by hand, for what library clients cannot do on purpose."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed before {marker!r}; got {self.buffer[-300:]!r}")
            self.buffer += chunk
        end = self.buffer.index(marker) + len(marker)
        out, self.buffer = self.buffer[:end], self.buffer[end:]
        return out

    def read_line(self) -> bytes:
        return self.read_until(b"\r\n")

    def read_all(self) -> bytes:
        """Everything until the server closes the connection."""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                out, self.buffer = self.buffer, b""
                return out
            self.buffer += chunk

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _FileLogger:
    """A structlog logger appending each line to the test log file (any thread)."""

    def __init__(self, stream: TextIO, name: str | None) -> None:
        self.stream = stream
        self.name = name

    def msg(self, message: str) -> None:
        with _test_log_lock:
            self.stream.write(message + "\n")
            self.stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def log_to_test_file_if_asked() -> None:
    """Honour IMAP_PROXY_TEST_LOG_FILE: debug logs, as JSON lines, appended to that file."""
    path = os.environ.get(TEST_LOG_FILE_ENV)
    if not path:
        return
    stream = _test_log_streams.get(path)
    if stream is None:
        stream = _test_log_streams[path] = open(path, "a", encoding="utf-8")  # noqa: SIM115
        atexit.register(stream.close)
    configure_logging(LogFormat.JSON, "debug")
    structlog.configure(
        logger_factory=lambda *args: _FileLogger(stream, str(args[0]) if args else None)
    )


def record_if_asked(config: ProxyConfig) -> ProxyConfig:
    """Honour IMAP_PROXY_TEST_RECORD_DIR: every session recorded there (unless the test
    configured a recorder itself), for tests/integration/test_no_secrets_in_recordings.py."""
    directory = os.environ.get(TEST_RECORD_DIR_ENV)
    if not directory or config.recorder.enabled:
        return config
    recorder = RecorderConfig(
        enabled=True, directory=Path(directory), max_total_bytes=1 << 40, max_file_bytes=1 << 30
    )
    return config.model_copy(update={"recorder": recorder})


@contextmanager
def running_proxy(config: ProxyConfig, **serve_options: Any) -> Iterator[RunningProxy]:
    """The real server on the config's (port 0) listeners; `serve_options` go to serve()
    (an `observer`, a `rules` store, …)."""
    log_to_test_file_if_asked()
    config = record_if_asked(config)
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    handle = await nursery.start(partial(serve, config, **serve_options))
                    box["proxy"] = RunningProxy(handle, trio.lowlevel.current_trio_token(), scope)
                    started.set()
        except BaseException as error:  # reported to the test thread below
            box["error"] = error
            raise
        finally:
            started.set()

    thread = threading.Thread(target=lambda: _run_quietly(main), daemon=True)
    thread.start()
    started.wait(30)
    if "proxy" not in box:
        raise RuntimeError(f"proxy did not start: {box.get('error')!r}")
    proxy: RunningProxy = box["proxy"]
    try:
        yield proxy
    finally:
        if thread.is_alive():
            with suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(proxy.cancel_scope.cancel, trio_token=proxy.token)
        thread.join(30)
        assert not thread.is_alive(), "proxy thread did not stop"


def _run_quietly(main: Any) -> None:
    # Any error is in box["error"] for the test thread.
    with contextlib.suppress(BaseException):
        trio.run(main)


@contextmanager
def proxy_with_rules(
    upstream_port: int, rule_ids: tuple[str, ...], fired: list[str]
) -> Iterator[RunningProxy]:
    """The proxy with only these packaged rules, each matching every client (their
    `match` lifted), in front of `upstream_port`; `fired` collects the rules applied."""
    from imap_proxy.quirks.fingerprint import FingerprintSet
    from imap_proxy.quirks.model import LoadedRule, Match, RuleSet, load_rules
    from imap_proxy.quirks.store import QuirkSnapshot, RuleStore
    from imap_proxy.session import events as ev

    chosen = load_rules().only(rule_ids)
    lifted = RuleSet(
        tuple(
            LoadedRule(loaded.rule.model_copy(update={"match": Match()}), loaded.source)
            for loaded in chosen.rules
        ),
        "test",
    )
    store = RuleStore(QuirkSnapshot(lifted, FingerprintSet.packaged()))
    config = ProxyConfig.model_validate(
        {"listen": ["127.0.0.1:0"], "upstream": {"address": f"127.0.0.1:{upstream_port}"}}
    )

    def observe(event: object) -> None:
        if isinstance(event, ev.RuleApplied):
            fired.append(event.rule_id)

    with running_proxy(config, observer=observe, rules=store) as running:
        yield running
