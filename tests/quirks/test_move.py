"""The MOVE emulation script against a scripted upstream: which commands, in which order,
and what the client is told, for every branch (success, refusal, failure and roll-back)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from imap_proxy.quirks.actions import EmulationAnswer, Script, StepResult, UpstreamCommand
from imap_proxy.quirks.actions.move import EmulateMove, move_script
from imap_proxy.quirks.actions.uidset import UidSet
from imap_proxy.quirks.engine import SessionView
from imap_proxy.quirks.model import MoveEmulationAction
from imap_proxy.wire.command import Command
from imap_proxy.wire.encode import encode_command
from imap_proxy.wire.syntax import Atom, LiteralString, ParenList, Quoted

Upstream = Callable[[bytes], tuple[bytes, list[bytes]]]  # command line -> (tagged, untagged)


def run(script: Script, upstream: Upstream) -> tuple[list[bytes], EmulationAnswer]:
    """Drive a script to its end; returns the command lines sent and the answer."""
    sent: list[bytes] = []
    result: StepResult | None = None
    while True:
        try:
            step: UpstreamCommand = next(script) if result is None else script.send(result)
        except StopIteration as stop:
            return sent, stop.value
        line = encode_command(b"t", step.name, step.args).to_bytes()
        sent.append(line)
        tagged, untagged = upstream(line)
        status = tagged.split(b" ", 2)[1].decode()
        result = StepResult(status, tagged, tuple(untagged))


def scripted(replies: dict[bytes, tuple[bytes, list[bytes]]]) -> Upstream:
    """Answers keyed by the start of the command line (after the tag)."""

    def answer(line: bytes) -> tuple[bytes, list[bytes]]:
        for prefix, reply in replies.items():
            if line.startswith(b"t " + prefix):
                return reply
        raise AssertionError(f"unexpected command {line!r}")

    return answer


OK_STORE: tuple[bytes, list[bytes]] = (b"t OK Store completed.\r\n", [])


def test_uid_move_with_uidplus_is_copy_store_expunge_of_the_copied_uids() -> None:
    upstream = scripted(
        {
            b"UID COPY": (b"t OK [COPYUID 9 4,6 20:21] Copy completed.\r\n", []),
            b"UID STORE": (b"t OK Store completed.\r\n", [b"* 2 FETCH (UID 4 MODSEQ (7))\r\n"]),
            b"UID EXPUNGE": (
                b"t OK Expunge completed.\r\n",
                [b"* 2 EXPUNGE\r\n", b"* 3 EXPUNGE\r\n"],
            ),
        }
    )
    sent, answer = run(move_script(b"4:6", Atom(b"Trash"), uid=True, plan="uidplus"), upstream)
    # Only what was copied (4 and 6; 5 did not exist) is flagged and expunged.
    assert sent == [
        b"t UID COPY 4:6 Trash\r\n",
        b"t UID STORE 4,6 +FLAGS.SILENT (\\Deleted)\r\n",
        b"t UID EXPUNGE 4,6\r\n",
    ]
    assert answer == EmulationAnswer(
        b"* OK [COPYUID 9 4,6 20:21] Moved UIDs.\r\n* 2 EXPUNGE\r\n* 3 EXPUNGE\r\n",
        b"OK Move completed",
        "ok",
    )


def test_the_new_highestmodseq_comes_with_the_tagged_ok() -> None:
    upstream = scripted(
        {
            b"UID COPY": (b"t OK [COPYUID 9 4 20] Copy completed.\r\n", []),
            b"UID STORE": OK_STORE,
            b"UID EXPUNGE": (b"t OK [HIGHESTMODSEQ 91] Expunged.\r\n", [b"* VANISHED 4\r\n"]),
        }
    )
    _sent, answer = run(move_script(b"4", Atom(b"Trash"), uid=True, plan="uidplus"), upstream)
    assert answer.untagged == b"* OK [COPYUID 9 4 20] Moved UIDs.\r\n* VANISHED 4\r\n"
    assert answer.status_text == b"OK [HIGHESTMODSEQ 91] Move completed"


def test_sequence_move_is_turned_into_uids_first() -> None:
    upstream = scripted(
        {
            b"FETCH": (
                b"t OK Fetch completed.\r\n",
                [
                    b"* 1 FETCH (UID 10)\r\n",
                    b"* 7 FETCH (FLAGS (\\Seen) UID 30)\r\n",  # not asked for: the client's
                    b"* 2 FETCH (UID 11 FLAGS (\\Seen))\r\n",  # asked for, and news too
                    b"* 3 FETCH (UID 12)\r\n",
                ],
            ),
            b"UID COPY": (b"t OK [COPYUID 9 10:12 1:3] Copy completed.\r\n", []),
            b"UID STORE": OK_STORE,
            b"UID EXPUNGE": (b"t OK Expunge completed.\r\n", [b"* 1 EXPUNGE\r\n"] * 3),
        }
    )
    sent, answer = run(
        move_script(b"1:3", Quoted(b"Sent Items"), uid=False, plan="uidplus"), upstream
    )
    assert sent[:2] == [b"t FETCH 1:3 (UID)\r\n", b't UID COPY 10:12 "Sent Items"\r\n']
    assert answer.untagged.startswith(
        b"* 7 FETCH (FLAGS (\\Seen) UID 30)\r\n* 2 FETCH (UID 11 FLAGS (\\Seen))\r\n"
        b"* OK [COPYUID 9 10:12 1:3] Moved UIDs.\r\n* 1 EXPUNGE\r\n"
    )
    assert answer.status_text == b"OK Move completed"


def test_unrelated_untagged_data_is_passed_on_and_own_echoes_dropped() -> None:
    upstream = scripted(
        {
            b"UID COPY": (b"t OK [COPYUID 9 4 20] Copy completed.\r\n", [b"* 7 EXISTS\r\n"]),
            b"UID STORE": (
                b"t OK Store completed.\r\n",
                [
                    b"* 1 FETCH (UID 4 FLAGS (\\Deleted))\r\n",  # our own change: dropped
                    b"* 2 FETCH (UID 5 FLAGS (\\Seen))\r\n",  # another session's: kept
                ],
            ),
            b"UID EXPUNGE": (b"t OK Expunge completed.\r\n", [b"* 1 EXPUNGE\r\n"]),
        }
    )
    _sent, answer = run(move_script(b"4", Atom(b"Trash"), uid=True, plan="uidplus"), upstream)
    assert answer.untagged == (
        b"* 7 EXISTS\r\n* OK [COPYUID 9 4 20] Moved UIDs.\r\n"
        b"* 2 FETCH (UID 5 FLAGS (\\Seen))\r\n* 1 EXPUNGE\r\n"
    )


def test_copy_refused_ends_everything_with_its_answer() -> None:
    upstream = scripted({b"UID COPY": (b"t NO [TRYCREATE] Mailbox doesn't exist: Nope\r\n", [])})
    sent, answer = run(move_script(b"1", Atom(b"Nope"), uid=True, plan="uidplus"), upstream)
    assert sent == [b"t UID COPY 1 Nope\r\n"]  # never a STORE after a failed COPY
    assert answer == EmulationAnswer(b"", b"NO [TRYCREATE] Mailbox doesn't exist: Nope", "failed")


@pytest.mark.parametrize("failing", [b"UID STORE 1 +", b"UID EXPUNGE"])
def test_failure_after_the_copy_takes_deleted_off_the_originals(failing: bytes) -> None:
    replies = {
        b"UID COPY": (b"t OK [COPYUID 9 1 5] Copy completed.\r\n", []),
        b"UID STORE 1 -FLAGS.SILENT": OK_STORE,
        b"UID STORE 1 +FLAGS.SILENT": OK_STORE,
        b"UID EXPUNGE": (b"t OK Expunge completed.\r\n", []),
    }
    replies = {
        key: (b"t NO Mailbox is read-only\r\n", []) if key.startswith(failing) else value
        for key, value in replies.items()
    }
    sent, answer = run(
        move_script(b"1", Atom(b"Trash"), uid=True, plan="uidplus"), scripted(replies)
    )
    assert sent[-1] == b"t UID STORE 1 -FLAGS.SILENT (\\Deleted)\r\n"
    assert answer.outcome == "rolled_back"
    assert answer.status_text.startswith(b"NO MOVE failed (NO Mailbox is read-only)")


def test_failed_roll_back_says_where_the_messages_are() -> None:
    upstream = scripted(
        {
            b"UID COPY": (b"t OK [COPYUID 9 1 5] Copy completed.\r\n", []),
            b"UID STORE 1 +": OK_STORE,
            b"UID EXPUNGE": (b"t BAD Internal error\r\n", []),
            b"UID STORE 1 -": (b"t NO Internal error\r\n", []),
        }
    )
    _sent, answer = run(move_script(b"1", Atom(b"Trash"), uid=True, plan="uidplus"), upstream)
    assert answer.outcome == "failed"
    assert b"flagged \\Deleted, copies are in the target" in answer.status_text


def test_copy_ok_without_copyuid_touches_nothing() -> None:
    upstream = scripted({b"UID COPY": (b"t OK No messages found.\r\n", [])})
    sent, answer = run(move_script(b"99", Atom(b"Trash"), uid=True, plan="uidplus"), upstream)
    assert len(sent) == 1
    assert answer.status_text.startswith(b"OK")


def test_nothing_fetched_moves_nothing() -> None:
    upstream = scripted({b"UID FETCH": (b"t OK Fetch completed.\r\n", [])})
    sent, answer = run(move_script(b"3", Atom(b"Trash"), uid=True, plan="rfc4315"), upstream)
    assert sent == [b"t UID FETCH 3 (UID)\r\n"]
    assert answer.status_text.startswith(b"OK")


def test_a_star_in_a_uid_set_means_the_largest_uid() -> None:
    upstream = scripted(
        {
            b"UID FETCH": (
                b"t OK Fetch completed.\r\n",
                [b"* 1 FETCH (UID 5)\r\n", b"* 2 FETCH (UID 9)\r\n"],
            ),
            b"UID COPY": (b"t OK Copy completed.\r\n", []),
            b"UID STORE": OK_STORE,
        }
    )
    sent, _answer = run(move_script(b"4:*", Atom(b"T"), uid=True, plan="copy-and-flag"), upstream)
    assert sent[1] == b"t UID COPY 5,9 T\r\n"
    sent, _answer = run(move_script(b"12:*", Atom(b"T"), uid=True, plan="copy-and-flag"), upstream)
    assert sent[1] == b"t UID COPY 9 T\r\n"  # n:* takes in the largest UID (RFC 9051)


def test_copy_and_flag_leaves_the_expunge_to_the_client_and_shows_the_flag() -> None:
    upstream = scripted(
        {
            b"UID FETCH": (b"t OK Fetch completed.\r\n", [b"* 2 FETCH (UID 3)\r\n"]),
            b"UID COPY": (b"t OK Copy completed.\r\n", []),
            b"UID STORE": (
                b"t OK Store completed.\r\n",
                [b"* 2 FETCH (UID 3 FLAGS (\\Deleted))\r\n"],
            ),
        }
    )
    sent, answer = run(move_script(b"3", Atom(b"Trash"), uid=True, plan="copy-and-flag"), upstream)
    assert sent == [
        b"t UID FETCH 3 (UID)\r\n",
        b"t UID COPY 3 Trash\r\n",
        b"t UID STORE 3 +FLAGS (\\Deleted)\r\n",
    ]
    assert answer.untagged == b"* 2 FETCH (UID 3 FLAGS (\\Deleted))\r\n"
    assert answer.status_text.startswith(b"OK")


def test_rfc4315_keeps_other_deleted_messages_out_of_the_expunge() -> None:
    fixed = scripted(
        {
            b"UID FETCH": (
                b"t OK Fetch completed.\r\n",
                [b"* 3 FETCH (UID 3)\r\n", b"* 4 FETCH (UID 4)\r\n"],
            ),
            b"UID SEARCH DELETED": (b"t OK Search completed.\r\n", [b"* SEARCH 1 3 4 8\r\n"]),
            b"UID COPY": (b"t OK Copy completed.\r\n", []),
            b"UID STORE": OK_STORE,
            b"EXPUNGE": (b"t OK Expunge completed.\r\n", [b"* 3 EXPUNGE\r\n", b"* 3 EXPUNGE\r\n"]),
        }
    )

    sent, answer = run(move_script(b"3:4", Atom(b"Trash"), uid=True, plan="rfc4315"), fixed)
    assert sent == [
        b"t UID FETCH 3:4 (UID)\r\n",
        b"t UID COPY 3:4 Trash\r\n",
        b"t UID STORE 3:4 +FLAGS.SILENT (\\Deleted)\r\n",
        b"t UID SEARCH DELETED\r\n",
        b"t UID STORE 1,8 -FLAGS.SILENT (\\Deleted)\r\n",
        b"t EXPUNGE\r\n",
        b"t UID STORE 1,8 +FLAGS.SILENT (\\Deleted)\r\n",
    ]
    assert answer == EmulationAnswer(b"* 3 EXPUNGE\r\n* 3 EXPUNGE\r\n", b"OK Move completed", "ok")


# --- the action -------------------------------------------------------------------


def _view(*caps: str, authenticated: bool = True) -> SessionView:
    return SessionView(upstream_capabilities=list(caps), authenticated=authenticated)


@pytest.mark.parametrize(
    ("mode", "caps", "advertised"),
    [
        ("copy-and-flag", ("IMAP4rev1", "UIDPLUS"), True),
        ("off", ("IMAP4rev1", "UIDPLUS"), True),  # `off` is about upstreams without UIDPLUS
        ("off", ("IMAP4rev1",), False),
        ("copy-and-flag", ("IMAP4rev1",), True),
        ("copy-and-flag", ("IMAP4rev1", "MOVE", "UIDPLUS"), False),
    ],
)
def test_move_is_added_where_it_is_emulated(
    mode: str, caps: tuple[str, ...], advertised: bool
) -> None:
    action = EmulateMove(
        "r", MoveEmulationAction.model_validate({"type": "emulate_move", "mode": mode})
    )
    shaped = action.capabilities(list(caps), _view(*caps))
    assert (shaped == [*caps, "MOVE"]) is advertised
    assert shaped.count("MOVE") <= 1


def test_nothing_is_advertised_before_login() -> None:
    action = EmulateMove("r", MoveEmulationAction(type="emulate_move"))
    assert action.capabilities(
        ["IMAP4rev1"], _view("IMAP4rev1", "UIDPLUS", authenticated=False)
    ) == ["IMAP4rev1"]


@pytest.mark.parametrize(
    "args",
    [
        (Atom(b"1"),),
        (Atom(b"1:x"), Atom(b"Trash")),
        (Quoted(b"1"), Atom(b"Trash")),
        (Atom(b"1"), ParenList(())),
        (Atom(b"1"), LiteralString(None)),
    ],
)
def test_malformed_move_is_answered_bad(args: tuple[Atom, ...]) -> None:
    action = EmulateMove("r", MoveEmulationAction(type="emulate_move"))
    outcome = action.on_command(Command(b"a", "MOVE", args), _view("UIDPLUS"))
    assert outcome is not None and not hasattr(outcome, "script")
    assert outcome.status_text.startswith(b"BAD ")  # type: ignore[union-attr]


def test_uid_set_membership_matches_the_ranges() -> None:
    scattered = UidSet.of(range(1, 200_001, 2))  # 100 000 ranges of one
    assert 1 in scattered and 199_999 in scattered
    assert 2 not in scattered and 0 not in scattered and 200_001 not in scattered
    assert sum(1 for n in range(1, 20_001) if n in scattered) == 10_000
    assert 7 in UidSet.parse(b"5:9") and 10 not in UidSet.parse(b"5:9")  # type: ignore[operator]


def test_uid_sets_stay_ranges() -> None:
    assert UidSet.parse(b"1:4294967295") == UidSet(((1, 4294967295),))
    assert bytes(UidSet.parse(b"7,1:3,4") or UidSet(())) == b"1:4,7"
    assert UidSet.parse(b"1:*") is None and UidSet.parse(b"0") is None
    assert 5 not in UidSet.of([1, 2, 3, 7]) and 7 in UidSet.of([1, 2, 3, 7])
