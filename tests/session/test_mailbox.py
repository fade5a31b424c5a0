"""The selected-mailbox state: counts, the number -> UID map, held EXPUNGEs, FETCH watches."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imap_proxy.session import mailbox
from imap_proxy.session.mailbox import (
    FetchWatch,
    MailboxState,
    fetch_first_line,
    fetch_run_heads,
    looks_expunged,
    looks_like_stub,
)
from imap_proxy.wire.command import FetchRequest
from imap_proxy.wire.errors import Side
from imap_proxy.wire.syntax import parse_sequence_set


def test_exists_expunge_and_uids_shift_like_the_client_sees_them() -> None:
    box = MailboxState()
    box.select(b"INBOX")
    box.exists_now(4)
    for number, uid in ((1, 10), (2, 20), (3, 30), (4, 40)):
        box.learn(number, uid)
    box.expunged(2)
    assert box.exists == 3
    assert [box.uid(n) for n in (1, 2, 3)] == [10, 30, 40]
    box.exists_now(5)
    assert box.uid(4) is None and box.uid(5) is None  # arrived, UID not learnt yet
    assert box.uid(0) is None and box.uid(99) is None
    box.select(b"Other")
    assert box.exists == 0 and box.uid(1) is None


def test_a_fetch_naming_a_message_beyond_the_count_extends_it() -> None:
    box = MailboxState()
    box.learn(3, 33)
    assert box.exists == 3 and box.uid(3) == 33
    box.learn(2, None)  # no UID: nothing to learn
    assert box.uid(2) is None


def test_held_expunges_are_released_in_order_and_applied() -> None:
    box = MailboxState()
    box.exists_now(5)
    for n in range(1, 6):
        box.learn(n, n * 100)
    assert box.hold_expunge(b"* 4 EXPUNGE\r\n") and box.hold_expunge(b"* 2 EXPUNGE\r\n")
    assert box.exists == 5  # the client has not been told yet
    assert box.release_expunges() == b"* 4 EXPUNGE\r\n* 2 EXPUNGE\r\n"
    assert [box.uid(n) for n in range(1, 4)] == [100, 300, 500]
    assert box.release_expunges() == b""
    assert box.expunges_delivered == 2


@given(st.lists(st.integers(1, 30), max_size=30))
def test_map_matches_a_plain_list_model(expunges: list[int]) -> None:
    box = MailboxState()
    box.exists_now(30)
    model = list(range(1000, 1030))
    for n, uid in enumerate(model, start=1):
        box.learn(n, uid)
    for number in expunges:
        box.expunged(number)
        if number <= len(model):
            del model[number - 1]
    assert box.exists == len(model)
    assert [box.uid(n) for n in range(1, len(model) + 1)] == model


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"* 12 FETCH (UID 120 FLAGS (\\Seen))\r\n", (12, 120)),
        (b"* 3 FETCH (FLAGS (\\Seen) UID 7)\r\n", (3, 7)),
        (b"* 3 FETCH (FLAGS (\\Seen))\r\n", (3, None)),
        (b"* 4 FETCH (UID 9 BODY[] {15}\r\n", (4, 9)),
        (b"* 4 FETCH (BODY[] {15}\r\n", (4, None)),  # UID after the literal: not seen
        # a subject reading "UID 5" is not the UID item
        (b'* 5 FETCH (ENVELOPE ("d" "re: UID 5 " NIL) UID 8)\r\n', (5, None)),
        (b"* 5 EXPUNGE\r\n", None),
        (b"* OK fine\r\n", None),
    ],
)
def test_fetch_first_line(line: bytes, expected: tuple[int, int | None] | None) -> None:
    assert fetch_first_line(line) == expected


@pytest.mark.parametrize(
    ("line", "stub"),
    [
        (b"* 2 FETCH (RFC822.SIZE 0 BODY[] NIL)\r\n", True),  # Dovecot 2.3
        (b"* 2 FETCH (BODY[HEADER.FIELDS (SUBJECT)] NIL BODY[]<0> NIL)\r\n", True),
        (b"* 2 FETCH (BINARY[1] NIL)\r\n", True),
        (b"* 2 FETCH (RFC822.HEADER NIL)\r\n", True),
        (b"* 2 FETCH (ENVELOPE (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL))\r\n", True),
        (b'* 2 FETCH (INTERNALDATE "01-Jan-1970 00:00:00 +0000")\r\n', True),
        (b"* 2 FETCH (RFC822.SIZE 0)\r\n", True),
        (b"* 2 FETCH (FLAGS (\\Deleted \\Recent))\r\n", False),
        (b"* 2 FETCH (RFC822.SIZE 120 BODY[] {120}\r\n", False),
        (b'* 2 FETCH (ENVELOPE ("Mon" NIL NIL NIL NIL NIL NIL NIL NIL NIL))\r\n', False),
        (b"* 2 FETCH (FLAGS (NIL\r\n", False),  # not a response at all
        (b"* 2 EXPUNGE\r\n", False),
    ],
)
def test_looks_expunged(line: bytes, stub: bool) -> None:
    assert looks_expunged(line) is stub


def test_fetch_watch_finds_requested_numbers_without_answers() -> None:
    request = FetchRequest(parse_sequence_set(b"2:*", Side.CLIENT), (b"FLAGS",), uid=False)
    watch = FetchWatch(b"t", request, largest=10)
    for number in (2, 3, 5, 8, 9, 10, 11):  # 11: beyond the count, ignored
        watch.saw(number)
    assert watch.missing() == [4, 6, 7]
    assert watch.was_answered(8) and not watch.was_answered(1)


def test_fetch_watch_with_overlapping_ranges_and_star() -> None:
    request = FetchRequest(parse_sequence_set(b"5:*,1:3,2:4", Side.CLIENT), (b"UID",), uid=False)
    watch = FetchWatch(b"t", request, largest=6)
    assert watch.missing() == [1, 2, 3, 4, 5, 6]
    for number in (1, 1, 2, 4, 6):  # a repeated response counts once
        watch.saw(number)
    assert watch.missing() == [3, 5]
    assert watch.covers(6, None) and not watch.covers(7, None)


def test_uid_fetch_watch_covers_uids_and_never_misses() -> None:
    request = FetchRequest(parse_sequence_set(b"100:200", Side.CLIENT), (b"FLAGS",), uid=True)
    watch = FetchWatch(b"t", request, largest=3)
    assert watch.covers(1, 150) and not watch.covers(1, 99) and not watch.covers(150, None)
    assert watch.missing() == []  # UIDs that are gone get no data: nothing to stub


def test_vanished_with_known_uids_is_exact() -> None:
    box = MailboxState()
    box.exists_now(5)
    for n in range(1, 6):
        box.learn(n, n * 10)
    box.vanished(parse_sequence_set(b"20,40:50", Side.UPSTREAM))
    assert box.reliable and box.exists == 2  # 41..49 never existed: every UID was known
    assert [box.uid(n) for n in (1, 2)] == [10, 30]


def test_vanished_naming_unknown_uids_makes_the_numbers_unreliable() -> None:
    box = MailboxState()
    box.exists_now(5)
    box.learn(1, 10)
    box.vanished(parse_sequence_set(b"10,33", Side.UPSTREAM))
    assert not box.reliable and box.exists == 3
    box.select(b"INBOX")
    assert box.reliable


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 10**6),
            st.one_of(st.none(), st.integers(1, 2**32 - 1)),
            st.sampled_from(
                [
                    b"FLAGS (\\Seen)",
                    b'ENVELOPE ("UID 5" NIL)',
                    b"RFC822.SIZE 12",
                    b"FLAGS () UID 7",
                    b"XUID 5 FLAGS ()",
                    b'ENVELOPE ("a" NIL) UID 9',
                    b"UID 12345678901",
                    b"BODY[] {5}",
                    b"FLAGS (\\Seen) UID 7",
                    b"FLAGS (UID 5) UID 7",
                    b"FLAGS (XUID) UID 8",
                    b"FLAGS (U UI UID) UID 9",
                    b"FLAGS (\\Seen) MODSEQ (12) UID 9",
                    b"FLAGS (\\Seen) UID 12345678901 UID 4",
                    b'FLAGS () X "UID 3" UID 4',
                    b"MODSEQ (3) UID 10",
                ]
            ),
        ),
        max_size=20,
    )
)
def test_a_run_reads_as_its_lines_one_by_one(
    items: list[tuple[int, int | None, bytes]],
) -> None:
    lines = [
        b"* %d FETCH (%s%s)\r\n" % (n, b"" if uid is None else b"UID %d " % uid, rest)
        for n, uid, rest in items
    ]
    run = b"".join(lines)
    one_by_one = [found for line in lines if (found := fetch_first_line(line)) is not None]
    assert list(zip(*fetch_run_heads(run), strict=True)) == one_by_one


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 8),
    st.one_of(
        st.lists(
            st.tuples(st.integers(-1, 12), st.one_of(st.none(), st.integers(0, 2**32))),
            max_size=20,
        ),
        st.builds(  # the usual `1:*` answer: every message in order, UIDs rising
            lambda first, length, uid: [(first + i, uid + 7 * i) for i in range(length)],
            st.integers(-1, 10),
            st.integers(1, 12),
            st.sampled_from([0, 1, 100, 2**32 - 50]),
        ),
    ),
)
def test_a_run_learns_as_its_lines_one_by_one(
    count: int, heads: list[tuple[int, int | None]]
) -> None:
    one_by_one, at_once = MailboxState(), MailboxState()
    for box in (one_by_one, at_once):
        box.select(b"INBOX")
        box.exists_now(count)
    for number, uid in heads:
        one_by_one.learn(number, uid)
    at_once.learn_all([n for n, _ in heads], [uid for _, uid in heads])
    assert at_once.exists == one_by_one.exists
    assert [at_once.uid(n) for n in range(14)] == [one_by_one.uid(n) for n in range(14)]


_STUB_FRAGMENTS = [
    b"BODY[] NIL",
    b"BODY[]<0> NIL",
    b"BODY[]<0>NIL",
    b"RFC822 NIL",
    b"RFC822.HEADER NIL",
    b"RFC822.TEXT NIL",
    b"RFC822.SIZE 0",
    b"RFC822.SIZE 0)",
    b"RFC822.SIZE 01",
    b"RFC822.SIZE 10",
    b"ENVELOPE (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)",
    b"ENVELOPE (NIL NIL NIL)",
    b'INTERNALDATE "01-Jan-1970 00:00:00 +0000"',
    b'INTERNALDATE "01-Jan-1970 00:00:01 +0000"',
    b"FLAGS (\\Seen)",
    b'"a] NIL"',
    b")",
    b" ",
    b"NIL",
]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_STUB_FRAGMENTS), max_size=8))
def test_the_first_look_for_stub_signs_misses_none_the_full_search_finds(
    fragments: list[bytes],
) -> None:
    data = b"* 1 FETCH (" + b" ".join(fragments) + b")\r\n"
    assert looks_like_stub(data) == (mailbox._STUB_SIGNS.search(data) is not None)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([b"1:*", b"2:5", b"3,7:9,1", b"4:2", b"*"]),
    st.integers(0, 12),
    st.one_of(
        st.lists(st.integers(-1, 14), max_size=30),
        st.builds(  # every message of a range, in order
            lambda first, length: list(range(first, first + length)),
            st.integers(-2, 14),
            st.integers(1, 16),
        ),
    ),
)
def test_a_run_marks_a_watch_as_its_lines_one_by_one(
    sequence: bytes, largest: int, numbers: list[int]
) -> None:
    request = FetchRequest(parse_sequence_set(sequence, Side.CLIENT), (b"FLAGS",), uid=False)
    one_by_one, at_once = FetchWatch(b"t", request, largest), FetchWatch(b"t", request, largest)
    for number in numbers:
        one_by_one.saw(number)
    at_once.saw_all(numbers)
    at_once.saw_all(numbers)  # a second answer for the same messages counts nothing
    assert at_once.missing() == one_by_one.missing()
    assert at_once.answered == one_by_one.answered
