"""LIST-STATUS emulation (RFC 5819) through a sans-IO session: the upstream commands it
sends, the order of the client's answer, and how it composes with the special-folder
mapping and the special-use synthesis (the answer passes through their reply rewriting).

Each test is a transcript (see tests/support/transcript.py) replayed whole, byte at a
time and in random chunks, with shipped rules whose client match is lifted.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from imap_proxy.quirks.actions.base import Emulate, LocalAnswer, Rewrite, UpstreamCommand
from imap_proxy.quirks.actions.liststatus import EmulateListStatus, list_status_script
from imap_proxy.quirks.engine import SessionView
from imap_proxy.quirks.model import ListStatusAction, LoadedRule, Match, RuleSet, load_rules
from imap_proxy.session import events as ev
from imap_proxy.session.settings import SessionSettings
from imap_proxy.wire.command import Command
from imap_proxy.wire.syntax import Atom, LiteralString, ParenList, Quoted, Value
from tests.quirks.test_move import run, scripted
from tests.support.transcript import CHUNKERS_FOR_UNIT, expected_outputs, parse, replay

SHIPPED = load_rules()
GREETING = "S: * OK [CAPABILITY IMAP4rev1 UIDPLUS LITERAL+] legacy\n"
LOGIN = "C: a0 LOGIN alice secret\nS: a0 OK Logged in\n"


def rules(*rule_ids: str) -> RuleSet:
    chosen = SHIPPED.only(rule_ids)
    lifted = tuple(
        LoadedRule(loaded.rule.model_copy(update={"match": Match()}), loaded.source)
        for loaded in chosen.rules
    )
    return RuleSet(lifted, "test")


def check(text: str, ruleset: RuleSet) -> list[ev.Event]:
    steps = parse(text)
    chosen = SessionSettings(rules=ruleset)
    for chunks in CHUNKERS_FOR_UNIT:
        result = replay(steps, chunks, chosen)
        want_client, want_upstream = expected_outputs(steps)
        assert result.to_client == want_client
        assert result.to_upstream == want_upstream
    return result.events


def finished(events: list[ev.Event]) -> list[str]:
    return [e.outcome for e in events if isinstance(e, ev.EmulationFinished)]


LIST_STATUS = rules("list-status-emulation")


def test_each_list_line_is_followed_by_its_status_and_noselect_gets_none() -> None:
    events = check(
        GREETING
        + LOGIN
        + r"""
c: a1 LIST "" "*" RETURN (STATUS (MESSAGES UNSEEN))
>s: ipx1 LIST "" "*"
s: * LIST (\HasNoChildren) "." INBOX
s: * LIST (\Noselect \HasChildren) "." Archive
s: * LIST (\HasNoChildren) "." "Archive.2024"
s: * 3 EXISTS
s: ipx1 OK List completed
>s: ipx2 STATUS INBOX (MESSAGES UNSEEN)
s: * STATUS INBOX (MESSAGES 3 UNSEEN 1)
s: ipx2 OK Status completed
>s: ipx3 STATUS "Archive.2024" (MESSAGES UNSEEN)
s: * STATUS "Archive.2024" (MESSAGES 7 UNSEEN 0)
s: ipx3 OK Status completed
>c: * 3 EXISTS
>c: * LIST (\HasNoChildren) "." INBOX
>c: * STATUS INBOX (MESSAGES 3 UNSEEN 1)
>c: * LIST (\Noselect \HasChildren) "." Archive
>c: * LIST (\HasNoChildren) "." "Archive.2024"
>c: * STATUS "Archive.2024" (MESSAGES 7 UNSEEN 0)
>c: a1 OK LIST completed
""",
        LIST_STATUS,
    )
    assert finished(events) == ["ok"]


def test_list_status_is_advertised_after_login_only() -> None:
    check(
        GREETING
        + r"""
C: a1 CAPABILITY
S: * CAPABILITY IMAP4rev1 UIDPLUS LITERAL+
S: a1 OK done
C: a2 LOGIN alice secret
S: a2 OK Logged in
C: a3 CAPABILITY
s: * CAPABILITY IMAP4rev1 UIDPLUS LITERAL+
>c: * CAPABILITY IMAP4rev1 UIDPLUS LITERAL+ LIST-STATUS
S: a3 OK done
""",
        LIST_STATUS,
    )


def test_an_upstream_with_list_status_gets_the_command_unchanged() -> None:
    events = check(
        "S: * OK [CAPABILITY IMAP4rev1 LIST-EXTENDED LIST-STATUS LITERAL+] modern\n"
        + LOGIN
        + r"""
C: a1 LIST "" "*" RETURN (STATUS (MESSAGES))
S: * LIST () "." INBOX
S: * STATUS INBOX (MESSAGES 1)
S: a1 OK done
""",
        LIST_STATUS,
    )
    assert finished(events) == []


def test_a_gone_mailbox_has_no_status_and_unknown_items_fall_back_or_end_with_bad() -> None:
    check(
        GREETING
        + LOGIN
        + r"""
c: a1 LIST "" "%" RETURN (STATUS (MESSAGES))
>s: ipx1 LIST "" "%"
s: * LIST () "." INBOX
s: * LIST () "." Gone
s: ipx1 OK done
>s: ipx2 STATUS INBOX (MESSAGES)
s: * STATUS INBOX (MESSAGES 2)
s: ipx2 OK done
>s: ipx3 STATUS "Gone" (MESSAGES)
s: ipx3 NO Mailbox doesn't exist: Gone
>c: * LIST () "." INBOX
>c: * STATUS INBOX (MESSAGES 2)
>c: * LIST () "." Gone
>c: a1 OK LIST completed
c: a2 LIST "" "%" RETURN (STATUS (HIGHESTMODSEQ))
>s: ipx4 LIST "" "%"
s: * LIST () "." INBOX
s: ipx4 OK done
>s: ipx5 STATUS INBOX (HIGHESTMODSEQ)
s: ipx5 BAD Unknown STATUS item
>c: a2 BAD Unknown STATUS item
c: a3 LIST "" "%" RETURN (STATUS (MESSAGES HIGHESTMODSEQ))
>s: ipx6 LIST "" "%"
s: * LIST () "." INBOX
s: * LIST () "." Sent
s: ipx6 OK done
>s: ipx7 STATUS INBOX (MESSAGES HIGHESTMODSEQ)
s: ipx7 BAD Unknown STATUS item
>s: ipx8 STATUS INBOX (MESSAGES)
s: * STATUS INBOX (MESSAGES 2)
s: ipx8 OK done
>s: ipx9 STATUS "Sent" (MESSAGES)
s: * STATUS Sent (MESSAGES 0)
s: ipx9 OK done
>c: * LIST () "." INBOX
>c: * STATUS INBOX (MESSAGES 2)
>c: * LIST () "." Sent
>c: * STATUS Sent (MESSAGES 0)
>c: a3 OK LIST completed
""",
        LIST_STATUS,
    )


def test_unknown_or_malformed_return_options_get_bad() -> None:
    check(
        GREETING
        + LOGIN
        + r"""
c: a1 LIST "" "*" RETURN (STATUS (MESSAGES BOGUS))
>c: a1 BAD Invalid arguments: RETURN takes a list of options
c: a2 LIST "" "*" RETURN (FROBNICATE)
>c: a2 BAD Invalid arguments: RETURN takes a list of options
c: a3 LIST "" "*" RETURN STATUS
>c: a3 BAD Invalid arguments: RETURN takes a list of options
c: a4 LIST "" "*" RETURN (STATUS)
>c: a4 BAD Invalid arguments: RETURN takes a list of options
""",
        LIST_STATUS,
    )


def test_subscribed_return_option_comes_from_lsub_and_patterns_may_be_a_list() -> None:
    check(
        GREETING
        + LOGIN
        + r"""
c: a1 LIST "" ("INBOX" "Sent*") RETURN (SUBSCRIBED CHILDREN)
>s: ipx1 LIST "" "INBOX"
s: * LIST (\HasNoChildren) "." INBOX
s: ipx1 OK done
>s: ipx2 LIST "" "Sent*"
s: * LIST (\HasNoChildren) "." Sent
s: * LIST (\HasNoChildren) "." INBOX
s: ipx2 OK done
>s: ipx3 LSUB "" "INBOX"
s: ipx3 OK done
>s: ipx4 LSUB "" "Sent*"
s: * LSUB () "." Sent
s: ipx4 OK done
>c: * LIST (\HasNoChildren) "." INBOX
>c: * LIST (\HasNoChildren \Subscribed) "." "Sent"
>c: a1 OK LIST completed
""",
        LIST_STATUS,
    )


def test_selection_options_and_special_use_alone_go_upstream_unchanged() -> None:
    check(
        GREETING
        + LOGIN
        + r"""
C: a1 LIST (SUBSCRIBED) "" "*" RETURN (STATUS (MESSAGES))
S: a1 BAD not supported
C: a2 LIST "" "*" RETURN (SPECIAL-USE)
S: a2 OK done
C: a3 LIST "" "*"
S: a3 OK done
c: a4 LIST "" "*" RETURN ()
>s: a4 LIST "" "*"
S: a4 OK done
""",
        LIST_STATUS,
    )


@given(
    st.lists(
        st.sampled_from(
            [
                Atom(b"RETURN"),
                Atom(b"STATUS"),
                Atom(b"SUBSCRIBED"),
                Atom(b"MESSAGES"),
                Quoted(b""),
                Quoted(b"*"),
                LiteralString(None),
                ParenList(()),
                ParenList((Atom(b"STATUS"), ParenList((Atom(b"UNSEEN"),)))),
                ParenList((Atom(b"STATUS"),)),
                ParenList((Quoted(b"a"), Quoted(b"b"))),
                ParenList((Atom(b"SPECIAL-USE"),)),
            ]
        ),
        max_size=6,
    )
)
@settings(max_examples=300, deadline=None)
def test_any_list_arguments_get_an_answer_or_pass_never_an_error(args: list[Value]) -> None:
    view = SessionView(authenticated=True, upstream_capabilities=["IMAP4rev1"])
    action = EmulateListStatus(
        "list-status-emulation", ListStatusAction(type="emulate_list_status")
    )
    outcome = action.on_command(Command(b"a", "LIST", tuple(args)), view)
    assert outcome is None or isinstance(outcome, LocalAnswer | Rewrite | Emulate)
    if isinstance(outcome, Emulate):
        first = next(outcome.script)
        assert first.name == "LIST"


def test_the_status_cap_is_said_in_the_tagged_ok() -> None:
    lines = [b'* LIST () "." "box%d"\r\n' % n for n in range(5)]
    upstream = scripted(
        {
            b"LIST": (b"t OK done\r\n", lines),
            b"STATUS": (b"t OK done\r\n", []),
        }
    )
    listing = UpstreamCommand("LIST", (Quoted(b""), Quoted(b"*")))
    items = (Atom(b"MESSAGES"),)
    sent, answer = run(list_status_script([listing], [], items, 2), upstream)
    assert sent[1:] == [b't STATUS "box0" (MESSAGES)\r\n', b't STATUS "box1" (MESSAGES)\r\n']
    assert answer.status_text == b"OK LIST completed; STATUS left out for 3 mailboxes (limit 2)"
    assert answer.outcome == "limited"
    assert answer.untagged == b"".join(lines)  # no STATUS data came: none is made up


def test_upstream_with_list_extended_keeps_the_other_options() -> None:
    check(
        "S: * OK [CAPABILITY IMAP4rev1 LIST-EXTENDED LITERAL+] extended\n"
        + LOGIN
        + r"""
c: a1 LIST (SUBSCRIBED) "" "*" RETURN (CHILDREN STATUS (MESSAGES))
>s: ipx1 LIST (SUBSCRIBED) "" "*" RETURN (CHILDREN)
s: * LIST (\Subscribed \HasNoChildren) "." INBOX
s: ipx1 OK done
>s: ipx2 STATUS INBOX (MESSAGES)
s: * STATUS INBOX (MESSAGES 4)
s: ipx2 OK done
>c: * LIST (\Subscribed \HasNoChildren) "." INBOX
>c: * STATUS INBOX (MESSAGES 4)
>c: a1 OK LIST completed
""",
        LIST_STATUS,
    )


# --- composition with the special-folder rules -----------------------------------------


def test_the_mapping_renames_the_emulated_answer_and_hides_duplicates_with_their_status() -> None:
    # Outlook's "Deleted Items" is the upstream's "Deleted"; an upstream folder really
    # named "Deleted Items" is hidden, its STATUS too.
    events = check(
        GREETING
        + LOGIN
        + r"""
C: l1 LIST "" "*"
S: * LIST (\HasNoChildren) "." INBOX
s: * LIST (\HasNoChildren) "." Deleted
>c: * LIST (\HasNoChildren \Trash) "." "Deleted Items"
s: * LIST (\HasNoChildren) "." "Deleted Items"
S: l1 OK done
c: a1 LIST "" "*" RETURN (STATUS (MESSAGES))
>s: ipx1 LIST "" "*"
s: * LIST (\HasNoChildren) "." INBOX
s: * LIST (\HasNoChildren) "." Deleted
s: * LIST (\HasNoChildren) "." "Deleted Items"
s: ipx1 OK done
>s: ipx2 STATUS INBOX (MESSAGES)
s: * STATUS INBOX (MESSAGES 1)
s: ipx2 OK done
>s: ipx3 STATUS "Deleted" (MESSAGES)
s: * STATUS Deleted (MESSAGES 2)
s: ipx3 OK done
>s: ipx4 STATUS "Deleted Items" (MESSAGES)
s: * STATUS "Deleted Items" (MESSAGES 9)
s: ipx4 OK done
>c: * LIST (\HasNoChildren) "." INBOX
>c: * STATUS INBOX (MESSAGES 1)
>c: * LIST (\HasNoChildren \Trash) "." "Deleted Items"
>c: * STATUS "Deleted Items" (MESSAGES 2)
>c: a1 OK LIST completed
c: a2 LIST "" "Deleted Items" RETURN (STATUS (MESSAGES))
>s: ipx5 LIST "" "Deleted"
s: * LIST (\HasNoChildren) "." Deleted
s: ipx5 OK done
>s: ipx6 STATUS "Deleted" (MESSAGES)
s: * STATUS Deleted (MESSAGES 2)
s: ipx6 OK done
>c: * LIST (\HasNoChildren \Trash) "." "Deleted Items"
>c: * STATUS "Deleted Items" (MESSAGES 2)
>c: a2 OK LIST completed
""",
        rules("outlook-special-folders", "list-status-emulation"),
    )
    applied = {e.rule_id for e in events if isinstance(e, ev.RuleApplied)}
    assert applied == {"outlook-special-folders", "list-status-emulation"}


def test_special_use_selection_with_status_lists_only_special_folders_with_their_status() -> None:
    # iOS: LIST (SPECIAL-USE) ... RETURN (SPECIAL-USE STATUS (...)) on an upstream with
    # neither SPECIAL-USE nor LIST-STATUS.
    check(
        GREETING
        + LOGIN
        + r"""
c: a1 LIST (SPECIAL-USE) "" "*" RETURN (SPECIAL-USE STATUS (MESSAGES))
>s: ipx1 LIST "" "*"
s: * LIST (\HasNoChildren) "." INBOX
s: * LIST (\HasNoChildren) "." Deleted
s: ipx1 OK done
>s: ipx2 STATUS INBOX (MESSAGES)
s: * STATUS INBOX (MESSAGES 1)
s: ipx2 OK done
>s: ipx3 STATUS "Deleted" (MESSAGES)
s: * STATUS Deleted (MESSAGES 2)
s: ipx3 OK done
>c: * LIST (\HasNoChildren \Trash) "." "Deleted"
>c: * STATUS Deleted (MESSAGES 2)
>c: a1 OK LIST completed
c: a2 LIST "" "*" RETURN (STATUS (MESSAGES) SPECIAL-USE)
>s: ipx4 LIST "" "*"
s: * LIST (\HasNoChildren) "." INBOX
s: * LIST (\HasNoChildren) "." Deleted
s: ipx4 OK done
>s: ipx5 STATUS INBOX (MESSAGES)
s: * STATUS INBOX (MESSAGES 1)
s: ipx5 OK done
>s: ipx6 STATUS "Deleted" (MESSAGES)
s: * STATUS Deleted (MESSAGES 2)
s: ipx6 OK done
>c: * LIST (\HasNoChildren) "." INBOX
>c: * STATUS INBOX (MESSAGES 1)
>c: * LIST (\HasNoChildren \Trash) "." "Deleted"
>c: * STATUS Deleted (MESSAGES 2)
>c: a2 OK LIST completed
""",
        rules("special-use-synthesis", "list-status-emulation"),
    )
