"""A scripted TCP relay that injects faults between two peers (proxy and Dovecot, or a
client and the proxy).

How this works: `FaultRelay(target, faults)` listens on a free loopback port and, for
each connection it accepts, opens one to `target` and pumps bytes both ways in two
threads ("to_server": from the accepting side to the target; "to_client": back). Each
`Fault` watches one direction for a marker (`after=b"APPEND"`); once the marker has
passed, it fires `offset` octets later, at an exact byte: everything before that byte is
forwarded, then

* `cut`: both connections are reset (SO_LINGER 0), as a crash or a network cut would;
* `stall`: that direction forwards nothing more (a black hole), the sockets stay open;
* `delay`: forwarding pauses for `seconds`, then goes on.

A fault fires once, on the `connection`-th connection (0 is the first; None: the first
connection where the marker shows up). `fired` is set when it has; `links` hold what each
connection forwarded. `close()` ends every connection and the listener.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["to_server", "to_client"]
Action = Literal["cut", "stall", "delay"]


@dataclass
class Fault:
    direction: Direction
    after: bytes
    action: Action
    offset: int = 0
    seconds: float = 0.0
    connection: int | None = None
    fired: threading.Event = field(default_factory=threading.Event)


@dataclass
class Link:
    """One relayed connection and what went through it."""

    index: int
    accepted: socket.socket
    dialled: socket.socket
    forwarded: dict[str, bytearray] = field(
        default_factory=lambda: {"to_server": bytearray(), "to_client": bytearray()}
    )
    closed: threading.Event = field(default_factory=threading.Event)

    def cut(self) -> None:
        for sock in (self.accepted, self.dialled):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                # Wakes the other pump's recv(); a bare close() would wait for it.
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self.closed.set()


class FaultRelay:
    def __init__(self, target: tuple[str, int], faults: list[Fault] | None = None) -> None:
        self.target = target
        self.faults = list(faults or [])
        self.links: list[Link] = []
        self._lock = threading.Lock()
        self._closed = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> FaultRelay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        for link in list(self.links):
            link.cut()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                accepted, _ = self._listener.accept()
            except OSError:
                return
            try:
                dialled = socket.create_connection(self.target, timeout=10)
            except OSError:
                accepted.close()
                continue
            dialled.settimeout(None)
            with self._lock:
                link = Link(len(self.links), accepted, dialled)
                self.links.append(link)
            for direction, source, sink in (
                ("to_server", accepted, dialled),
                ("to_client", dialled, accepted),
            ):
                threading.Thread(
                    target=self._pump, args=(link, direction, source, sink), daemon=True
                ).start()

    def _claim(
        self, link: Link, direction: str, buffer: bytes, base: int
    ) -> list[tuple[int, Fault]]:
        """Faults of this direction whose marker ends in `buffer` (at absolute `base`)."""
        found = []
        with self._lock:
            for fault in self.faults:
                if fault.direction != direction or fault.fired.is_set():
                    continue
                if fault.connection is not None and fault.connection != link.index:
                    continue
                index = buffer.find(fault.after)
                if index >= 0:
                    fault.fired.set()  # claimed: fires on this link, at this byte
                    found.append((base + index + len(fault.after) + fault.offset, fault))
        return found

    def _pump(self, link: Link, direction: str, source: socket.socket, sink: socket.socket) -> None:
        armed: list[tuple[int, Fault]] = []
        window = b""
        total = 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    with contextlib.suppress(OSError):
                        sink.shutdown(socket.SHUT_WR)
                    return
                longest = max((len(f.after) for f in self.faults), default=1)
                armed += self._claim(link, direction, window + data, total - len(window))
                armed.sort(key=lambda item: item[0])
                while armed and armed[0][0] <= total + len(data):
                    at, fault = armed.pop(0)
                    head = data[: max(0, at - total)]
                    sink.sendall(head)
                    link.forwarded[direction] += head
                    total += len(head)
                    data = data[len(head) :]
                    if fault.action == "cut":
                        link.cut()
                        return
                    if fault.action == "stall":
                        link.closed.wait()
                        return
                    time.sleep(fault.seconds)
                sink.sendall(data)
                link.forwarded[direction] += data
                total += len(data)
                window = bytes(link.forwarded[direction][-(longest - 1) :]) if longest > 1 else b""
        except OSError:
            link.cut()
