"""Hostile clients through the real proxy in front of a private Dovecot.

How this works: one proxy (small limits: 1 KiB lines, 100 kB literals, a 2-second
pre-auth timeout) runs in front of the session's modern Dovecot. Before each attack a
*witness* session logs in through the same proxy; the attack runs on a raw socket and
must get a clear answer (a tagged BAD/NO or an untagged BYE with text, never a hang or
a silent close); afterwards the witness must still answer NOOP, so one hostile session
never disturbs another. Plaintext pipelined after STARTTLS is covered in
test_proxy_dovecot.py; upstream-side failures in tests/net/test_adversarial.py.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.integration.test_proxy_dovecot import proxy_config
from tests.support.dovecot import DEFAULT_USERS, DovecotInstance
from tests.support.proxy import RawClient, RunningProxy, running_proxy

LIMITS = {"client_max_line": 1024, "client_max_literal": 100_000}
WITNESS_USER = "alice"


def raw_from(proxy: RunningProxy, source: str = "127.0.0.1") -> RawClient:
    sock = socket.create_connection(
        ("127.0.0.1", proxy.port), timeout=30, source_address=(source, 0)
    )
    return RawClient(sock)


class Witness:
    """A logged-in session that must keep working whatever the others do."""

    def __init__(self, proxy: RunningProxy, source: str = "127.0.0.1") -> None:
        self.raw = raw_from(proxy, source)
        assert self.raw.read_line().startswith(b"* OK")
        self.raw.send(f"w0 LOGIN {WITNESS_USER} {DEFAULT_USERS[WITNESS_USER]}\r\n".encode())
        assert b"w0 OK" in self.raw.read_until(b"w0 ") + self.raw.read_line()
        self.count = 0

    def noop_ok(self) -> bool:
        self.count += 1
        tag = f"w{self.count}".encode()
        self.raw.send(tag + b" NOOP\r\n")
        answer = self.raw.read_until(tag + b" ") + self.raw.read_line()
        return answer.endswith(b"OK NOOP completed.\r\n") or b" OK " in answer

    def close(self) -> None:
        self.raw.close()


@pytest.fixture(scope="module")
def hardened_proxy(dovecot_modern: DovecotInstance) -> Iterator[RunningProxy]:
    config = proxy_config(dovecot_modern, limits=LIMITS, timeouts={"preauth": 2})
    with running_proxy(config) as proxy:
        yield proxy


@pytest.fixture
def witness(hardened_proxy: RunningProxy) -> Iterator[Witness]:
    session = Witness(hardened_proxy)
    yield session
    assert session.noop_ok(), "another session stopped answering after the attack"
    session.close()


def attack(proxy: RunningProxy, data: bytes) -> RawClient:
    raw = proxy.raw()
    assert raw.read_line().startswith(b"* OK")
    raw.send(data)
    return raw


def logged_in(proxy: RunningProxy) -> RawClient:
    raw = attack(proxy, f"l LOGIN {WITNESS_USER} {DEFAULT_USERS[WITNESS_USER]}\r\n".encode())
    raw.read_until(b"l OK")
    raw.read_line()
    return raw


# --- limits: the proxy answers with BYE and closes ---------------------------------------


@pytest.mark.parametrize(
    ("data", "bye"),
    [
        (b"a NOOP " + b"x" * 5000 + b"\r\n", b"* BYE line longer than 1024 octets\r\n"),
        (b"a NOOP " + b"x" * 5000, b"* BYE line longer than 1024 octets\r\n"),  # no CRLF yet
        (
            b"a APPEND INBOX {100001}\r\n",
            b"* BYE literal of 100001 octets exceeds the limit of 100000\r\n",
        ),
        (
            b"a APPEND INBOX {100001+}\r\n",
            b"* BYE literal of 100001 octets exceeds the limit of 100000\r\n",
        ),
        (
            b"a LOGIN {" + b"9" * 40 + b"}\r\n",
            b"* BYE literal of " + b"9" * 20 + b" octets exceeds the limit of 100000\r\n",
        ),
    ],
    ids=[
        "overlong-line",
        "overlong-unterminated",
        "literal-over-limit",
        "literal-plus-over-limit",
        "huge-literal-size",
    ],
)
def test_limits_are_answered_with_bye(
    hardened_proxy: RunningProxy, witness: Witness, data: bytes, bye: bytes
) -> None:
    with attack(hardened_proxy, data) as raw:
        assert raw.read_all() == bye


# --- malformed commands: a tagged BAD (from the proxy or the upstream), session goes on ---


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        (b"a APPEND INBOX {-5}\r\n", b"a BAD Invalid literal size\r\n"),
        (b"a APPEND INBOX {5x}\r\n", b"a BAD Invalid literal size\r\n"),
        (b"a SELECT IN\x00BOX\r\n", b"a BAD Invalid arguments: octet 0x00 inside line 1\r\n"),
        (b"a SELECT \xff\xfe\r\n", b"a BAD 8bit data in atom\r\n"),
        (
            b'a SELECT "INBOX\r\n',
            b"a BAD Invalid arguments: unterminated quoted string (line 1, offset 10)\r\n",
        ),
        (
            b"a FETCH 1 " + b"(" * 400 + b")" * 400 + b"\r\n",
            b"a BAD Invalid arguments: lists nested deeper than 64\r\n",
        ),
        (
            b"a ID " + b"(" * 100 + b")" * 100 + b"\r\n",
            b"a BAD Invalid arguments: lists nested deeper than 64\r\n",
        ),
        (
            b'a ID ("name" "x" "name" ' + b'"' * 3 + b")\r\n",
            b"a BAD Invalid arguments: unterminated quoted string (line 1, offset 27)\r\n",
        ),
        (b"a SELECT INBOX\r\n", b"a BAD Error in IMAP command received by server.\r\n"),
        (b"a STARTTLS\r\n", b"a BAD STARTTLS is not available on this connection\r\n"),
    ],
    ids=[
        "negative-literal",
        "malformed-literal",
        "nul-in-atom",
        "8bit-in-atom",
        "unterminated-quoted",
        "deep-nesting-upstream",
        "deep-nesting-held",
        "unterminated-quoted-held",
        "select-before-login",
        "starttls-without-certificate",
    ],
)
def test_malformed_commands_get_bad_and_the_session_goes_on(
    hardened_proxy: RunningProxy, witness: Witness, data: bytes, answer: bytes
) -> None:
    with attack(hardened_proxy, data) as raw:
        assert raw.read_line() == answer
        raw.send(b"z NOOP\r\n")
        assert raw.read_line().startswith(b"z OK")


def test_a_literal_cut_short_disturbs_no_one(
    hardened_proxy: RunningProxy, witness: Witness
) -> None:
    raw = attack(hardened_proxy, b"a LOGIN {10}\r\n")
    assert raw.read_line().startswith(b"+")
    raw.send(b"abc")
    raw.close()  # seven octets never come
    # A second one, still open and stalled mid-literal while the witness works.
    stalled = attack(hardened_proxy, b"a LOGIN {10}\r\n")
    assert stalled.read_line().startswith(b"+")
    stalled.send(b"abc")
    assert witness.noop_ok()
    stalled.close()


def test_authenticate_aborted(hardened_proxy: RunningProxy, witness: Witness) -> None:
    with attack(hardened_proxy, b"a AUTHENTICATE PLAIN\r\n") as raw:
        assert raw.read_line().startswith(b"+")
        raw.send(b"*\r\n")
        assert raw.read_line() == b"a BAD Authentication aborted by client.\r\n"
        raw.send(b"b NOOP\r\n")
        assert raw.read_line().startswith(b"b OK")


def test_idle_without_done(hardened_proxy: RunningProxy, witness: Witness) -> None:
    with logged_in(hardened_proxy) as raw:
        raw.send(b"s SELECT INBOX\r\ni IDLE\r\n")
        raw.read_until(b"+ idling\r\n")
        raw.send(b"n NOOP\r\n")  # not DONE: the upstream ends the IDLE with BAD
        assert raw.read_until(b"\r\n").startswith(b"i BAD Expected DONE")
        raw.send(b"m NOOP\r\n")
        assert raw.read_line().startswith(b"m OK")
    with logged_in(hardened_proxy) as raw:  # and one that just goes away in IDLE
        raw.send(b"i IDLE\r\n")
        raw.read_until(b"+ idling\r\n")
    assert witness.noop_ok()


def test_reused_tags_are_all_answered(hardened_proxy: RunningProxy, witness: Witness) -> None:
    with attack(hardened_proxy, b"a NOOP\r\na NOOP\r\na CAPABILITY\r\n") as raw:
        assert raw.read_line() == b"a OK NOOP completed.\r\n"
        assert raw.read_line() == b"a OK NOOP completed.\r\n"
        assert raw.read_line().startswith(b"* CAPABILITY")
        assert raw.read_line().startswith(b"a OK")


def test_thousands_of_pipelined_commands(hardened_proxy: RunningProxy, witness: Witness) -> None:
    count = 5000
    commands = b"".join(b"t%d NOOP\r\n" % number for number in range(count))
    with logged_in(hardened_proxy) as raw:
        raw.send(commands)
        tags = [raw.read_line().split(b" ")[0] for _ in range(count)]
    assert tags == [b"t%d" % number for number in range(count)]


def test_a_client_sending_one_byte_a_second_is_timed_out(
    hardened_proxy: RunningProxy, witness: Witness
) -> None:
    raw = attack(hardened_proxy, b"")
    sent = 0
    for octet in b"a LOGIN " + b"x" * 60:  # a minute at this pace, if nothing cut it
        try:
            raw.send(bytes([octet]))
        except OSError:
            break
        sent += 1
        time.sleep(1)
        raw.sock.setblocking(False)
        try:
            if raw.sock.recv(1, socket.MSG_PEEK):
                break
        except BlockingIOError:
            pass
        finally:
            raw.sock.setblocking(True)
    assert raw.read_all() == b"* BYE Autologout; idle for too long\r\n"
    assert sent < 60
    raw.close()


# --- floods beyond the connection limits ---------------------------------------------------


def test_connection_floods_beyond_the_limits(dovecot_modern: DovecotInstance) -> None:
    config = proxy_config(
        dovecot_modern, limits={"max_connections": 10, "max_connections_per_ip": 4}
    )
    with running_proxy(config) as proxy:
        witness = Witness(proxy, "127.0.0.9")
        admitted: list[RawClient] = []
        refused = b"* BYE [UNAVAILABLE] Too many connections\r\n"

        def connect(source: str) -> RawClient:
            raw = raw_from(proxy, source)
            admitted.append(raw)
            return raw

        for _ in range(4):
            assert connect("127.0.0.1").read_line().startswith(b"* OK")
        for _ in range(50):  # a flood from the same address: each refused at once
            with raw_from(proxy, "127.0.0.1") as raw:
                assert raw.read_all() == refused
        for _ in range(4):
            assert connect("127.0.0.2").read_line().startswith(b"* OK")
        assert connect("127.0.0.3").read_line().startswith(b"* OK")  # 10 with the witness
        for source in ("127.0.0.3", "127.0.0.4"):  # over the total, whatever the address
            with raw_from(proxy, source) as raw:
                assert raw.read_all() == refused
        assert witness.noop_ok()
        admitted.pop().close()  # room again: admitted once the proxy has seen it go
        for _ in range(100):
            with raw_from(proxy, "127.0.0.4") as raw:
                if raw.read_line().startswith(b"* OK"):
                    break
            time.sleep(0.05)
        else:
            pytest.fail("a connection closed, but no new one was admitted")
        assert witness.noop_ok()
        for raw in admitted:
            raw.close()
        witness.close()
