"""Run the real proxy (`imap_proxy.net.server.serve`) in a background thread for tests.

How this works: `running_proxy(config)` starts `trio.run()` in a daemon thread, waits until
`serve()` reports its ServerHandle (listeners bound on port 0), and yields a
`RunningProxy` with the bound ports. Tests then drive it with ordinary blocking clients
(imaplib, imapclient, raw sockets). On exit the proxy is drained (or cancelled) from the
test thread through trio's cross-thread calls, and the thread is joined.
"""

from __future__ import annotations

import contextlib
import imaplib
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import trio

from imap_proxy.config import ProxyConfig
from imap_proxy.net.server import ServerHandle, serve


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


@contextmanager
def running_proxy(config: ProxyConfig) -> Iterator[RunningProxy]:
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    handle = await nursery.start(serve, config)
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
