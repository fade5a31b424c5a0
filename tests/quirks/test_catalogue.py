"""The catalogue's actions through a sans-IO session, with the shipped rule entries."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imap_proxy.quirks.actions.robustness import NormalizeBodyStructure
from imap_proxy.quirks.engine import SessionView
from imap_proxy.quirks.model import NormalizeBodyStructureAction, load_rules
from imap_proxy.session import events as ev
from imap_proxy.session.proxy import ProxySession
from imap_proxy.session.settings import SessionSettings
from imap_proxy.session.state import ProtocolState
from imap_proxy.wire.encode import encode_response
from imap_proxy.wire.message import Message
from imap_proxy.wire.response import FetchData, parse_response
from imap_proxy.wire.syntax import Atom, Nil, ParenList, Quoted, Value

SHIPPED = load_rules()
LEGACY = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE AUTH=PLAIN] legacy ready\r\n"
MODERN = (
    b"* OK [CAPABILITY IMAP4rev1 ID ENABLE IDLE LITERAL+ NAMESPACE UNSELECT CONDSTORE"
    b" AUTH=PLAIN] modern\r\n"
)
COREMAIL = b"* OK [CAPABILITY IMAP4rev1 ID IDLE AUTH=PLAIN] Coremail System IMap Server Ready\r\n"


def session_for(rule_ids: list[str], greeting: bytes = LEGACY) -> ProxySession:
    session = ProxySession(SessionSettings(rules=SHIPPED.only(rule_ids)))
    session.receive_from_upstream(greeting)
    return session


def logged_in(rule_ids: list[str], greeting: bytes = LEGACY) -> ProxySession:
    session = session_for(rule_ids, greeting)
    session.receive_from_client(b"a LOGIN u p\r\n")
    session.receive_from_upstream(b"a OK Logged in\r\n")
    return session


def state(session: ProxySession) -> ProtocolState:
    return session.state


def to_client(events: list[ev.Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, ev.SendToClient))


def to_upstream(events: list[ev.Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, ev.SendToUpstream))


def applied(events: list[ev.Event]) -> list[str]:
    return [e.rule_id for e in events if isinstance(e, ev.RuleApplied)]


# --- NAMESPACE, ENABLE, UNSELECT ----------------------------------------------------


def test_namespace_is_answered_with_the_delimiter_list_showed() -> None:
    session = session_for(["answer-namespace"])
    # Before login the upstream answers (with the BAD NAMESPACE deserves there).
    out = session.receive_from_client(b"n NAMESPACE\r\n")
    assert to_upstream(out) == b"n NAMESPACE\r\n"
    session.receive_from_upstream(b"n BAD not yet\r\n")
    session.receive_from_client(b"a LOGIN u p\r\n")
    out = session.receive_from_upstream(b"a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
    assert to_client(out) == b"a OK [CAPABILITY IMAP4rev1 IDLE LITERAL+ NAMESPACE] Logged in\r\n"
    # No LIST seen yet: the proxy asks the upstream for its delimiter, quietly.
    out = session.receive_from_client(b"b NAMESPACE\r\n")
    assert to_upstream(out) == b'ipx1 LIST "" ""\r\n' and to_client(out) == b""
    out = session.receive_from_upstream(b'* LIST (\\Noselect) "/" ""\r\nipx1 OK done\r\n')
    assert to_client(out) == b'* NAMESPACE (("" "/")) NIL NIL\r\nb OK NAMESPACE completed\r\n'
    # Known from then on (as from any LIST the client made): answered at once.
    out = session.receive_from_client(b"d namespace\r\n")
    assert to_client(out) == b'* NAMESPACE (("" "/")) NIL NIL\r\nd OK NAMESPACE completed\r\n'
    assert to_upstream(out) == b""


def test_namespace_falls_back_to_the_rule_delimiter_when_list_tells_nothing() -> None:
    session = logged_in(["answer-namespace"])
    session.receive_from_client(b"b NAMESPACE\r\n")
    out = session.receive_from_upstream(b"ipx1 BAD what\r\n")
    assert to_client(out) == b'* NAMESPACE (("" ".")) NIL NIL\r\nb OK NAMESPACE completed\r\n'


def test_namespace_and_enable_pass_through_where_the_upstream_has_them() -> None:
    session = logged_in(["answer-namespace", "answer-enable"], MODERN)
    out = session.receive_from_client(b"b NAMESPACE\r\nc ENABLE CONDSTORE\r\n")
    assert to_upstream(out) == b"b NAMESPACE\r\nc ENABLE CONDSTORE\r\n"
    assert applied(out) == []


def test_enable_claims_nothing_and_is_not_advertised() -> None:
    session = logged_in(["answer-enable"])
    out = session.receive_from_client(b"b CAPABILITY\r\n")
    out = session.receive_from_upstream(b"* CAPABILITY IMAP4rev1 IDLE\r\nb OK\r\n")
    assert b"ENABLE" not in to_client(out)
    out = session.receive_from_client(b"c ENABLE CONDSTORE UTF8=ACCEPT\r\n")
    assert to_client(out) == b"* ENABLED\r\nc OK ENABLE completed\r\n"
    assert to_upstream(out) == b"" and applied(out) == ["answer-enable"]
    # Malformed: the upstream's BAD, not a made-up OK (likewise NAMESPACE with arguments).
    assert to_upstream(session.receive_from_client(b"d ENABLE\r\n")) == b"d ENABLE\r\n"


def test_unselect_is_emulated_by_a_failing_examine_never_close() -> None:
    session = logged_in(["emulate-unselect"])
    session.receive_from_client(b"b SELECT INBOX\r\n")
    session.receive_from_upstream(b"* 2 EXISTS\r\nb OK [READ-WRITE] done\r\n")
    assert state(session) is ProtocolState.SELECTED
    out = session.receive_from_client(b"c UNSELECT\r\nd NOOP\r\n")
    sent = to_upstream(out)
    assert sent.startswith(b'ipx1 EXAMINE "imap-proxy/no such mailbox/unselect"\r\n')
    assert sent.endswith(b"d NOOP\r\n") and b"CLOSE" not in sent
    assert to_client(out) == b""  # the answer waits for the upstream's
    out = session.receive_from_upstream(b"ipx1 NO Mailbox doesn't exist\r\nd OK NOOP\r\n")
    assert to_client(out) == b"c OK UNSELECT completed\r\nd OK NOOP\r\n"
    assert state(session) is ProtocolState.AUTHENTICATED
    assert ev.CommandCompleted("c", "UNSELECT", "OK", by_proxy=True) in out


def test_unselect_without_a_selected_mailbox_is_bad_at_once() -> None:
    session = logged_in(["emulate-unselect"])
    out = session.receive_from_client(b"c UNSELECT\r\n")
    assert to_client(out) == b"c BAD No mailbox selected\r\n" and to_upstream(out) == b""


def test_unselect_emulation_reports_an_upstream_bad() -> None:
    session = logged_in(["emulate-unselect"])
    session.receive_from_client(b"b SELECT INBOX\r\n")
    session.receive_from_upstream(b"b OK done\r\n")
    session.receive_from_client(b"c UNSELECT\r\n")
    out = session.receive_from_upstream(b"ipx1 BAD no\r\n")
    assert to_client(out) == b"c BAD UNSELECT failed\r\n"
    assert state(session) is ProtocolState.SELECTED


def test_unselect_is_advertised_only_after_login_and_only_when_missing() -> None:
    session = session_for(["emulate-unselect"])
    out = session.receive_from_client(b"a CAPABILITY\r\n")
    out = session.receive_from_upstream(b"* CAPABILITY IMAP4rev1 IDLE\r\na OK\r\n")
    assert b"UNSELECT" not in to_client(out)
    session.receive_from_client(b"b LOGIN u p\r\n")
    out = session.receive_from_upstream(b"b OK [CAPABILITY IMAP4rev1 IDLE] in\r\n")
    assert b"UNSELECT" in to_client(out)
    modern = logged_in(["emulate-unselect"], MODERN)
    out = modern.receive_from_client(b"c UNSELECT\r\n")
    assert to_upstream(out) == b"c UNSELECT\r\n"


# --- robustness -------------------------------------------------------------------------


def test_empty_lines_are_dropped_not_relayed() -> None:
    session = session_for(["ignore-empty-lines"])
    out = session.receive_from_client(b"\r\n  \r\nb NOOP\r\n")
    assert to_upstream(out) == b"b NOOP\r\n"
    assert applied(out) == ["ignore-empty-lines", "ignore-empty-lines"]
    plain = session_for([])
    assert to_upstream(plain.receive_from_client(b"\r\nb NOOP\r\n")) == b"\r\nb NOOP\r\n"


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        (b"c UID FETCH 1:* (FLAGS) (CHANGEDSINCE 0)", b"c UID FETCH 1:* (FLAGS)"),
        (b"c FETCH 1:5 FLAGS (changedsince 0 VANISHED)", b"c FETCH 1:5 FLAGS (VANISHED)"),
        (b"c FETCH 1:5 FLAGS (CHANGEDSINCE 12345)", None),
        (b"c FETCH 1:5 (FLAGS)", None),
    ],
)
def test_changedsince_zero_is_dropped_for_upstreams_without_condstore(
    sent: bytes, expected: bytes | None
) -> None:
    session = logged_in(["drop-changedsince-zero"])
    out = session.receive_from_client(sent + b"\r\n")
    assert to_upstream(out) == (expected or sent) + b"\r\n"
    assert applied(out) == (["drop-changedsince-zero"] if expected else [])


def test_untagged_status_without_text_gets_text() -> None:
    session = logged_in(["untagged-status-text"])
    session.receive_from_client(b"b SELECT INBOX\r\n")
    out = session.receive_from_upstream(
        b"* OK [UIDVALIDITY 7]\r\n* OK [UNSEEN 2] First unseen.\r\n* NO\r\n* 3 EXISTS\r\n"
        b"b OK [READ-WRITE]\r\n"
    )
    assert to_client(out) == (
        b"* OK [UIDVALIDITY 7] ok\r\n* OK [UNSEEN 2] First unseen.\r\n* NO ok\r\n"
        b"* 3 EXISTS\r\nb OK [READ-WRITE]\r\n"
    )


def test_partial_fetch_past_the_end_is_an_empty_string() -> None:
    session = logged_in(["empty-partial-fetch"])
    session.receive_from_client(b"b UID FETCH 1 (BODY.PEEK[]<393216.393216>)\r\n")
    out = session.receive_from_upstream(
        b"* 1 FETCH (UID 1 BODY[]<393216> NIL)\r\n* 2 FETCH (UID 2 BODY[] NIL)\r\nb OK\r\n"
    )
    assert to_client(out) == (
        b'* 1 FETCH (UID 1 BODY[]<393216> "")\r\n* 2 FETCH (UID 2 BODY[] NIL)\r\nb OK\r\n'
    )


def _normalized(line: bytes) -> bytes:
    action = NormalizeBodyStructure(
        "n", NormalizeBodyStructureAction(type="normalize_body_structure")
    )
    response = parse_response(Message.from_line(line))
    changed = action.on_response(response, SessionView())
    assert changed is not None
    return encode_response(changed).to_bytes()


@pytest.mark.parametrize(
    ("upstream", "client"),
    [
        # Exchange: NIL parameter value; negative line count; NIL encoding
        (
            b'* 1 FETCH (BODYSTRUCTURE ("text" "plain" ("charset" NIL) NIL NIL NIL 10 -1))',
            b'* 1 FETCH (BODYSTRUCTURE ("text" "plain" ("charset" "") NIL NIL "7BIT" 10 0))',
        ),
        # () for NIL parameters, disposition and language; -1 size; in a multipart
        (
            b'* 2 FETCH (BODYSTRUCTURE (("text" "html" () NIL NIL "8bit" -1 3 NIL () ())'
            b' "alternative" () NIL NIL))',
            b'* 2 FETCH (BODYSTRUCTURE (("text" "html" NIL NIL NIL "8bit" 0 3 NIL NIL NIL)'
            b' "alternative" NIL NIL NIL))',
        ),
        # message/rfc822 with an envelope holding () for an address list
        (
            b'* 3 FETCH (BODY ("message" "rfc822" NIL NIL NIL "7bit" 50 (NIL "s" () NIL NIL'
            b' NIL NIL NIL NIL NIL) ("text" "plain" ("a" NIL) NIL NIL "7bit" 5 1) -2))',
            b'* 3 FETCH (BODY ("message" "rfc822" NIL NIL NIL "7bit" 50 (NIL "s" NIL NIL NIL'
            b' NIL NIL NIL NIL NIL) ("text" "plain" ("a" "") NIL NIL "7bit" 5 1) 0))',
        ),
        (
            b'* 4 FETCH (UID 9 ENVELOPE (NIL "x" () () () NIL NIL NIL NIL "<id@x>"))',
            b'* 4 FETCH (UID 9 ENVELOPE (NIL "x" NIL NIL NIL NIL NIL NIL NIL "<id@x>"))',
        ),
    ],
)
def test_body_structure_anomalies_are_repaired(upstream: bytes, client: bytes) -> None:
    assert _normalized(upstream + b"\r\n") == client + b"\r\n"


def test_body_structure_rule_never_holds_a_body_it_does_not_need() -> None:
    session = logged_in(["normalize-body-structure"])
    session.receive_from_client(b"b FETCH 1 (BODY[])\r\n")
    out = session.receive_from_upstream(b"* 1 FETCH (BODY[] {5}\r\n")
    assert to_client(out) == b"* 1 FETCH (BODY[] {5}\r\n"  # streamed at once, not held
    out = session.receive_from_upstream(b"hello)\r\nb OK\r\n")
    assert to_client(out) == b"hello)\r\nb OK\r\n"
    # A valid structure passes as its original bytes, and nothing is reported.
    session.receive_from_client(b"c FETCH 1 (BODYSTRUCTURE)\r\n")
    line = (
        b'* 1 FETCH (BODYSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 1))\r\n'
    )
    out = session.receive_from_upstream(line)
    assert to_client(out) == line and applied(out) == []


# --- upstream needs -------------------------------------------------------------------


def test_id_is_sent_upstream_after_login_and_its_answer_consumed() -> None:
    session = session_for(["coremail-send-id"], COREMAIL)
    session.receive_from_client(b"a LOGIN u p\r\n")
    out = session.receive_from_upstream(b"a OK Logged in\r\n")
    assert to_upstream(out) == b'ipx1 ID ("name" "imap-proxy" "version" "1")\r\n'
    assert to_client(out) == b"a OK Logged in\r\n"
    assert applied(out) == ["coremail-send-id"]
    # A command the client pipelines meanwhile: the `* ID` data is still the proxy's.
    out = session.receive_from_client(b"b SELECT INBOX\r\n")
    out = session.receive_from_upstream(
        b'* ID ("name" "Coremail")\r\nipx1 OK ID completed\r\n* 1 EXISTS\r\nb OK done\r\n'
    )
    assert to_client(out) == b"* 1 EXISTS\r\nb OK done\r\n"
    # Other untagged data that came with the proxy's ID is the client's.
    session.receive_from_client(b"c LOGOUT\r\n")
    relogin = session_for(["coremail-send-id"], COREMAIL)
    relogin.receive_from_client(b"a LOGIN u p\r\n")
    relogin.receive_from_upstream(b"a OK Logged in\r\n")
    out = relogin.receive_from_upstream(b"* ID NIL\r\n* OK [ALERT] quota\r\nipx1 OK\r\n")
    assert to_client(out) == b"* OK [ALERT] quota\r\n"
    # Not for other upstreams, nor on a failed login.
    other = session_for(["coremail-send-id"], MODERN)
    other.receive_from_client(b"a LOGIN u p\r\n")
    assert to_upstream(other.receive_from_upstream(b"a OK in\r\n")) == b""
    failed = session_for(["coremail-send-id"], COREMAIL)
    failed.receive_from_client(b"a LOGIN u p\r\n")
    assert to_upstream(failed.receive_from_upstream(b"a NO bad\r\n")) == b""


def test_numeric_tags_get_a_letter_prefix_upstream_and_back() -> None:
    session = session_for(["coremail-letter-tags"], COREMAIL)
    out = session.receive_from_client(b"1 LOGIN u p\r\n2 SELECT INBOX\r\nA7 NOOP\r\n")
    assert to_upstream(out) == b"A1 LOGIN u p\r\nA2 SELECT INBOX\r\nA7 NOOP\r\n"
    out = session.receive_from_upstream(
        b"A1 OK in\r\n* 1 EXISTS\r\nA2 OK [READ-WRITE] done\r\nA7 OK\r\n"
    )
    assert to_client(out) == b"1 OK in\r\n* 1 EXISTS\r\n2 OK [READ-WRITE] done\r\nA7 OK\r\n"
    assert ev.CommandCompleted("2", "SELECT", "OK") in out
    # A held (rewritten) command and one with a literal keep the mapping too.
    out = session.receive_from_client(b'3 ID ("name" "x")\r\n4 APPEND INBOX {3}\r\n')
    assert to_upstream(out) == b'A3 ID ("name" "x")\r\nA4 APPEND INBOX {3}\r\n'
    out = session.receive_from_upstream(b"* ID NIL\r\nA3 OK\r\n+ go\r\n")
    assert to_client(out) == b"* ID NIL\r\n3 OK\r\n+ go\r\n"
    out = session.receive_from_client(b"abc\r\n")
    assert to_upstream(out) == b"abc\r\n"
    assert to_client(session.receive_from_upstream(b"A4 OK appended\r\n")) == b"4 OK appended\r\n"


def test_numeric_tags_pass_unchanged_for_other_upstreams() -> None:
    session = session_for(["coremail-letter-tags"], MODERN)
    out = session.receive_from_client(b"1 NOOP\r\n")
    assert to_upstream(out) == b"1 NOOP\r\n" and applied(out) == []


# --- ID-keyed --------------------------------------------------------------------------


BACKGROUND = b'("name" "com.apple.email.search-indexer" "os" "iOS" "event" "indexer")'
FOREGROUND = b'("name" "com.apple.email.maild" "os" "iOS" "event" NIL)'


def test_background_ids_are_shed_and_foreground_ones_forwarded() -> None:
    session = logged_in(["ios-background-shed"], MODERN)
    out = session.receive_from_client(b"b ID " + BACKGROUND + b"\r\n")
    assert to_client(out) == b"b NO [UNAVAILABLE] Background load is shed, try again later\r\n"
    assert to_upstream(out) == b""
    assert not any(isinstance(e, ev.Close) for e in out)  # never refuses service
    other = logged_in(["ios-background-shed"], MODERN)
    out = other.receive_from_client(b"b ID " + FOREGROUND + b"\r\n")
    assert to_upstream(out) == b"b ID " + FOREGROUND + b"\r\n" and applied(out) == []


def test_only_fetches_naming_the_modifier_are_held() -> None:
    session = logged_in(["drop-changedsince-zero"])
    # Streamed as they come (a command the proxy's parser would refuse is the upstream's).
    out = session.receive_from_client(b"c FETCH 1:5 (FLAGS\r\n")
    assert to_upstream(out) == b"c FETCH 1:5 (FLAGS\r\n" and to_client(out) == b""


def test_keepalive_only_while_the_client_idles_and_never_inside_a_message() -> None:
    session = logged_in(["idle-keepalive"])
    assert session.keepalive_interval is None
    assert session.keepalive() == []
    session.receive_from_client(b"i IDLE\r\n")
    session.receive_from_upstream(b"+ idling\r\n")
    assert session.keepalive_interval == 120
    out = session.keepalive()
    assert to_client(out) == b"* OK Still here\r\n" and applied(out) == ["idle-keepalive"]
    # An untagged response with a literal is being relayed: the keepalive waits for its end.
    session.receive_from_upstream(b"* 1 FETCH (BODY[] {3}\r\n")
    assert to_client(session.keepalive()) == b""
    out = session.receive_from_upstream(b"abc)\r\n")
    assert to_client(out) == b"abc)\r\n* OK Still here\r\n"
    session.receive_from_client(b"DONE\r\n")
    session.receive_from_upstream(b"i OK done\r\n")
    assert session.keepalive_interval is None


def test_a_prefixed_tag_never_collides_with_a_client_tag_in_flight() -> None:
    session = session_for(["coremail-letter-tags"], COREMAIL)
    out = session.receive_from_client(b"A5 NOOP\r\n5 NOOP\r\n")
    assert to_upstream(out) == b"A5 NOOP\r\n5 NOOP\r\n"  # the second keeps its own tag
    out = session.receive_from_upstream(b"A5 OK\r\n5 OK\r\n")
    assert to_client(out) == b"A5 OK\r\n5 OK\r\n"


def test_capabilities_sent_during_login_show_what_the_proxy_adds_after_it() -> None:
    session = session_for(["emulate-unselect"])
    session.receive_from_client(b"a LOGIN u p\r\n")
    out = session.receive_from_upstream(b"* CAPABILITY IMAP4rev1 IDLE\r\na OK Logged in\r\n")
    assert to_client(out) == b"* CAPABILITY IMAP4rev1 IDLE LITERAL+ UNSELECT\r\na OK Logged in\r\n"
    preauth = session_for(["emulate-unselect"], b"* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n")
    out = preauth.receive_from_client(b"c UNSELECT\r\n")
    assert to_client(out) == b"c BAD No mailbox selected\r\n"


_LEAVES = st.one_of(
    st.just(Nil()),
    st.builds(Quoted, st.binary(max_size=8).filter(lambda b: b"\r" not in b and b"\n" not in b)),
    st.builds(Atom, st.sampled_from([b"0", b"-1", b"12", b"7BIT", b"TEXT", b"x"])),
)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.builds(lambda items: ParenList(tuple(items)), st.lists(inner, max_size=12)),
    max_leaves=40,
)


@settings(max_examples=120, deadline=None)
@given(structure=_VALUES, envelope=_VALUES)
def test_structure_repair_never_fails_on_any_shape(structure: Value, envelope: Value) -> None:
    """Whatever an upstream sends, the repair returns encodable data (or leaves it)."""
    action = NormalizeBodyStructure(
        "n", NormalizeBodyStructureAction(type="normalize_body_structure")
    )
    data = FetchData(1, (("BODYSTRUCTURE", structure), ("ENVELOPE", envelope)))
    repaired = action.on_response(data, SessionView())
    assert isinstance(repaired, FetchData)
    encoded = encode_response(repaired).to_bytes()
    assert isinstance(parse_response(Message(*_split(encoded))), FetchData)


def _split(encoded: bytes) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """An encoded message (literals inline) back into lines and literals."""
    lines: list[bytes] = []
    literals: list[bytes] = []
    rest = encoded
    while True:
        end = rest.index(b"\r\n") + 2
        line, rest = rest[:end], rest[end:]
        lines.append(line)
        size = re.search(rb"\{(\d+)\}\r\n$", line)
        if size is None:
            return tuple(lines), tuple(literals)
        literals.append(rest[: int(size.group(1))])
        rest = rest[int(size.group(1)) :]


# --- every rule at once, any bytes --------------------------------------------------------

EVERY_RULE = SHIPPED.only([loaded.rule.id for loaded in SHIPPED.rules])
FUZZ_GREETINGS = [LEGACY, MODERN, COREMAIL, b"* PREAUTH [CAPABILITY IMAP4rev1 ID] Coremail\r\n"]
FUZZ_CLIENT = [
    b"1 LOGIN u p\r\n",
    b"2 SELECT INBOX\r\n",
    b"3 UNSELECT\r\n",
    b"4 NAMESPACE\r\n",
    b"5 ENABLE CONDSTORE\r\n",
    b"\r\n",
    b"6 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 0)\r\n",
    b'7 ID ("name" "com.apple.email.x" "event" "indexer")\r\n',
    b"8 IDLE\r\n",
    b"DONE\r\n",
    b"A9 APPEND INBOX {3}\r\n",
    b"10 FETCH 1 (BODYSTRUCTURE)\r\n",
]
FUZZ_UPSTREAM = [
    b"A1 OK [CAPABILITY IMAP4rev1 ID] in\r\n",
    b"ipx1 NO no\r\n",
    b"ipx2 OK done\r\n",
    b'* LIST (\\Noselect) "/" ""\r\n',
    b"+ go\r\n",
    b'* 1 FETCH (BODYSTRUCTURE ("text" "plain" () NIL NIL NIL -1 -1) BODY[]<9> NIL)\r\n',
    b"* 2 FETCH (ENVELOPE (NIL {2}\r\nab () NIL NIL NIL NIL NIL NIL NIL))\r\n",
    b"* OK [UIDVALIDITY 3]\r\n",
    b'* ID ("name" "Coremail")\r\n',
    b"A2 OK [READ-WRITE] done\r\n",
    b"A8 OK idle done\r\n",
]
fuzz_chunks = st.one_of(st.binary(max_size=30), st.sampled_from(FUZZ_CLIENT + FUZZ_UPSTREAM))
fuzz_steps = st.lists(
    st.tuples(st.sampled_from(["client", "upstream", "keepalive"]), fuzz_chunks), max_size=40
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FUZZ_GREETINGS), fuzz_steps)
def test_every_rule_at_once_never_raises(greeting: bytes, script: list[tuple[str, bytes]]) -> None:
    session = ProxySession(SessionSettings(rules=EVERY_RULE))
    events = session.receive_from_upstream(greeting)
    for side, data in script:
        if side == "client":
            events += session.receive_from_client(data)
        elif side == "upstream":
            events += session.receive_from_upstream(data)
        else:
            events += session.keepalive()
    events += session.upstream_closed() + session.client_closed()
    assert len([e for e in events if isinstance(e, ev.Close)]) == 1


def test_untagged_data_during_an_emulation_still_reaches_the_client() -> None:
    session = logged_in(["answer-namespace", "emulate-unselect"])
    session.receive_from_client(b"b SELECT INBOX\r\n")
    session.receive_from_upstream(b"* 1 EXISTS\r\nb OK done\r\n")
    session.receive_from_client(b"c NAMESPACE\r\n")
    out = session.receive_from_upstream(b'* 2 EXISTS\r\n* LIST () "." ""\r\nipx1 OK\r\n')
    assert to_client(out) == (
        b'* 2 EXISTS\r\n* NAMESPACE (("" ".")) NIL NIL\r\nc OK NAMESPACE completed\r\n'
    )
    session.receive_from_client(b"d UNSELECT\r\n")
    out = session.receive_from_upstream(b"* OK [CLOSED] closed\r\nipx2 NO no such mailbox\r\n")
    assert to_client(out) == b"* OK [CLOSED] closed\r\nd OK UNSELECT completed\r\n"


def test_a_non_ascii_capability_from_the_upstream_is_dropped_not_a_traceback() -> None:
    # Found by the session fuzz test: `* CAPABILITY \x80` raised UnicodeEncodeError.
    session = session_for([])
    out = session.receive_from_upstream(b"* CAPABILITY IMAP4rev1 \x80X IDLE\r\n")
    assert to_client(out) == b"* CAPABILITY IMAP4rev1 IDLE LITERAL+\r\n"
