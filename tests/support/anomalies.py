"""Server anomalies seen in the wild, injected in front of a real Dovecot.

How this works: some rules exist for upstreams that misbehave in ways Dovecot never does
(Exchange's NIL parameter values, Coremail's refusal of numeric tags, …). For their
evidence, `fault_relay(port, faults)` starts a small threaded TCP relay on a free
loopback port in front of Dovecot's plain port; the proxy under test connects to it. The
relay frames both directions by lines and `{n}` literals (literal octets pass untouched)
and applies each named fault to the lines:

    bare-status       untagged `* OK [code] text` loses its text (`* OK [code]`);
                      the greeting is left alone (dbmail's `* OK Still here` case, Q23)
    nil-body-fields   BODYSTRUCTURE parameter values become NIL, the TEXT line count -1,
                      and ENVELOPE's empty `from` becomes `()` (Exchange, mail.ru, Q22)
    partial-nil       `BODY[...]<n> {0}` (an offset past the end) becomes `BODY[...]<n> NIL`
    coremail-greeting the greeting text reads "Coremail System IMap Server Ready"
    numeric-tags-refused  a command with a purely numeric tag other than CAPABILITY,
                      LOGIN and LOGOUT is answered `NO The login is not safe!` and not
                      forwarded (163.com, libetpan PR #190)
    id-required       SELECT/EXAMINE before an ID command is answered `NO Unsafe Login.`
                      and not forwarded (NetEase, Q20)
    utf8-accept       capability lists (`* CAPABILITY`, `[CAPABILITY ...]`) also name
                      UTF8=ACCEPT, as an RFC 6855 server's do (Dovecot 2.3 has none): for
                      the evidence that the UTF-8 bridge stays out of such an upstream's way

Everything else is relayed byte for byte.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

KNOWN_FAULTS = frozenset(
    {
        "bare-status",
        "nil-body-fields",
        "partial-nil",
        "coremail-greeting",
        "numeric-tags-refused",
        "id-required",
        "utf8-accept",
    }
)
_LITERAL_AT_END = re.compile(rb"~?\{(\d+)\+?\}\r\n$")
_BARE_STATUS = re.compile(rb"^(\* (?:OK|NO|BAD) \[[^\]]*\]) [^\r\n]*\r\n$")
_PARAM_VALUE = re.compile(rb'(\("charset" )"[^"]*"\)')
_TEXT_LINES = re.compile(rb'("7bit" \d+) \d+')
_EMPTY_FROM = re.compile(rb'(ENVELOPE \((?:NIL|"[^"]*") (?:NIL|"[^"]*")) NIL')
_PARTIAL_EMPTY = re.compile(rb"(BODY\[[^\]]*\]<\d+>) \{0\}\r\n$")
_CAPABILITY_CODE = re.compile(rb"(\[CAPABILITY [^\]]*)\]")
_CAPABILITY_DATA = re.compile(rb"^(\* CAPABILITY [^\r\n]*)\r\n$")
_ALWAYS_ALLOWED = frozenset({b"CAPABILITY", b"LOGIN", b"LOGOUT"})


class _Lines:
    """Read a socket as IMAP lines and literal octets."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def line(self) -> bytes | None:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                return None
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line + b"\r\n"

    def octets(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not self._fill():
                return None
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def _server_line(line: bytes, faults: frozenset[str], first: bool) -> bytes:
    if "utf8-accept" in faults:
        line = _CAPABILITY_CODE.sub(rb"\1 UTF8=ACCEPT]", line)
        line = _CAPABILITY_DATA.sub(rb"\1 UTF8=ACCEPT\r\n", line)
    if first:
        if "coremail-greeting" in faults:
            line = re.sub(rb"\] [^\r\n]*", b"] Coremail System IMap Server Ready", line)
        return line
    if "bare-status" in faults:
        line = _BARE_STATUS.sub(rb"\1\r\n", line)
    if "nil-body-fields" in faults and b"FETCH" in line:
        line = _PARAM_VALUE.sub(rb"\1NIL)", line)
        line = _TEXT_LINES.sub(rb"\1 -1", line)
        line = _EMPTY_FROM.sub(rb"\1 ()", line)
    if "partial-nil" in faults:
        line = _PARTIAL_EMPTY.sub(rb"\1 NIL", line)
    return line


class _Session:
    def __init__(self, client: socket.socket, upstream_port: int, faults: frozenset[str]):
        self.client = client
        self.server = socket.create_connection(("127.0.0.1", upstream_port), timeout=30)
        self.faults = faults
        self.lock = threading.Lock()  # the client socket is written by both directions
        self.id_seen = False

    def to_client(self, data: bytes) -> None:
        with self.lock:
            self.client.sendall(data)

    def server_to_client(self) -> None:
        reader = _Lines(self.server)
        first = True
        while (line := reader.line()) is not None:
            literal = _LITERAL_AT_END.search(line)
            changed = _server_line(line, self.faults, first)
            first = False
            self.to_client(changed)
            if literal and changed.endswith(b"}\r\n"):
                data = reader.octets(int(literal.group(1)))
                if data is None:
                    break
                self.to_client(data)

    def refused(self, line: bytes) -> bytes | None:
        """The answer the faulty server gives this command line instead of running it."""
        words = line.rstrip(b"\r\n").split(b" ")
        if len(words) < 2:
            return None
        tag, verb = words[0], words[1].upper()
        if verb == b"ID":
            self.id_seen = True
        if "numeric-tags-refused" in self.faults and tag.isdigit() and verb not in _ALWAYS_ALLOWED:
            return tag + b" NO The login is not safe!\r\n"
        if "id-required" in self.faults and verb in (b"SELECT", b"EXAMINE") and not self.id_seen:
            return tag + b" NO Unsafe Login. Please contact kefu@188.com for help\r\n"
        return None

    def client_to_server(self) -> None:
        reader = _Lines(self.client)
        while (line := reader.line()) is not None:
            literal = _LITERAL_AT_END.search(line)
            answer = None if literal else self.refused(line)
            if answer is not None:
                self.to_client(answer)
                continue
            self.server.sendall(line)
            if literal:  # synchronizing or not: the octets follow (after `+` or at once)
                data = reader.octets(int(literal.group(1)))
                if data is None:
                    break
                self.server.sendall(data)

    def run(self) -> None:
        threads = [
            threading.Thread(target=self._guarded(self.server_to_client), daemon=True),
            threading.Thread(target=self._guarded(self.client_to_server), daemon=True),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _guarded(self, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                loop()
            except OSError:
                pass
            finally:
                for sock in (self.client, self.server):
                    with suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        return run


@contextmanager
def fault_relay(upstream_port: int, faults: list[str]) -> Iterator[int]:
    """A relay in front of `upstream_port` injecting `faults`; yields the relay's port."""
    unknown = set(faults) - KNOWN_FAULTS
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; known: {sorted(KNOWN_FAULTS)}")
    chosen = frozenset(faults)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    sockets: list[socket.socket] = []

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            session = _Session(client, upstream_port, chosen)
            sockets.extend((client, session.server))
            threading.Thread(target=session.run, daemon=True).start()

    acceptor = threading.Thread(target=accept_loop, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        acceptor.join(5)
        listener.close()
        for sock in sockets:
            sock.close()
