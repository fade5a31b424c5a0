"""The delete-semantics actions, sans-IO: which commands they emulate, the scripts they run
against a scripted upstream, and the state they keep (last COPY, this session's UIDs)."""

from __future__ import annotations

import pytest

from imap_proxy.quirks.actions import Emulate, EmulationAnswer, LocalAnswer
from imap_proxy.quirks.actions.deletes import DeleteToTrash, ScopeExpunge, _minus, _union
from imap_proxy.quirks.actions.uidset import UidSet
from imap_proxy.quirks.engine import SessionView
from imap_proxy.quirks.model import DeleteToTrashAction, ScopeExpungeAction
from imap_proxy.wire.command import Command, parse_command
from imap_proxy.wire.message import Message
from tests.quirks.test_move import run, scripted

CAPS = ["IMAP4rev1", "MOVE", "UIDPLUS", "UNSELECT"]


def cmd(line: bytes) -> Command:
    return parse_command(Message.from_line(line + b"\r\n"))


def view(caps: list[str] = CAPS, trash: bytes | None = b"Trash") -> SessionView:
    attributes = {b"INBOX": frozenset()} if trash is None else {trash: frozenset({"\\trash"})}
    return SessionView(
        family="outlook-classic",
        confidence=1.0,
        authenticated=True,
        upstream_capabilities=caps,
        mailbox_attributes=attributes,
    )


def deleter(**spec: object) -> DeleteToTrash:
    return DeleteToTrash(
        "d", DeleteToTrashAction.model_validate({"type": "delete_to_trash", **spec})
    )


def selected(action: DeleteToTrash, seen: SessionView, mailbox: bytes = b"INBOX") -> None:
    assert action.on_command(cmd(b"s SELECT " + mailbox), seen) is None


# --- delete to trash ---------------------------------------------------------------------


def test_a_uid_store_deleted_becomes_a_native_uid_move_to_the_trash() -> None:
    action, seen = deleter(), view()
    selected(action, seen)
    outcome = action.on_command(cmd(b"t UID STORE 4 +FLAGS (\\Deleted)"), seen)
    assert isinstance(outcome, Emulate)
    upstream = scripted(
        {
            b"UID MOVE": (
                b"t OK Move completed.\r\n",
                [b"* OK [COPYUID 9 4 7] Moved UIDs.\r\n", b"* 2 EXPUNGE\r\n"],
            )
        }
    )
    sent, answer = run(outcome.script, upstream)
    assert sent == [b't UID MOVE 4 "Trash"\r\n']
    # The client asked for a STORE: it sees the message go, not a MOVE's COPYUID.
    assert answer == EmulationAnswer(
        b"* 2 EXPUNGE\r\n", b"OK STORE completed: moved to the trash", "ok"
    )


def test_without_move_the_move_emulation_does_it_by_uid() -> None:
    action, seen = deleter(), view(["IMAP4rev1", "UIDPLUS"])
    selected(action, seen)
    outcome = action.on_command(cmd(b"t STORE 2 +FLAGS.SILENT (\\deleted)"), seen)
    assert isinstance(outcome, Emulate)
    upstream = scripted(
        {
            b"FETCH": (b"t OK Fetch completed.\r\n", [b"* 2 FETCH (UID 8)\r\n"]),
            b"UID COPY": (b"t OK [COPYUID 9 8 3] Copy completed.\r\n", []),
            b"UID STORE": (b"t OK Store completed.\r\n", []),
            b"UID EXPUNGE": (b"t OK Expunge completed.\r\n", [b"* 2 EXPUNGE\r\n"]),
        }
    )
    sent, answer = run(outcome.script, upstream)
    assert sent == [
        b"t FETCH 2 (UID)\r\n",
        b't UID COPY 8 "Trash"\r\n',
        b"t UID STORE 8 +FLAGS.SILENT (\\Deleted)\r\n",
        b"t UID EXPUNGE 8\r\n",
    ]
    assert answer.untagged == b"* 2 EXPUNGE\r\n"
    assert answer.status_text == b"OK STORE completed: moved to the trash"


def test_a_failed_move_falls_back_to_the_clients_own_store() -> None:
    action, seen = deleter(), view()
    selected(action, seen)
    outcome = action.on_command(cmd(b"t UID STORE 4 +FLAGS (\\Deleted)"), seen)
    assert isinstance(outcome, Emulate)
    upstream = scripted(
        {
            b"UID MOVE": (b"t NO [TRYCREATE] Mailbox doesn't exist: Trash\r\n", []),
            b"UID STORE": (
                b"t OK Store completed.\r\n",
                [b"* 1 FETCH (UID 4 FLAGS (\\Deleted))\r\n"],
            ),
        }
    )
    sent, answer = run(outcome.script, upstream)
    assert sent == [b't UID MOVE 4 "Trash"\r\n', b"t UID STORE 4 +FLAGS (\\Deleted)\r\n"]
    assert answer.untagged == b"* 1 FETCH (UID 4 FLAGS (\\Deleted))\r\n"
    assert answer.status_text == (
        b"OK STORE completed (moving to the trash failed: "
        b"NO [TRYCREATE] Mailbox doesn't exist: Trash)"
    )
    assert answer.outcome == "fell_back"


def test_a_failed_emulated_move_rolls_back_then_flags_as_asked() -> None:
    action, seen = deleter(), view(["IMAP4rev1", "UIDPLUS"])
    selected(action, seen)
    outcome = action.on_command(cmd(b"t UID STORE 4 +FLAGS (\\Deleted)"), seen)
    assert isinstance(outcome, Emulate)
    stores: list[bytes] = []

    def upstream(line: bytes) -> tuple[bytes, list[bytes]]:
        if line.startswith(b"t UID COPY"):
            return b"t OK [COPYUID 9 4 3] Copy completed.\r\n", []
        if line.startswith(b"t UID STORE"):
            stores.append(line)
            return b"t OK Store completed.\r\n", []
        assert line.startswith(b"t UID EXPUNGE")
        return b"t NO Expunge failed.\r\n", []

    _sent, answer = run(outcome.script, upstream)
    assert stores == [
        b"t UID STORE 4 +FLAGS.SILENT (\\Deleted)\r\n",
        b"t UID STORE 4 -FLAGS.SILENT (\\Deleted)\r\n",  # the move's roll-back
        b"t UID STORE 4 +FLAGS (\\Deleted)\r\n",  # the client's own STORE
    ]
    assert answer.status_text.startswith(b"OK STORE completed (moving to the trash failed: NO")


def test_no_sequence_store_after_the_numbers_moved() -> None:
    """An EXPUNGE (another session's) arrived with the failed MOVE: the client's numbers
    no longer mean the same messages, so nothing is flagged by number."""
    action, seen = deleter(), view()
    selected(action, seen)
    outcome = action.on_command(cmd(b"t STORE 3 +FLAGS (\\Deleted)"), seen)
    assert isinstance(outcome, Emulate)
    upstream = scripted({b"MOVE": (b"t NO Move failed.\r\n", [b"* 1 EXPUNGE\r\n"])})
    sent, answer = run(outcome.script, upstream)
    assert sent == [b't MOVE 3 "Trash"\r\n']
    assert answer.untagged == b"* 1 EXPUNGE\r\n"
    assert answer.status_text.startswith(b"NO Moving to the trash failed")
    assert answer.outcome == "failed"


@pytest.mark.parametrize(
    "command",
    [
        b"t STORE 1 +FLAGS (\\Deleted \\Seen)",  # the move would lose \Seen
        b"t STORE 1 -FLAGS (\\Deleted)",
        b"t STORE 1 FLAGS (\\Deleted)",
        b"t STORE 1 +FLAGS (\\Seen)",
        b"t STORE 1 (UNCHANGEDSINCE 5) +FLAGS (\\Deleted)",
    ],
)
def test_other_stores_pass(command: bytes) -> None:
    action, seen = deleter(), view()
    selected(action, seen)
    assert action.on_command(cmd(command), seen) is None


def test_deleting_in_the_trash_or_read_only_stays_a_flag() -> None:
    action, seen = deleter(), view()
    selected(action, seen, b"Trash")
    assert action.on_command(cmd(b"t STORE 1 +FLAGS (\\Deleted)"), seen) is None
    assert action.on_command(cmd(b"e EXAMINE INBOX"), seen) is None
    assert action.on_command(cmd(b"t STORE 1 +FLAGS (\\Deleted)"), seen) is None
    assert action.on_command(cmd(b"c CLOSE"), seen) is None
    assert action.on_command(cmd(b"t STORE 1 +FLAGS (\\Deleted)"), seen) is None


def test_without_move_nor_uidplus_nothing_is_moved() -> None:
    action, seen = deleter(), view(["IMAP4rev1"])
    selected(action, seen)
    assert action.on_command(cmd(b"t STORE 1 +FLAGS (\\Deleted)"), seen) is None


def test_the_trash_folder_parameter_serves_where_no_list_shows_a_trash() -> None:
    seen = view(trash=None)
    silent = deleter()
    selected(silent, seen)
    assert silent.on_command(cmd(b"t UID STORE 4 +FLAGS (\\Deleted)"), seen) is None
    action = deleter(trash_folder="Deleted")
    selected(action, seen)
    outcome = action.on_command(cmd(b"t UID STORE 4 +FLAGS (\\Deleted)"), seen)
    assert isinstance(outcome, Emulate)
    sent, _answer = run(outcome.script, scripted({b"UID MOVE": (b"t OK Done\r\n", [])}))
    assert sent == [b't UID MOVE 4 "Deleted"\r\n']


def test_the_mailbox_list_is_learnt_once_when_no_mailbox_is_known() -> None:
    action = deleter()
    seen = SessionView(authenticated=True, upstream_capabilities=CAPS)
    store = cmd(b"t STORE 1 +FLAGS (\\Deleted)")
    assert action.wants_mailbox_list(store, seen)
    assert not action.wants_mailbox_list(store, seen)
    assert not deleter().wants_mailbox_list(cmd(b"t STORE 1 +FLAGS (\\Seen)"), seen)


# --- client-driven moves -------------------------------------------------------------


def test_copy_then_deleted_of_the_same_set_is_the_clients_move() -> None:
    action, seen = deleter(), view()
    selected(action, seen)
    assert action.on_command(cmd(b"c UID COPY 4:5 Sent"), seen) is None
    assert action.on_tagged(b"c", "UID COPY", b"c OK Copy completed\r\n", seen, None) is None
    # 4,5 is 4:5: the same messages, so the flag stays a flag (they are in Sent already).
    assert action.on_command(cmd(b"d UID STORE 4,5 +FLAGS (\\Deleted)"), seen) is None
    # Only once: the next delete is a delete again.
    assert isinstance(action.on_command(cmd(b"e UID STORE 4,5 +FLAGS (\\Deleted)"), seen), Emulate)


def test_a_refresh_between_copy_and_delete_makes_it_the_users_delete() -> None:
    action, seen = deleter(), view()
    selected(action, seen)
    action.on_command(cmd(b"c COPY 1 Sent"), seen)
    action.on_tagged(b"c", "COPY", b"c OK Copy completed\r\n", seen, None)
    action.on_tagged(b"n", "NOOP", b"n OK NOOP completed\r\n", seen, None)
    assert isinstance(action.on_command(cmd(b"d STORE 1 +FLAGS (\\Deleted)"), seen), Emulate)


@pytest.mark.parametrize(
    "copy",
    [b"c COPY 2 Sent", b"c UID COPY 1 Sent", b"c COPY 1:2 Sent"],
)
def test_a_copy_of_other_messages_does_not_count(copy: bytes) -> None:
    action, seen = deleter(), view()
    selected(action, seen)
    action.on_command(cmd(copy), seen)
    assert isinstance(action.on_command(cmd(b"d STORE 1 +FLAGS (\\Deleted)"), seen), Emulate)


def test_another_command_in_flight_breaks_the_pair() -> None:
    action = deleter()
    seen = view()
    selected(action, seen)
    action.on_command(cmd(b"c COPY 1 Sent"), seen)
    seen.client_commands = lambda: [(b"c", "COPY"), (b"f", "FETCH")]
    assert isinstance(action.on_command(cmd(b"d STORE 1 +FLAGS (\\Deleted)"), seen), Emulate)


def test_client_moves_to_trash_treats_them_like_any_delete() -> None:
    action, seen = deleter(client_moves="to-trash"), view()
    selected(action, seen)
    action.on_command(cmd(b"c COPY 1 Sent"), seen)
    assert isinstance(action.on_command(cmd(b"d STORE 1 +FLAGS (\\Deleted)"), seen), Emulate)


# --- expunge scoping -----------------------------------------------------------------


def scoper(caps: list[str] = CAPS) -> tuple[ScopeExpunge, SessionView]:
    action = ScopeExpunge("x", ScopeExpungeAction(type="scope_expunge"))
    seen = view(caps)
    assert action.on_command(cmd(b"s SELECT INBOX"), seen) is None
    return action, seen


def fetched(action: ScopeExpunge, *lines: bytes) -> None:
    for line in lines:
        kind = line.split(b" ", 3)[2].rstrip(b"\r\n").decode()
        assert action.on_untagged_line(kind, line, True, lambda: []) is False


def expunge_sent(action: ScopeExpunge, seen: SessionView, reply: list[bytes]) -> tuple[bytes, ...]:
    outcome = action.on_command(cmd(b"x EXPUNGE"), seen)
    assert isinstance(outcome, Emulate)
    sent, answer = run(
        outcome.script, scripted({b"UID EXPUNGE": (b"t OK Expunge completed.\r\n", reply)})
    )
    assert answer.untagged == b"".join(reply)
    assert answer.status_text == b"OK Expunge completed."
    return tuple(sent)


def test_expunge_with_nothing_deleted_here_is_answered_locally() -> None:
    action, seen = scoper()
    outcome = action.on_command(cmd(b"x EXPUNGE"), seen)
    assert outcome == LocalAnswer(b"", b"OK EXPUNGE completed (no message this session deleted)")


def test_expunge_removes_only_the_uids_this_session_flagged() -> None:
    action, seen = scoper()
    fetched(action, b"* 3 EXISTS\r\n", b"* 1 FETCH (UID 10)\r\n", b"* 2 FETCH (UID 11)\r\n")
    fetched(action, b"* 3 FETCH (UID 12 FLAGS ())\r\n")
    assert action.on_command(cmd(b"a STORE 2 +FLAGS (\\Deleted)"), seen) is None
    assert action.on_command(cmd(b"b UID STORE 12 +FLAGS.SILENT (\\Deleted)"), seen) is None
    assert expunge_sent(action, seen, [b"* 3 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n"]) == (
        b"t UID EXPUNGE 11:12\r\n",
    )
    # Expunged: the next EXPUNGE has nothing of this session's to remove.
    assert isinstance(action.on_command(cmd(b"x EXPUNGE"), seen), LocalAnswer)


def test_unflagging_takes_uids_out_again() -> None:
    action, seen = scoper()
    action.on_command(cmd(b"a UID STORE 5:9 +FLAGS (\\Deleted)"), seen)
    action.on_command(cmd(b"b UID STORE 7 -FLAGS (\\Deleted)"), seen)
    action.on_command(cmd(b"c UID STORE 9 FLAGS (\\Seen)"), seen)  # replaces: no \Deleted
    action.on_command(cmd(b"d UID STORE 5 +FLAGS (\\Seen)"), seen)  # \Deleted untouched
    assert expunge_sent(action, seen, []) == (b"t UID EXPUNGE 5:6,8\r\n",)


def test_numbers_follow_the_expunges_the_client_was_told_about() -> None:
    action, seen = scoper()
    fetched(action, b"* 2 EXISTS\r\n", b"* 1 FETCH (UID 10)\r\n", b"* 2 FETCH (UID 11)\r\n")
    fetched(action, b"* 1 EXPUNGE\r\n")
    action.on_command(cmd(b"a STORE 1 +FLAGS (\\Deleted)"), seen)  # now UID 11
    assert expunge_sent(action, seen, [b"* 1 EXPUNGE\r\n"]) == (b"t UID EXPUNGE 11\r\n",)


def test_unknown_uids_are_fetched_before_the_clients_store() -> None:
    action, seen = scoper()
    fetched(action, b"* 2 EXISTS\r\n", b"* 1 FETCH (UID 10)\r\n")
    outcome = action.on_command(cmd(b"a STORE 1:2 +FLAGS (\\Deleted)"), seen)
    assert isinstance(outcome, Emulate)
    upstream = scripted(
        {
            b"FETCH": (
                b"t OK Fetch completed.\r\n",
                [b"* 1 FETCH (UID 10)\r\n", b"* 2 FETCH (UID 13)\r\n"],
            ),
            b"STORE": (
                b"t OK Store completed.\r\n",
                [b"* 1 FETCH (FLAGS (\\Deleted))\r\n", b"* 2 FETCH (FLAGS (\\Deleted))\r\n"],
            ),
        }
    )
    sent, answer = run(outcome.script, upstream)
    assert sent == [b"t FETCH 1:2 (UID)\r\n", b"t STORE 1:2 +FLAGS (\\Deleted)\r\n"]
    # The UID lookup is the proxy's; the STORE's answer is the client's.
    assert answer == EmulationAnswer(
        b"* 1 FETCH (FLAGS (\\Deleted))\r\n* 2 FETCH (FLAGS (\\Deleted))\r\n",
        b"OK Store completed.",
        "ok",
    )
    assert expunge_sent(action, seen, []) == (b"t UID EXPUNGE 10,13\r\n",)


def test_a_uid_store_to_star_counts_up_to_the_largest_uid_learnt() -> None:
    action, seen = scoper()
    fetched(action, b"* 2 EXISTS\r\n", b"* 1 FETCH (UID 10)\r\n", b"* 2 FETCH (UID 11)\r\n")
    action.on_command(cmd(b"a UID STORE 11:* +FLAGS (\\Deleted)"), seen)
    assert expunge_sent(action, seen, []) == (b"t UID EXPUNGE 11\r\n",)


def test_deletions_belong_to_their_mailbox() -> None:
    action, seen = scoper()
    action.on_command(cmd(b"a UID STORE 4 +FLAGS (\\Deleted)"), seen)
    action.on_command(cmd(b"s SELECT Sent"), seen)
    assert isinstance(action.on_command(cmd(b"x EXPUNGE"), seen), LocalAnswer)
    action.on_command(cmd(b"s SELECT INBOX"), seen)
    assert expunge_sent(action, seen, []) == (b"t UID EXPUNGE 4\r\n",)


def test_a_failed_uid_expunge_keeps_the_uids_for_the_next_one() -> None:
    action, seen = scoper()
    action.on_command(cmd(b"a UID STORE 4 +FLAGS (\\Deleted)"), seen)
    outcome = action.on_command(cmd(b"x EXPUNGE"), seen)
    assert isinstance(outcome, Emulate)
    _sent, answer = run(outcome.script, scripted({b"UID EXPUNGE": (b"t NO Busy\r\n", [])}))
    assert answer == EmulationAnswer(b"", b"NO Busy", "failed")
    assert expunge_sent(action, seen, []) == (b"t UID EXPUNGE 4\r\n",)


def test_close_expunges_this_sessions_uids_then_unselects() -> None:
    action, seen = scoper()
    action.on_command(cmd(b"a UID STORE 4 +FLAGS (\\Deleted)"), seen)
    outcome = action.on_command(cmd(b"c CLOSE"), seen)
    assert isinstance(outcome, Emulate)
    upstream = scripted(
        {
            b"UID EXPUNGE": (b"t OK Expunge completed.\r\n", [b"* 1 EXPUNGE\r\n"]),
            b"UNSELECT": (b"t OK Unselect completed.\r\n", []),
        }
    )
    sent, answer = run(outcome.script, upstream)
    assert sent == [b"t UID EXPUNGE 4\r\n", b"t UNSELECT\r\n"]
    assert answer == EmulationAnswer(b"", b"OK CLOSE completed", "ok")  # CLOSE: no EXPUNGE


def test_close_without_unselect_upstream_examines_a_mailbox_that_cannot_exist() -> None:
    action, seen = scoper(["IMAP4rev1", "UIDPLUS"])
    outcome = action.on_command(cmd(b"c CLOSE"), seen)
    assert isinstance(outcome, Emulate)
    upstream = scripted(
        {b"EXAMINE": (b"t NO Mailbox doesn't exist\r\n", [b"* OK [CLOSED] Closed.\r\n"])}
    )
    sent, answer = run(outcome.script, upstream)
    assert sent == [b't EXAMINE "imap-proxy/no such mailbox/unselect"\r\n']
    assert answer == EmulationAnswer(b"* OK [CLOSED] Closed.\r\n", b"OK CLOSE completed", "ok")


def test_without_uidplus_expunge_and_close_pass() -> None:
    action, seen = scoper(["IMAP4rev1"])
    action.on_command(cmd(b"a UID STORE 4 +FLAGS (\\Deleted)"), seen)
    assert action.on_command(cmd(b"x EXPUNGE"), seen) is None
    assert action.on_command(cmd(b"c CLOSE"), seen) is None


def test_uid_set_arithmetic_stays_in_ranges() -> None:
    whole = UidSet.parse(b"1:4294967295")
    assert whole is not None
    cut = _minus(whole, UidSet.of([5, 7, 8]))
    assert bytes(cut) == b"1:4,6,9:4294967295"
    assert bytes(_union(cut, UidSet.of([5]))) == b"1:6,9:4294967295"
    assert bytes(_minus(UidSet.of([1, 2]), UidSet.of([3]))) == b"1:2"
    assert not _minus(UidSet.of([3]), UidSet.of([1, 2, 3, 4]))


def test_a_read_only_mailbox_is_left_to_the_upstream() -> None:
    action, seen = scoper()
    action.on_command(cmd(b"a UID STORE 4 +FLAGS (\\Deleted)"), seen)
    action.on_command(cmd(b"e EXAMINE INBOX"), seen)
    assert action.on_command(cmd(b"x EXPUNGE"), seen) is None
    assert action.on_command(cmd(b"c CLOSE"), seen) is None


def test_the_tagged_ok_of_uid_expunge_is_relayed_with_its_code() -> None:
    action, seen = scoper()
    action.on_command(cmd(b"a UID STORE 4 +FLAGS (\\Deleted)"), seen)
    outcome = action.on_command(cmd(b"x EXPUNGE"), seen)
    assert isinstance(outcome, Emulate)
    upstream = scripted({b"UID EXPUNGE": (b"t OK [HIGHESTMODSEQ 9] Expunged.\r\n", [])})
    _sent, answer = run(outcome.script, upstream)
    assert answer == EmulationAnswer(b"", b"OK [HIGHESTMODSEQ 9] Expunged.", "ok")


def test_a_refused_store_takes_back_only_the_uids_it_added() -> None:
    action, seen = scoper()
    action.on_command(cmd(b"a UID STORE 4 +FLAGS (\\Deleted)"), seen)
    assert action.on_tagged(b"a", "UID STORE", b"a OK Stored\r\n", seen, None) is None
    action.on_command(cmd(b"b UID STORE 4:6 +FLAGS (\\Deleted)"), seen)
    assert action.on_tagged(b"b", "UID STORE", b"b NO [CANNOT] No\r\n", seen, None) is None
    assert expunge_sent(action, seen, []) == (b"t UID EXPUNGE 4\r\n",)
