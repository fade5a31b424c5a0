"""Special-folder mapping, SPECIAL-USE synthesis and XLIST through a sans-IO session.

Each test is a transcript (see tests/support/transcript.py) replayed whole, byte at a
time and in random chunks, with shipped rules whose client match is lifted (the session
has no fingerprint here): what the upstream and the client must receive, byte for byte.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imap_proxy.quirks.engine import SessionView
from imap_proxy.quirks.foldermap import FolderMap, Verdict, split_name
from imap_proxy.quirks.model import LoadedRule, Match, RuleSet, load_rules
from imap_proxy.session import events as ev
from imap_proxy.session.proxy import ProxySession
from imap_proxy.session.settings import SessionSettings
from imap_proxy.wire.framer import FrameLimits
from imap_proxy.wire.mutf7 import encode_mutf7
from imap_proxy.wire.response import ListData
from tests.support.transcript import CHUNKERS_FOR_UNIT, expected_outputs, parse, replay

SHIPPED = load_rules()
GREETING = "S: * OK [CAPABILITY IMAP4rev1 UIDPLUS LITERAL+] legacy\n"
NO_LITERAL_PLUS = (
    "s: * OK [CAPABILITY IMAP4rev1 UIDPLUS] legacy\n"
    ">c: * OK [CAPABILITY IMAP4rev1 UIDPLUS LITERAL+] legacy\n"
)


def rules(*rule_ids: str) -> RuleSet:
    """Shipped rules, enabled, matching every client."""
    chosen = SHIPPED.only(rule_ids)
    lifted = tuple(
        LoadedRule(loaded.rule.model_copy(update={"match": Match()}), loaded.source)
        for loaded in chosen.rules
    )
    return RuleSet(lifted, "test")


def check(text: str, ruleset: RuleSet, **settings: object) -> list[ev.Event]:
    steps = parse(text)
    chosen = SessionSettings(**{"rules": ruleset, **settings})  # type: ignore[arg-type]
    for chunks in CHUNKERS_FOR_UNIT:
        result = replay(steps, chunks, chosen)
        want_client, want_upstream = expected_outputs(steps)
        assert result.to_client == want_client
        assert result.to_upstream == want_upstream
    return result.events


def fired(events: list[ev.Event]) -> set[str]:
    return {event.rule_id for event in events if isinstance(event, ev.RuleApplied)}


OUTLOOK = rules("outlook-special-folders")
COMMON = rules("common-special-folders")

# The upstream's folders, as a LIST at the start of each test shows them (legacy Dovecot:
# "." delimiter, "Deleted" as the trash, no special-use attributes).
LEARN_DOT = r"""
C: l1 LIST "" "*"
S: * LIST (\HasNoChildren) "." INBOX
s: * LIST (\HasNoChildren) "." Deleted
>c: * LIST (\HasNoChildren \Trash) "." "Deleted Items"
s: * LIST (\HasNoChildren) "." Sent
>c: * LIST (\HasNoChildren \Sent) "." "Sent Items"
s: * LIST (\HasNoChildren) "." Drafts
>c: * LIST (\HasNoChildren \Drafts) "." "Drafts"
s: * LIST (\HasChildren) "." "Deleted.2024"
>c: * LIST (\HasChildren) "." "Deleted Items.2024"
S: l1 OK List completed
"""


def test_list_shows_the_real_folders_under_the_clients_names_with_their_attribute() -> None:
    events = check(
        GREETING
        + LEARN_DOT
        + r"""
C: l2 LIST "" "*"
S: * LIST (\HasNoChildren) "." INBOX
s: * LIST (\HasNoChildren) "." Deleted
>c: * LIST (\HasNoChildren \Trash) "." "Deleted Items"
# An upstream folder named like an alias would show twice: it is hidden.
s: * LIST (\HasNoChildren) "." "Deleted Items"
s: * LIST (\HasNoChildren) "." "Sent Items.old"
S: * LIST (\HasNoChildren) "." Other
S: l2 OK List completed
""",
        OUTLOOK,
    )
    assert fired(events) == {"outlook-special-folders"}


@pytest.mark.parametrize(
    ("sent", "upstream"),
    [
        ('SELECT "Deleted Items"', 'SELECT "Deleted"'),  # quoted
        ('EXAMINE "INBOX.Deleted Items"', 'EXAMINE "Deleted"'),  # namespace prefix
        ('STATUS "Deleted Items.2024" (MESSAGES)', 'STATUS "Deleted.2024" (MESSAGES)'),  # child
        ('COPY 1:3 "Deleted Items"', 'COPY 1:3 "Deleted"'),
        ('UID MOVE 7 "Junk E-mail"', 'UID MOVE 7 "Junk E-mail"'),  # no junk upstream: kept
        ('UID COPY 7,9 "Sent Items"', 'UID COPY 7,9 "Sent"'),
        ('MOVE 2 "deleted items"', 'MOVE 2 "Deleted"'),  # aliases match case-insensitively
        ('RENAME "Deleted Items.a" "Sent Items.b"', 'RENAME "Deleted.a" "Sent.b"'),
        ('SUBSCRIBE "Deleted Items"', 'SUBSCRIBE "Deleted"'),
        ('UNSUBSCRIBE "Sent Items"', 'UNSUBSCRIBE "Sent"'),
        ('DELETE "Deleted Items.2024"', 'DELETE "Deleted.2024"'),
        ('CREATE "Sent Items.2025"', 'CREATE "Sent.2025"'),
        ('LIST "" "Deleted Items"', 'LIST "" "Deleted"'),
        ('LIST "Deleted Items." "%"', 'LIST "Deleted." "%"'),
        ('LIST "" "Deleted Items.*"', 'LIST "" "Deleted.*"'),
        ('LSUB "" "Sent Items"', 'LSUB "" "Sent"'),
        (
            'LIST (SUBSCRIBED) "" ("Deleted Items" "Sent Items")',
            'LIST (SUBSCRIBED) "" ("Deleted" "Sent")',
        ),
    ],
)
def test_every_mailbox_argument_is_mapped(sent: str, upstream: str) -> None:
    unchanged = sent == upstream
    check(
        GREETING
        + LEARN_DOT
        + ("C: " if unchanged else "c: ")
        + f"m1 {sent}\n"
        + ("" if unchanged else f">s: m1 {upstream}\n")
        + "S: m1 OK done\n",
        OUTLOOK,
    )


def test_a_name_in_a_literal_is_mapped_and_sent_quoted() -> None:
    check(
        GREETING
        + LEARN_DOT
        + """
c: m1 SELECT {13}
>c: + Ready for literal data
c: Deleted Items
>s: m1 SELECT "Deleted"
S: m1 OK [READ-WRITE] Select completed
c: m2 COPY 1 {10+}
c: Sent Items
>s: m2 COPY 1 "Sent"
S: m2 OK Copy completed
""",
        OUTLOOK,
    )


def test_an_atom_alias_and_the_whole_untouched_rest_of_the_session() -> None:
    check(
        GREETING
        + r"""
C: l1 LIST "" "*"
s: * LIST (\HasNoChildren) "." Deleted
>c: * LIST (\HasNoChildren \Trash) "." "Trash"
S: * LIST (\HasNoChildren) "." INBOX
S: l1 OK List completed
c: m1 SELECT Trash
>s: m1 SELECT "Deleted"
S: * 2 EXISTS
S: * OK [UIDVALIDITY 1700000001] UIDs valid
S: * OK [UIDNEXT 3] Predicted next UID
S: m1 OK [READ-WRITE] Select completed
C: m2 UID FETCH 1:* (UID FLAGS)
S: * 1 FETCH (UID 1 FLAGS ())
S: * 2 FETCH (UID 2 FLAGS (\Seen))
S: m2 OK Fetch completed
c: m3 SELECT "[Gmail].Trash"
>s: m3 SELECT "Deleted"
S: m3 OK [READ-WRITE] Select completed
""",
        COMMON,
    )


def test_non_ascii_names_in_modified_utf7_both_ways() -> None:
    localized = encode_mutf7("Éléments supprimés").decode()  # the upstream's trash
    year = encode_mutf7("Année").decode()
    check(
        GREETING
        + f"""
C: l1 LIST "" "*"
s: * LIST (\\HasNoChildren) "/" "{localized}"
>c: * LIST (\\HasNoChildren \\Trash) "/" "Deleted Items"
s: * LIST (\\HasNoChildren) "/" "{localized}/{year}"
>c: * LIST (\\HasNoChildren) "/" "Deleted Items/{year}"
S: l1 OK List completed
c: m1 SELECT "Deleted Items"
>s: m1 SELECT "{localized}"
S: m1 OK [READ-WRITE] Select completed
c: m2 STATUS "Deleted Items/{year}" (MESSAGES)
>s: m2 STATUS "{localized}/{year}" (MESSAGES)
S: m2 OK done
""",
        OUTLOOK,
    )


def test_a_localized_alias_the_operator_added() -> None:
    rule = SHIPPED.get("outlook-special-folders")
    action = rule.actions[0]
    assert action.type == "map_special_folders"
    aliases = {**action.aliases, "\\Trash": ["Gelöschte Elemente", "Deleted Items"]}
    localized = rule.model_copy(
        update={"match": Match(), "actions": [action.model_copy(update={"aliases": aliases})]}
    )
    german = encode_mutf7("Gelöschte Elemente").decode()
    check(
        GREETING
        + LEARN_DOT.replace('"Deleted Items"', f'"{german}"').replace(
            '"Deleted Items.2024"', f'"{german}.2024"'
        )
        + f"""c: m1 SELECT "{german}"
>s: m1 SELECT "Deleted"
S: m1 OK done
c: m2 SELECT "Deleted Items"
>s: m2 SELECT "Deleted"
S: m2 OK done
""",
        RuleSet((LoadedRule(localized, "x"),), "t"),
    )


def test_slash_delimiter_and_inbox_namespace_prefix() -> None:
    check(
        GREETING
        + r"""
C: l1 LIST "" "*"
S: * LIST (\HasChildren) "/" INBOX
s: * LIST (\HasNoChildren \Trash) "/" "INBOX/Trash"
>c: * LIST (\HasNoChildren \Trash) "/" "INBOX/Deleted Items"
S: l1 OK List completed
c: m1 SELECT "Deleted Items"
>s: m1 SELECT "INBOX/Trash"
S: m1 OK done
c: m2 SELECT "INBOX/Deleted Items/x"
>s: m2 SELECT "INBOX/Trash/x"
S: m2 OK done
C: m3 SELECT "INBOX/Deleted Items.x"
S: m3 NO no such mailbox
""",
        OUTLOOK,
    )


def test_create_of_an_alias_creates_nothing_and_status_answers_with_the_asked_name() -> None:
    events = check(
        GREETING
        + LEARN_DOT
        + r"""
c: m1 CREATE "Deleted Items"
>c: m1 OK CREATE completed (the folder exists)
c: m2 STATUS "Deleted Items" (MESSAGES UIDVALIDITY)
>s: m2 STATUS "Deleted" (MESSAGES UIDVALIDITY)
s: * STATUS "Deleted" (MESSAGES 4 UIDVALIDITY 1700000001)
>c: * STATUS "Deleted Items" (MESSAGES 4 UIDVALIDITY 1700000001)
S: m2 OK Status completed
C: m3 CREATE "Projects"
S: m3 OK Create completed
""",
        OUTLOOK,
    )
    assert fired(events) == {"outlook-special-folders"}


def test_the_folders_are_learnt_before_a_command_that_names_an_alias() -> None:
    check(
        GREETING
        + r"""
C: a0 LOGIN alice secret
S: a0 OK Logged in
c: m1 SELECT "Deleted Items"
>s: ipx1 LIST "" "*"
s: * LIST (\HasNoChildren) "." INBOX
s: * LIST (\HasNoChildren) "." Deleted
S: * 3 EXISTS
s: ipx1 OK List completed
>s: m1 SELECT "Deleted"
S: * 1 EXISTS
S: m1 OK [READ-WRITE] Select completed
# Once a session: a folder LIST did not show is not asked for again.
C: m2 SELECT "Sent Items"
S: m2 NO Mailbox does not exist
""",
        OUTLOOK,
    )


def test_nothing_is_learnt_before_login() -> None:
    check(GREETING + 'C: m1 SELECT "Deleted Items"\nS: m1 NO Not logged in\n', OUTLOOK)


def test_names_pass_unchanged_while_the_folder_is_unknown_and_learning_is_off() -> None:
    rule = SHIPPED.get("outlook-special-folders")
    action = rule.actions[0].model_copy(update={"learn_with_list": False})
    quiet = RuleSet(
        (LoadedRule(rule.model_copy(update={"match": Match(), "actions": [action]}), "x"),), "t"
    )
    check(GREETING + 'C: m1 SELECT "Deleted Items"\nS: m1 NO no such mailbox\n', quiet)


def test_configured_folders_win_over_names() -> None:
    rule = SHIPPED.get("outlook-special-folders")
    action = rule.actions[0].model_copy(update={"upstream_folders": {"\\Trash": "Corbeille"}})
    configured = RuleSet(
        (LoadedRule(rule.model_copy(update={"match": Match(), "actions": [action]}), "x"),), "t"
    )
    check(
        GREETING
        + r"""
c: m1 SELECT "Deleted Items"
>s: m1 SELECT "Corbeille"
S: m1 OK done
C: l1 LIST "" "*"
s: * LIST () "." Corbeille
>c: * LIST (\Trash) "." "Deleted Items"
s: * LIST () "." "Deleted Items"
S: * LIST () "." Deleted
S: l1 OK done
""",
        configured,
    )


# --- APPEND: the mailbox is rewritten, the message streams ----------------------------


def test_append_of_a_big_message_streams_with_the_mailbox_rewritten() -> None:
    # 300 transcript lines of 70 octets: the last one's CRLF ends the command.
    size = 299 * 72 + 70  # far beyond capture_literal_max: HOLD would refuse it
    message = "".join(f"C: {'x' * 70}\n" for _ in range(300))
    events = check(
        NO_LITERAL_PLUS
        + LEARN_DOT
        + f"""c: a1 APPEND "Deleted Items" (\\Seen) {{{size}}}
>s: a1 APPEND "Deleted" (\\Seen) {{{size}}}
S: + Ready for literal data
"""
        + message
        + "S: a1 OK [APPENDUID 1 5] Append completed\n",
        OUTLOOK,
        capture_literal_max=8192,
    )
    assert fired(events) == {"outlook-special-folders"}
    streamed = [e for e in events if isinstance(e, ev.SendToUpstream) and e.data.startswith(b"x")]
    assert len(streamed) > 1  # in chunks, as they came: never buffered whole


def test_append_with_literal_plus_converted_for_an_upstream_without_it() -> None:
    check(
        NO_LITERAL_PLUS
        + LEARN_DOT
        + """c: a1 APPEND "Sent Items" {5+}
>s: a1 APPEND "Sent" {5}
s: + go ahead
c: hello
>s: hello
S: a1 OK Append completed
""",
        OUTLOOK,
    )


def test_append_whose_mailbox_is_a_literal() -> None:
    check(
        GREETING
        + LEARN_DOT
        + """c: a1 APPEND {13}
>c: + Ready for literal data
c: Deleted Items (\\Seen) {5+}
>s: a1 APPEND "Deleted" (\\Seen) {5+}
C: hello
S: a1 OK Append completed
C: a2 APPEND "Other" {2+}
C: hi
S: a2 OK Append completed
""",
        OUTLOOK,
    )


def test_append_of_an_8bit_name_in_a_literal_keeps_it_a_literal() -> None:
    # UTF8=ACCEPT clients send UTF-8 names; re-sent as a literal of their own.
    check(
        GREETING
        + LEARN_DOT
        + """c: a1 APPEND {10}
>c: + Ready for literal data
c: Übersicht (\\Seen) {5+}
>s: a1 APPEND {10+}
>s: Übersicht (\\Seen) {5+}
C: hello
S: a1 OK Append completed
""",
        OUTLOOK,
    )
    check(
        NO_LITERAL_PLUS
        + LEARN_DOT
        + """c: a1 APPEND {10}
>c: + Ready for literal data
c: Übersicht {5}
>c: a1 NO [CANNOT] This mailbox name needs LITERAL+
C: a2 NOOP
S: a2 OK done
""",
        OUTLOOK,
    )


# --- name mapping, sans session ---------------------------------------------------


def test_folder_map_keys_and_verdicts() -> None:
    view = SessionView(upstream_capabilities=["IMAP4rev1", "SPECIAL-USE"])
    view.learn_list(ListData("LIST", ("\\HasChildren",), b".", b"INBOX"))
    view.learn_list(ListData("LIST", ("\\Trash",), b".", b"INBOX.Trash"))
    folder_map = FolderMap({"\\Trash": ["Deleted Items", "[Gmail]/Trash"]}, {}, {})
    assert folder_map.folders(view) == {"\\trash": b"INBOX.Trash"}
    assert folder_map.to_upstream(b"[Gmail].Trash", view).name == b"INBOX.Trash"
    assert folder_map.to_upstream(b"INBOX", view).verdict is Verdict.KEEP
    assert folder_map.to_client(b"INBOX.Trash", view, b".").name == b"INBOX.Deleted Items"
    assert folder_map.to_client(b"INBOX.Deleted Items", view, b".").verdict is Verdict.HIDE
    assert folder_map.to_client(b"Deleted Items", view, b".").verdict is Verdict.HIDE
    assert folder_map.to_client(b"Other", view, b".").verdict is Verdict.KEEP
    assert split_name(b"inbox.a.b", b".").prefix == b"inbox."


def test_names_are_not_guessed_when_the_upstream_has_special_use() -> None:
    view = SessionView(upstream_capabilities=["SPECIAL-USE"])
    view.learn_list(ListData("LIST", (), b".", b"Deleted"))
    folder_map = FolderMap({"\\Trash": ["Deleted Items"]}, {"Deleted": "\\Trash"}, {})
    assert folder_map.folders(view) == {}
    view.upstream_capabilities = []
    assert folder_map.folders(view) == {"\\trash": b"Deleted"}


def test_the_index_is_incremental_and_survives_compaction() -> None:
    view = SessionView(upstream_capabilities=[])
    folder_map = FolderMap({"\\Trash": ["Deleted Items"]}, {"Deleted": "\\Trash"}, {})
    for number in range(50):
        view.learn_list(ListData("LIST", (), b".", b"Folder%d" % number))
        assert folder_map.folders(view) == {}
    view.learn_list(ListData("LIST", (), b".", b"Deleted"))
    assert folder_map.folders(view) == {"\\trash": b"Deleted"}
    view.mailbox_changes = list(view.mailbox_attributes)  # as compaction leaves it
    view.mailbox_epoch += 1
    view.learn_list(ListData("LIST", (), b".", b"Other"))
    assert folder_map.folders(view) == {"\\trash": b"Deleted"}
    view.learn_list(ListData("LIST", ("\\Trash",), b".", b"Bin"))
    assert folder_map.folders(view) == {"\\trash": b"Bin"}  # the attribute wins


# --- SPECIAL-USE synthesis ----------------------------------------------------------

SYNTH = rules("special-use-synthesis")


def test_special_use_selection_becomes_a_filtered_plain_list() -> None:
    events = check(
        GREETING
        + r"""
c: a1 LIST (SPECIAL-USE) "" "*"
>s: a1 LIST "" "*"
s: * LIST (\HasNoChildren) "." INBOX
s: * LIST (\HasNoChildren) "." Deleted
>c: * LIST (\HasNoChildren \Trash) "." "Deleted"
s: * LIST (\HasNoChildren) "." Projects
S: * LIST (\HasNoChildren \Sent) "." Sent
S: a1 OK List completed
c: a2 LIST "" "*" RETURN (SPECIAL-USE)
>s: a2 LIST "" "*"
S: * LIST (\HasNoChildren) "." INBOX
s: * LIST (\HasNoChildren) "." "INBOX.Junk"
>c: * LIST (\HasNoChildren \Junk) "." "INBOX.Junk"
S: a2 OK List completed
c: a3 LIST (SUBSCRIBED SPECIAL-USE) "" "*" RETURN (CHILDREN SPECIAL-USE)
>s: a3 LIST (SUBSCRIBED) "" "*" RETURN (CHILDREN)
S: a3 OK List completed
""",
        SYNTH,
    )
    assert fired(events) == {"special-use-synthesis"}


def test_special_use_is_advertised_after_login() -> None:
    check(
        GREETING
        + r"""
C: a1 LOGIN alice secret
S: a1 OK Logged in
C: a2 CAPABILITY
s: * CAPABILITY IMAP4rev1 UIDPLUS LITERAL+
>c: * CAPABILITY IMAP4rev1 UIDPLUS LITERAL+ SPECIAL-USE
S: a2 OK done
""",
        SYNTH,
    )


# --- XLIST --------------------------------------------------------------------------


def test_xlist_is_answered_from_list() -> None:
    events = check(
        GREETING
        + r"""
c: x1 XLIST "" "*"
>s: x1 LIST "" "*"
s: * LIST (\HasNoChildren) "." INBOX
>c: * XLIST (\HasNoChildren \Inbox) "." INBOX
s: * LIST (\HasNoChildren) "." Deleted
>c: * XLIST (\HasNoChildren \Trash) "." "Deleted"
s: * LIST (\HasNoChildren) "." Projects
>c: * XLIST (\HasNoChildren) "." "Projects"
s: * LIST (\HasNoChildren) "." Spam
>c: * XLIST (\HasNoChildren \Spam) "." "Spam"
s: * LIST (\HasNoChildren \Junk) "." "Junk"
>c: * XLIST (\HasNoChildren \Spam) "." "Junk"
S: x1 OK List completed
C: x2 LIST "" "*"
S: * LIST (\HasNoChildren) "." INBOX
S: x2 OK List completed
""",
        rules("xlist"),
    )
    assert fired(events) == {"xlist"}


def test_xlist_with_the_mapping_shows_the_clients_names() -> None:
    check(
        GREETING
        + r"""
c: x1 XLIST "" "*"
>s: x1 LIST "" "*"
s: * LIST (\HasNoChildren) "." Deleted
>c: * XLIST (\HasNoChildren \Trash) "." "Deleted Items"
S: x1 OK List completed
""",
        rules("xlist", "outlook-special-folders"),
    )


def test_a_full_list_still_in_flight_does_not_stop_learning() -> None:
    check(
        GREETING
        + r"""
C: a0 LOGIN alice secret
S: a0 OK Logged in
C: l1 LIST "" "*"
c: m1 SELECT "Deleted Items"
>s: ipx1 LIST "" "*"
s: * LIST (\HasNoChildren) "." Deleted
>c: * LIST (\HasNoChildren \Trash) "." "Deleted Items"
S: l1 OK List completed
s: * LIST (\HasNoChildren) "." Deleted
s: ipx1 OK List completed
>s: m1 SELECT "Deleted"
S: m1 OK [READ-WRITE] Select completed
""",
        OUTLOOK,
    )


def test_other_rules_see_upstream_names_in_commands_and_replies() -> None:
    # The name is mapped first, then Thunderbird's trailing separator stripped; in LSUB
    # replies \Noselect is found under the upstream's name before the name is changed.
    check(
        GREETING
        + r"""
C: l1 LIST "" "*"
s: * LIST (\HasChildren) "." Deleted
>c: * LIST (\HasChildren \Trash) "." "Trash"
s: * LIST (\Noselect \HasChildren) "." "Deleted.Old"
>c: * LIST (\Noselect \HasChildren) "." "Trash.Old"
S: l1 OK List completed
c: m1 SELECT "Trash."
>s: m1 SELECT "Deleted"
S: m1 OK [READ-WRITE] Select completed
C: m2 LSUB "" "*"
s: * LSUB () "." "Deleted.Old"
>c: * LSUB (\Noselect) "." "Trash.Old"
S: m2 OK Lsub completed
""",
        rules("common-special-folders", "tb-extra-mailbox-sep", "tb-lsub-flags"),
    )


_PART = st.text(
    alphabet=st.characters(blacklist_characters="./", blacklist_categories=("Cs", "Cc")),
    min_size=1,
    max_size=8,
)


def _learnt_view(delimiter: bytes) -> SessionView:
    view = SessionView(upstream_capabilities=["IMAP4rev1"])
    for name in (b"INBOX", b"Deleted", b"Sent"):
        view.learn_list(ListData("LIST", (), delimiter, name))
    return view


@given(rest=st.lists(_PART, max_size=3), delimiter=st.sampled_from([b".", b"/"]))
def test_children_of_an_alias_map_there_and_back(rest: list[str], delimiter: bytes) -> None:
    view = _learnt_view(delimiter)
    folder_map = FolderMap({"\\Trash": ["Deleted Items"]}, {"Deleted": "\\Trash"}, {})
    tail = b"".join(delimiter + encode_mutf7(part) for part in rest)
    upstream = folder_map.to_upstream(b"Deleted Items" + tail, view)
    assert upstream.verdict is Verdict.RENAME
    assert upstream.name == b"Deleted" + tail
    back = folder_map.to_client(upstream.name, view, delimiter)
    assert back.name == b"Deleted Items" + tail
    assert (back.role == "\\trash") is (not rest)


@given(parts=st.lists(_PART, min_size=1, max_size=3))
def test_other_names_pass_both_ways_unchanged(parts: list[str]) -> None:
    view = _learnt_view(b".")
    folder_map = FolderMap({"\\Trash": ["Deleted Items"]}, {"Deleted": "\\Trash"}, {})
    name = b".".join(encode_mutf7(part) for part in parts)
    if parts[0].casefold() in ("deleted items", "deleted") or parts[0].upper() == "INBOX":
        return
    assert folder_map.to_upstream(name, view).verdict is Verdict.KEEP
    assert folder_map.to_client(name, view, b".").verdict is Verdict.KEEP


def test_a_secondary_alias_naming_a_real_folder_means_that_folder() -> None:
    # The user's own "Spam" and "Deleted" are not the junk and trash folders: they stay
    # visible and reachable; "Bin", which does not exist, is the trash.
    events = check(
        GREETING
        + r"""
C: l1 LIST "" "*"
S: * LIST (\HasNoChildren \Trash) "." Trash
S: * LIST (\HasNoChildren \Junk) "." Junk
S: * LIST (\HasNoChildren) "." Spam
S: * LIST (\HasNoChildren) "." Deleted
S: l1 OK List completed
C: m1 SELECT "Spam"
S: m1 OK [READ-WRITE] Select completed
C: m2 COPY 1 "Deleted"
S: m2 OK Copy completed
c: m3 COPY 1 "Bin"
>s: m3 COPY 1 "Trash"
S: m3 OK Copy completed
""",
        COMMON,
    )
    assert fired(events) == {"common-special-folders"}


def test_multiappend_rewrites_the_mailbox_and_streams_every_message() -> None:
    check(
        GREETING
        + LEARN_DOT
        + r"""c: a1 APPEND "Deleted Items" {5+}
>s: a1 APPEND "Deleted" {5+}
C: hello (\Seen) {3+}
C: bye
S: a1 OK [APPENDUID 1 7:8] Append completed
""",
        OUTLOOK,
    )


def test_lsub_list_status_and_literal_names_in_replies() -> None:
    check(
        GREETING
        + LEARN_DOT
        + r"""C: s1 LSUB "" "*"
s: * LSUB () "." Deleted
>c: * LSUB (\Trash) "." "Deleted Items"
s: * LSUB () "." {13}
s: Deleted Items
S: s1 OK Lsub completed
C: s2 LIST "" "*" RETURN (STATUS (MESSAGES))
s: * LIST (\HasNoChildren) "." Sent
>c: * LIST (\HasNoChildren \Sent) "." "Sent Items"
s: * STATUS Sent (MESSAGES 2)
>c: * STATUS "Sent Items" (MESSAGES 2)
S: s2 OK List completed
""",
        OUTLOOK,
    )


# --- any bytes, with every special-folder rule active: events, never an exception ----

FUZZ_RULES = rules(
    "outlook-special-folders", "special-use-synthesis", "xlist", "outlook-lsub-special-use"
)
CLIENT_WORDS = [
    b"a LOGIN u p\r\n",
    b'b SELECT "Deleted Items"\r\n',
    b"c APPEND {13}\r\nDeleted Items {3+}\r\nabc\r\n",
    b'd APPEND "Deleted Items" (\\Seen) {5}\r\n',
    b'e RENAME "Deleted Items.x" {3}\r\n',
    b'f LIST (SPECIAL-USE) "" "*" RETURN (SPECIAL-USE)\r\n',
    b'g XLIST "" ("Deleted Items" *)\r\n',
    b'h CREATE "Deleted Items"\r\n',
    b'i STATUS "Sent Items" (MESSAGES)\r\n',
    b"j APPEND {999999}\r\n",
]
UPSTREAM_WORDS = [
    b"+ go\r\n",
    b'* LIST (\\HasNoChildren) "." Deleted\r\n',
    b'* LIST () "." {13}\r\nDeleted Items\r\n',
    b'* LSUB () NIL "Sent"\r\n',
    b'* STATUS "Deleted" (MESSAGES 1)\r\n',
    b"* LIST (\\Trash\r\n",
    b"ipx1 OK done\r\n",
    b"a OK done\r\n",
    b"* 3 EXISTS\r\n",
]
_chunks = st.one_of(st.binary(max_size=30), st.sampled_from(CLIENT_WORDS + UPSTREAM_WORDS))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), _chunks), max_size=30))
def test_random_streams_with_the_folder_rules_never_raise(script: list[tuple[bool, bytes]]) -> None:
    session = ProxySession(
        SessionSettings(
            rules=FUZZ_RULES,
            client_limits=FrameLimits(max_line_length=200, max_literal_size=2000),
            capture_literal_max=64,
        )
    )
    events = session.receive_from_upstream(b"* OK [CAPABILITY IMAP4rev1 UIDPLUS] hi\r\n")
    for from_client, data in script:
        if from_client:
            events += session.receive_from_client(data)
        else:
            events += session.receive_from_upstream(data)
    events += session.upstream_closed()
    events += session.client_closed()
    assert len([e for e in events if isinstance(e, ev.Close)]) == 1
