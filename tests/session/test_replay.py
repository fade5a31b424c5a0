"""Offline replay: what a replayed session sent is compared with the recording, and the
first octet where they part is found however far into a long session it lies."""

from __future__ import annotations

import pytest

from imap_proxy.session.replay import find_divergence, replay
from imap_proxy.wire.transcript import TraceLine

GREETING = b"* OK [CAPABILITY IMAP4rev1] ready\r\n"


def recorded_noops(count: int) -> list[TraceLine]:
    """A session of `count` NOOPs, each sent upstream as it came and answered OK."""
    entries = [TraceLine("S", GREETING)]
    for number in range(count):
        tag = b"t%05d" % number
        entries.append(TraceLine("C", tag + b" NOOP\r\n"))
        entries.append(TraceLine("S", tag + b" OK done\r\n"))
    return entries


def test_a_long_replay_collects_every_octet_and_finds_no_divergence() -> None:
    entries = recorded_noops(2_000)
    result = replay(entries)
    assert result.upstream_divergence is None
    assert result.to_upstream == b"".join(e.data for e in entries if e.prefix == "C")
    # The greeting as the proxy shows it (it offers LITERAL+ itself), then every answer.
    assert result.to_client.startswith(b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n")
    assert result.to_client.endswith(b"t01999 OK done\r\n")
    assert result.to_client.count(b" OK done\r\n") == 2_000


@pytest.mark.parametrize("at", [0, 5, 4095, 4096, 4097, 8192, 20_000])
def test_the_divergence_is_found_at_its_line_wherever_it_lies(at: int) -> None:
    entries = recorded_noops(2_000)
    recorded = b"".join(e.data for e in entries if e.prefix == "C")
    sent = recorded[:at] + b"X" + recorded[at + 1 :]
    divergence = find_divergence(entries, sent)
    assert divergence is not None
    # The entry that holds octet `at`, and the replayed line that starts with it.
    position = 0
    for index, entry in enumerate(entries):
        if entry.prefix != "C":
            continue
        if position + len(entry.data) > at:
            assert divergence.entry == index
            assert divergence.recorded == entry.data
            assert b"X" in divergence.replayed
            break
        position += len(entry.data)


def test_more_sent_than_recorded_is_a_divergence_after_the_last_line() -> None:
    entries = recorded_noops(600)
    recorded = b"".join(e.data for e in entries if e.prefix == "C")
    divergence = find_divergence(entries, recorded + b"extra LOGOUT\r\n")
    assert divergence is not None
    assert divergence.replayed == b"extra LOGOUT\r"
    assert divergence.recorded == b""
