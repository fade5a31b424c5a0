"""A TCP relay that cuts the connection when a given command goes through it.

How this works: `FaultRelay(target, cut_on, forward_cut_line)` listens on a loopback port
and relays each accepted connection to `target` with two threads per connection. Bytes
from the server pass unchanged. Bytes towards the server are scanned line by line for
the regular expression `cut_on`: when a line matches, everything before it is forwarded,
the line itself too if `forward_cut_line` (the server may then still execute it), and
then both sockets are shut down and closed, as if the network had failed right there.
`cut` is set once that happened. Use it as a context manager; `close()` stops the
listener and every connection and joins the threads.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from types import TracebackType

HOST = "127.0.0.1"


class FaultRelay:
    def __init__(
        self, target: tuple[str, int], cut_on: bytes, *, forward_cut_line: bool = True
    ) -> None:
        self.target = target
        self.cut_on = re.compile(cut_on)
        self.forward_cut_line = forward_cut_line
        self.cut = threading.Event()
        self._listener = socket.create_server((HOST, 0))
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        self._spawn(self._accept_loop)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _address = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            self._spawn(self._to_server, client, server)
            self._spawn(self._to_client, server, client)

    def _to_client(self, server: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := server.recv(65536):
                client.sendall(chunk)
        self._hang_up(client, server)

    def _to_server(self, client: socket.socket, server: socket.socket) -> None:
        pending = b""
        with contextlib.suppress(OSError):
            while chunk := client.recv(65536):
                pending += chunk
                while b"\n" in pending:
                    line, _, pending = pending.partition(b"\n")
                    line += b"\n"
                    if self.cut_on.search(line):
                        if self.forward_cut_line:
                            server.sendall(line)
                        self.cut.set()
                        self._hang_up(client, server)
                        return
                    server.sendall(line)
        self._hang_up(client, server)

    @staticmethod
    def _hang_up(*sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        self._hang_up(*sockets)
        for thread in threads:
            thread.join(10)

    def __enter__(self) -> FaultRelay:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
