"""What the stub-FETCH rule costs on FETCH traffic (pytest-benchmark, `bench/` only).

How this works: a selected session relays SMALL_LINES one-line FETCH responses (FLAGS
sync, UID first or last, then ENVELOPE listing) once with no rules and once with the shipped
stub-fetch-expunged rule, which observes the first line of every untagged FETCH. The
ratio of the two is the rule's own cost per FETCH line; bodies stream past it either way.
"""

from __future__ import annotations

from typing import Any

import pytest

from imap_proxy.quirks.model import RuleSet, load_rules
from imap_proxy.session import events as ev
from imap_proxy.session.proxy import ProxySession
from imap_proxy.session.settings import SessionSettings

SMALL_LINES = 10_000
READ_SIZE = 256 * 1024
_ENVELOPE = (
    b'(("Mon, 1 Jan 2024 10:00:00 +0000" "subject %d" (("A" NIL "a" "x.org")) NIL NIL '
    b'(("B" NIL "b" "y.org")) NIL NIL NIL "<id%d@x>"))'
)
STREAMS = {
    "flags": (
        b"f FETCH 1:* (UID FLAGS)\r\n",
        b"".join(
            b"* %d FETCH (UID %d FLAGS (\\Seen))\r\n" % (n, n + 100)
            for n in range(1, SMALL_LINES + 1)
        ),
    ),
    "flags-then-uid": (  # Dovecot answers FETCH (FLAGS UID) in the order asked
        b"f FETCH 1:* (FLAGS UID)\r\n",
        b"".join(
            b"* %d FETCH (FLAGS (\\Seen) UID %d)\r\n" % (n, n + 100)
            for n in range(1, SMALL_LINES + 1)
        ),
    ),
    "envelope": (
        b"f FETCH 1:* (ENVELOPE)\r\n",
        b"".join(
            b"* %d FETCH (ENVELOPE " % n + _ENVELOPE % (n, n) + b")\r\n"
            for n in range(1, SMALL_LINES + 1)
        ),
    ),
}
RULES = {"no-rules": RuleSet.empty(), "stub-fetch": load_rules().only(["stub-fetch-expunged"])}


@pytest.mark.parametrize("stream", sorted(STREAMS))
@pytest.mark.parametrize("rules", sorted(RULES))
def test_fetch_lines_with_and_without_stub_fetch(benchmark: Any, stream: str, rules: str) -> None:
    command, lines = STREAMS[stream]
    chunks = [lines[i : i + READ_SIZE] for i in range(0, len(lines), READ_SIZE)]

    def relay() -> int:
        session = ProxySession(SessionSettings(rules=RULES[rules]))
        session.receive_from_upstream(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
        session.receive_from_client(b"s SELECT INBOX\r\n")
        session.receive_from_upstream(b"* %d EXISTS\r\ns OK done\r\n" % SMALL_LINES)
        session.receive_from_client(command)
        sent = 0
        for chunk in chunks:
            for event in session.receive_from_upstream(chunk):
                if isinstance(event, ev.SendToClient):
                    sent += len(event.data)
        return sent

    assert benchmark(relay) == len(lines)  # every byte relayed, nothing held
    benchmark.extra_info["lines/s"] = round(SMALL_LINES / benchmark.stats.stats.min)
