"""The core capability list and the splitting of capability lines, which are remembered
across sessions: the remembered answers must be the computed ones, never shared lists."""

from __future__ import annotations

from imap_proxy.session import capabilities as caps_module
from imap_proxy.session.capabilities import (
    MEMO_ENTRIES,
    MEMO_MAX_TEXT,
    ClientTransport,
    client_capabilities,
    split_capabilities,
)

PLAIN = ClientTransport(tls_active=False, starttls_available=False, require_tls=False)
OFFERS_STARTTLS = ClientTransport(tls_active=False, starttls_available=True, require_tls=False)
NEEDS_TLS = ClientTransport(tls_active=False, starttls_available=True, require_tls=True)
UPSTREAM = ["IMAP4rev1", "STARTTLS", "COMPRESS=DEFLATE", "AUTH=PLAIN", "IDLE"]


def test_each_transport_gets_its_own_answer_from_the_same_upstream_list() -> None:
    assert client_capabilities(UPSTREAM, PLAIN) == ["IMAP4rev1", "AUTH=PLAIN", "IDLE", "LITERAL+"]
    assert client_capabilities(UPSTREAM, OFFERS_STARTTLS) == [
        *("IMAP4rev1", "STARTTLS", "AUTH=PLAIN", "IDLE", "LITERAL+"),
    ]
    assert client_capabilities(UPSTREAM, NEEDS_TLS) == [
        *("IMAP4rev1", "STARTTLS", "IDLE", "LOGINDISABLED", "LITERAL+"),
    ]
    # Asked again (now remembered), the answers are the same.
    assert client_capabilities(UPSTREAM, PLAIN) == ["IMAP4rev1", "AUTH=PLAIN", "IDLE", "LITERAL+"]


def test_a_remembered_answer_is_a_fresh_list_every_time() -> None:
    first = client_capabilities(UPSTREAM, PLAIN)
    first.append("XSPOILED")  # a caller (a rule) may extend what it got
    assert "XSPOILED" not in client_capabilities(UPSTREAM, PLAIN)
    words = split_capabilities(b"IMAP4rev1 IDLE")
    words.clear()
    assert split_capabilities(b"IMAP4rev1 IDLE") == ["IMAP4rev1", "IDLE"]


def test_splitting_drops_non_ascii_names_and_forgets_long_lists() -> None:
    assert split_capabilities("IMAP4rev1 X-ÄÖ IDLE".encode()) == ["IMAP4rev1", "IDLE"]
    long_text = b" ".join(b"X%d" % n for n in range(MEMO_MAX_TEXT // 3))
    assert len(long_text) > MEMO_MAX_TEXT
    remembered = caps_module._split_remembered.cache_info()
    assert split_capabilities(long_text)[-1] == f"X{MEMO_MAX_TEXT // 3 - 1}"
    # Not looked up in the memory at all, so not kept there either.
    assert caps_module._split_remembered.cache_info() == remembered


def test_the_memory_is_bounded() -> None:
    for number in range(MEMO_ENTRIES + 50):  # an upstream could vary its list endlessly
        names = split_capabilities(b"IMAP4rev1 X%d" % number)
        client_capabilities(names, PLAIN)
    assert caps_module._split_remembered.cache_info().currsize == MEMO_ENTRIES
    assert caps_module._core_capabilities.cache_info().currsize == MEMO_ENTRIES
    # The newest answers are kept, and are right.
    assert client_capabilities(["IMAP4rev1", "X5"], PLAIN) == ["IMAP4rev1", "X5", "LITERAL+"]
