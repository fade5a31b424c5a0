"""APPEND under injected faults: never a partial message, never a duplicate.

How this works: a `FaultRelay` (tests/support/faults.py) sits either between the proxy
and Dovecot (upstream-side faults) or between the client and the proxy (client-side
faults) and cuts, delays or resets the connection at an exact byte chosen by a marker
(`APPEND`, the tag of the answer, the continuation request). The client is a raw socket
so that every octet is under the test's control; afterwards the mailbox is read directly
on Dovecot (not through the proxy): either the whole message is there once, or nothing.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from imap_proxy.config import ProxyConfig
from tests.integration.test_proxy_dovecot import NewUser, make_message
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.faults import Fault, FaultRelay
from tests.support.proxy import RawClient, RunningProxy, running_proxy

MESSAGE = make_message("fault injection", b"z" * 200_000 + b"\r\n")


def config_for(address: str) -> ProxyConfig:
    return ProxyConfig.model_validate({"listen": ["127.0.0.1:0"], "upstream": {"address": address}})


@contextmanager
def proxy_behind_relay(dovecot: DovecotInstance, faults: list[Fault]) -> Iterator[RunningProxy]:
    """The proxy dialling Dovecot through a fault relay (upstream-side faults)."""
    with (
        FaultRelay((dovecot.host, dovecot.port), faults) as relay,
        running_proxy(config_for(relay.address)) as proxy,
    ):
        yield proxy


def raw_login(proxy: RunningProxy, user: MailUser) -> RawClient:
    raw = proxy.raw()
    raw.read_line()
    raw.send(f"a LOGIN {user.name} {user.password}\r\n".encode())
    raw.read_until(b"a OK")
    raw.read_line()
    return raw


def send_quietly(raw: RawClient, data: bytes) -> None:
    with contextlib.suppress(OSError):
        raw.send(data)


def wait_for_no_connections(proxy: RunningProxy) -> None:
    for _ in range(200):
        if proxy.active_connections() == 0:
            return
        time.sleep(0.05)
    pytest.fail("the proxy kept a connection open")


def append_through(proxy: RunningProxy, user: MailUser) -> bytes:
    with raw_login(proxy, user) as raw:
        raw.send(b"r APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n")
        answer = raw.read_until(b"r ") + raw.read_line()
    return answer


# --- the upstream side -------------------------------------------------------------------


@pytest.mark.parametrize("literal", [b"{%d}", b"{%d+}"], ids=["synchronizing", "literal-plus"])
def test_upstream_cut_mid_literal_leaves_no_partial_message(
    dovecot_modern: DovecotInstance, fresh_mail_user: NewUser, literal: bytes
) -> None:
    user = fresh_mail_user(dovecot_modern)
    cut = Fault("to_server", b"b APPEND", "cut", offset=50_000)
    with proxy_behind_relay(dovecot_modern, [cut]) as proxy:
        raw = raw_login(proxy, user)
        raw.send(b"b APPEND INBOX " + literal % len(MESSAGE) + b"\r\n")
        if literal == b"{%d}":
            assert raw.read_line().startswith(b"+")
        send_quietly(raw, MESSAGE + b"\r\n")
        assert raw.read_all() == b"* BYE [UNAVAILABLE] Upstream server closed the connection\r\n"
        raw.close()
        assert cut.fired.is_set()
        wait_for_no_connections(proxy)
        assert dovecot_modern.mailbox_messages(user.name) == []
        # The client tries again (the fault has fired): the message is there exactly once.
        assert b"r OK" in append_through(proxy, user)
    assert dovecot_modern.mailbox_messages(user.name) == [MESSAGE]


def test_converted_literal_cut_upstream_leaves_no_partial_message(
    dovecot_legacy_noliteralplus: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    """A LITERAL+ client, an upstream without LITERAL+: the proxy waits for `+` before
    sending the client's data on; the cut comes in the middle of that data."""
    dovecot = dovecot_legacy_noliteralplus
    user = fresh_mail_user(dovecot)
    cut = Fault("to_server", b"b APPEND", "cut", offset=30_000)
    with proxy_behind_relay(dovecot, [cut]) as proxy:
        raw = raw_login(proxy, user)
        big = make_message("converted", b"q" * 3_000_000 + b"\r\n")  # more than one read
        send_quietly(raw, b"b APPEND INBOX {%d+}\r\n" % len(big) + big + b"\r\n")
        assert cut.fired.wait(10)
        # Regression: the proxy closes with the client's data unread; the reset that
        # sent used to destroy the BYE before the client (reading late) could see it.
        time.sleep(0.5)
        assert raw.read_all() == b"* BYE [UNAVAILABLE] Upstream server closed the connection\r\n"
        raw.close()
        wait_for_no_connections(proxy)
    assert dovecot.mailbox_messages(user.name) == []


def test_answer_lost_after_the_append_means_one_message_not_two(
    dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    """Dovecot stored the message, then the connection died before its OK came back:
    the client is told the session is gone, and the proxy never appends again by itself."""
    user = fresh_mail_user(dovecot_modern)
    cut = Fault("to_client", b"b OK [APPENDUID", "cut", offset=-len(b"b OK [APPENDUID"))
    with proxy_behind_relay(dovecot_modern, [cut]) as proxy:
        raw = raw_login(proxy, user)
        raw.send(b"b APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n")
        assert raw.read_all() == b"* BYE [UNAVAILABLE] Upstream server closed the connection\r\n"
        raw.close()
        assert cut.fired.is_set()
        wait_for_no_connections(proxy)
    assert dovecot_modern.mailbox_messages(user.name) == [MESSAGE]


def test_delayed_continuation_still_appends_once(
    dovecot_modern: DovecotInstance, fresh_mail_user: NewUser
) -> None:
    user = fresh_mail_user(dovecot_modern)
    delay = Fault("to_client", b"+ ", "delay", seconds=1.5)
    with proxy_behind_relay(dovecot_modern, [delay]) as proxy, raw_login(proxy, user) as raw:
        raw.send(b"b APPEND INBOX {%d}\r\n" % len(MESSAGE))
        assert raw.read_line().startswith(b"+")
        raw.send(MESSAGE + b"\r\n")
        assert (raw.read_until(b"b ") + raw.read_line()).startswith(b"b OK")
        assert delay.fired.is_set()
    assert dovecot_modern.mailbox_messages(user.name) == [MESSAGE]


# --- the client side ---------------------------------------------------------------------


@pytest.mark.parametrize("literal", [b"{%d}", b"{%d+}"], ids=["synchronizing", "literal-plus"])
def test_client_cut_mid_literal_leaves_no_partial_message(
    dovecot_modern: DovecotInstance, fresh_mail_user: NewUser, literal: bytes
) -> None:
    user = fresh_mail_user(dovecot_modern)
    cut = Fault("to_server", b"b APPEND", "cut", offset=80_000)
    config = config_for(f"{dovecot_modern.host}:{dovecot_modern.port}")
    with running_proxy(config) as proxy:
        with FaultRelay(("127.0.0.1", proxy.port), [cut]) as relay:
            raw = RawClient(socket.create_connection(("127.0.0.1", relay.port), timeout=30))
            raw.read_line()
            raw.send(f"a LOGIN {user.name} {user.password}\r\n".encode())
            raw.read_until(b"a OK")
            raw.read_line()
            raw.send(b"b APPEND INBOX " + literal % len(MESSAGE) + b"\r\n")
            if literal == b"{%d}":
                assert raw.read_line().startswith(b"+")
            send_quietly(raw, MESSAGE + b"\r\n")
            assert cut.fired.wait(10)
            raw.close()
        wait_for_no_connections(proxy)
        assert dovecot_modern.mailbox_messages(user.name) == []
        assert b"r OK" in append_through(proxy, user)
    assert dovecot_modern.mailbox_messages(user.name) == [MESSAGE]
