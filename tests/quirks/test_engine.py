"""The rule engine through a sans-IO session: matching, each hook, and loading errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from imap_proxy.quirks.actions.capabilities import SHAPED_REMEMBERED, ShapeCapabilities, _shaped
from imap_proxy.quirks.engine import MATCHES_REMEMBERED, SessionView, matches
from imap_proxy.quirks.model import (
    CapabilitiesAction,
    Match,
    RuleLoadError,
    RuleSet,
    load_rules,
    rules_json_schema,
)
from imap_proxy.session import events as ev
from imap_proxy.session.proxy import ProxySession
from imap_proxy.session.settings import SessionSettings

GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE NAMESPACE AUTH=PLAIN] legacy\r\n"
EVIDENCE = "evidence: {fires: x.txt, silent: y.txt}"


def ruleset(tmp_path: Path, body: str) -> RuleSet:
    (tmp_path / "rules.yaml").write_text(body, encoding="utf-8")
    return load_rules(tmp_path)


def session_with(rules: RuleSet, greeting: bytes = GREETING) -> ProxySession:
    session = ProxySession(SessionSettings(rules=rules))
    session.receive_from_upstream(greeting)
    return session


def to_client(events: list[ev.Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, ev.SendToClient))


def to_upstream(events: list[ev.Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, ev.SendToUpstream))


def applied(events: list[ev.Event]) -> list[tuple[str, str]]:
    return [(e.rule_id, e.action) for e in events if isinstance(e, ev.RuleApplied)]


# --- loading ------------------------------------------------------------------------


def test_loading_errors_name_file_rule_and_field(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        f"""rules:
  - id: good-one
    summary: fine
    {EVIDENCE}
    actions: [{{type: lsub_noselect}}]
  - id: bad-param
    summary: x
    {EVIDENCE}
    actions: [{{type: hold_untagged, kinds: [FETCH]}}]
  - id: bad-regex
    summary: x
    {EVIDENCE}
    match: {{tag_pattern: "(["}}
    actions: [{{type: lsub_noselect}}]
""",
        encoding="utf-8",
    )
    (tmp_path / "b.yaml").write_text(
        f"""rules:
  - id: good-one
    summary: duplicate
    {EVIDENCE}
    colour: blue
    actions: [{{type: no_such_action}}]
""",
        encoding="utf-8",
    )
    with pytest.raises(RuleLoadError) as raised:
        load_rules(tmp_path)
    problems = "\n".join(raised.value.problems)
    assert "a.yaml: rule bad-param: actions.0.hold_untagged.kinds.0" in problems
    assert "a.yaml: rule bad-regex: match.tag_pattern" in problems
    assert "b.yaml: rule good-one: colour: Extra inputs are not permitted" in problems
    assert "b.yaml: rule good-one: actions.0" in problems


def test_shipped_rules_load_and_schema_is_json() -> None:
    shipped = load_rules()
    assert {
        "keep-imap4rev1",
        "answer-id-in-every-state",
        "delay-newmail",
        "tb-lsub-flags",
        "tb-extra-mailbox-sep",
        "outlook-lsub-special-use",
    } <= {loaded.rule.id for loaded in shipped.rules}
    assert '"discriminator"' in rules_json_schema() or '"oneOf"' in rules_json_schema()


# --- matching -----------------------------------------------------------------------


def test_match_conditions() -> None:
    view = SessionView(
        listener="imaps",
        family="thunderbird",
        confidence=0.7,
        first_tag=b"58",
        id_params=[(b"name", b"Thunderbird")],
        upstream_capabilities=["IMAP4rev1", "IDLE"],
        greeting=b"* OK Dovecot ready.",
    )
    assert matches(Match(), view)
    assert matches(Match(client_families=["thunderbird"], min_confidence=0.5), view)
    assert not matches(Match(client_families=["k9"]), view)
    assert not matches(Match(min_confidence=0.9), view)
    assert matches(Match(upstream_capabilities_present=["idle"]), view)
    assert not matches(Match(upstream_capabilities_absent=["IDLE"]), view)
    assert matches(Match(tag_pattern=r"^\d+$", upstream_greeting="Dovecot"), view)
    assert not matches(Match(upstream_greeting="Courier"), view)
    assert matches(Match(id_fields={"NAME": "^Thunder"}), view)
    assert not matches(Match(id_fields={"version": "."}), view)
    assert not matches(Match(listeners=["imap"]), view)


# --- hooks --------------------------------------------------------------------------


def test_capabilities_action_prepends_and_removes(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        f"""rules:
  - id: shape
    summary: x
    {EVIDENCE}
    actions: [{{type: capabilities, prepend: [IMAP4rev1], add: [XTEST], remove: [IDLE]}}]
""",
    )
    session = ProxySession(SessionSettings(rules=rules))
    out = session.receive_from_upstream(b"* OK [CAPABILITY IMAP4rev2 IDLE] hi\r\n")
    assert to_client(out) == b"* OK [CAPABILITY IMAP4rev1 LITERAL+ XTEST] hi\r\n"
    assert applied(out) == [("shape", "capabilities")]


def test_a_shaping_action_remembers_each_list_apart_and_hands_out_copies() -> None:
    spec = CapabilitiesAction(type="capabilities", prepend=["IMAP4rev1"], remove=["idle"])
    shape = ShapeCapabilities("shape", spec)
    view = SessionView()
    assert shape.capabilities(["IDLE", "MOVE"], view) == ["IMAP4rev1", "MOVE"]
    assert shape.capabilities(["IMAP4rev1", "ID"], view) == ["IMAP4rev1", "ID"]
    first = shape.capabilities(["IDLE", "MOVE"], view)  # remembered now
    first.append("XSPOILED")
    assert shape.capabilities(["IDLE", "MOVE"], view) == ["IMAP4rev1", "MOVE"]
    for number in range(SHAPED_REMEMBERED + 10):  # an upstream could vary its list
        assert shape.capabilities([f"X{number}"], view) == ["IMAP4rev1", f"X{number}"]
    assert _shaped.cache_info().currsize == SHAPED_REMEMBERED


def rule_text(rule_id: str, actions: str, match: str | None = None) -> str:
    """One rule of a rules file, with the summary and evidence every rule needs."""
    lines = [f"  - id: {rule_id}", "    summary: x", f"    {EVIDENCE}"]
    if match is not None:
        lines.append(f"    match: {match}")
    return "\n".join([*lines, f"    actions: {actions}"]) + "\n"


def test_only_actions_that_shape_capabilities_are_asked_and_later_matches_count(
    tmp_path: Path,
) -> None:
    rules = ruleset(
        tmp_path,
        "rules:\n"
        + rule_text("strip", "[{type: strip_trailing_separator}]")
        + rule_text(
            "shape-for-numeric-tags",
            "[{type: capabilities, add: [XTEST]}]",
            match="{tag_pattern: '^[0-9]+$'}",
        ),
    )
    session = session_with(rules)
    assert [a.rule_id for a in session.hooks.rules.active] == ["strip"]
    assert session.hooks.rules.shapers == []
    session.receive_from_client(b"1 CAPABILITY\r\n")  # the first tag makes the rule match
    assert [a.rule_id for a in session.hooks.rules.shapers] == ["shape-for-numeric-tags"]
    out = session.receive_from_upstream(b"* CAPABILITY IMAP4rev1 IDLE\r\n1 OK done\r\n")
    assert to_client(out) == b"* CAPABILITY IMAP4rev1 IDLE LITERAL+ XTEST\r\n1 OK done\r\n"
    assert ("shape-for-numeric-tags", "capabilities") in applied(out)
    other = session_with(rules)
    other.receive_from_client(b"x1 CAPABILITY\r\n")
    out = other.receive_from_upstream(b"* CAPABILITY IMAP4rev1 IDLE\r\nx1 OK done\r\n")
    assert to_client(out) == b"* CAPABILITY IMAP4rev1 IDLE LITERAL+\r\nx1 OK done\r\n"


def test_answer_id_only_where_the_upstream_lacks_it(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        f"""rules:
  - id: answer
    summary: x
    {EVIDENCE}
    actions: [{{type: answer_id, fields: {{name: imap-proxy}}}}]
""",
    )
    session = session_with(rules)
    out = session.receive_from_client(b'a ID ("name" "x")\r\n')
    assert to_client(out) == b'* ID ("name" "imap-proxy")\r\na OK ID completed\r\n'
    assert to_upstream(out) == b""
    assert ("answer", "answer_id") in applied(out)
    modern = session_with(rules, b"* OK [CAPABILITY IMAP4rev1 ID] hi\r\n")
    out = modern.receive_from_client(b'a ID ("name" "x")\r\n')
    assert to_upstream(out) == b'a ID ("name" "x")\r\n' and not applied(out)


def test_strip_trailing_separator_uses_the_learnt_delimiter(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        f"""rules:
  - id: strip
    summary: x
    {EVIDENCE}
    actions: [{{type: strip_trailing_separator}}]
""",
    )
    session = session_with(rules)
    out = session.receive_from_client(b'a CREATE "Work/"\r\n')
    assert to_upstream(out) == b'a CREATE "Work"\r\n'
    assert applied(out) == [("strip", "strip_trailing_separator")]
    session.receive_from_upstream(b"a OK\r\n")
    session.receive_from_client(b'b LIST "" ""\r\n')
    session.receive_from_upstream(b'* LIST (\\Noselect) "." ""\r\nb OK\r\n')
    # The upstream's separator is ".": a trailing "/" is now part of the name.
    out = session.receive_from_client(b'c SELECT "Work/"\r\nd SELECT INBOX.Sub.\r\n')
    assert to_upstream(out) == b'c SELECT "Work/"\r\nd SELECT "INBOX.Sub"\r\n'


def test_lsub_rules_use_what_list_showed(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        f"""rules:
  - id: noselect
    summary: x
    {EVIDENCE}
    actions: [{{type: lsub_noselect}}]
  - id: special
    summary: x
    {EVIDENCE}
    actions: [{{type: lsub_special_use, folders: {{Deleted: "\\\\Trash"}}}}]
""",
    )
    session = session_with(rules)
    session.receive_from_client(b'a LIST "" "*"\r\n')
    out = session.receive_from_upstream(
        b'* LIST (\\Noselect \\HasChildren) "." Parent\r\n'
        b'* LIST (\\HasNoChildren \\Sent) "." {4}\r\nSent\r\na OK\r\n'
    )
    # LIST itself passes unchanged (the literal mailbox name is kept as a literal).
    assert to_client(out) == (
        b'* LIST (\\Noselect \\HasChildren) "." Parent\r\n'
        b'* LIST (\\HasNoChildren \\Sent) "." {4}\r\nSent\r\na OK\r\n'
    )
    session.receive_from_client(b'b LSUB "" "*"\r\n')
    out = session.receive_from_upstream(
        b'* LSUB () "." Parent\r\n* LSUB () "." Sent\r\n* LSUB () "." Deleted\r\n'
        b'* LSUB () "." INBOX\r\nb OK\r\n'
    )
    assert to_client(out) == (
        b'* LSUB (\\Noselect) "." "Parent"\r\n* LSUB (\\Sent) "." "Sent"\r\n'
        b'* LSUB (\\Trash) "." "Deleted"\r\n* LSUB () "." INBOX\r\nb OK\r\n'
    )
    assert applied(out) == [
        ("noselect", "lsub_noselect"),
        ("special", "lsub_special_use"),
        ("special", "lsub_special_use"),
    ]


def test_hold_untagged_until_noop_and_never_past_a_message_number(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        f"""rules:
  - id: delay
    summary: x
    {EVIDENCE}
    actions: [{{type: hold_untagged}}]
""",
    )
    session = session_with(rules)
    session.receive_from_client(b"a SELECT INBOX\r\n")
    out = session.receive_from_upstream(b"* 3 EXISTS\r\n* 0 RECENT\r\na OK\r\n")
    assert to_client(out) == b"* 3 EXISTS\r\n* 0 RECENT\r\na OK\r\n"  # SELECT carries them
    session.receive_from_client(b"b STATUS Drafts (MESSAGES)\r\n")
    out = session.receive_from_upstream(
        b"* 4 EXISTS\r\n* 5 EXISTS\r\n* 1 RECENT\r\n* STATUS Drafts (MESSAGES 0)\r\nb OK\r\n"
    )
    assert to_client(out) == b"* STATUS Drafts (MESSAGES 0)\r\nb OK\r\n"
    assert applied(out) == [("delay", "hold_untagged")] * 3
    session.receive_from_client(b"c NOOP\r\n")
    out = session.receive_from_upstream(b"c OK\r\n")
    assert to_client(out) == b"* 5 EXISTS\r\n* 1 RECENT\r\nc OK\r\n"
    # An EXPUNGE must not reach the client before the EXISTS it depends on.
    session.receive_from_client(b"d STATUS Drafts (MESSAGES)\r\n")
    out = session.receive_from_upstream(b"* 6 EXISTS\r\n* 6 EXPUNGE\r\nd OK\r\n")
    assert to_client(out) == b"* 6 EXISTS\r\n* 6 EXPUNGE\r\nd OK\r\n"
    # What was held for the old mailbox is dropped when another is selected.
    session.receive_from_client(b"e STATUS Drafts (MESSAGES)\r\n")
    session.receive_from_upstream(b"* 7 EXISTS\r\ne OK\r\n")
    session.receive_from_client(b"f SELECT Other\r\n")
    out = session.receive_from_upstream(b"* 2 EXISTS\r\nf OK\r\n")
    assert to_client(out) == b"* 2 EXISTS\r\nf OK\r\n"


def test_rule_applies_from_the_moment_its_match_holds(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        f"""rules:
  - id: strip-for-numeric-tags
    summary: x
    {EVIDENCE}
    match: {{tag_pattern: '^[0-9]+$'}}
    actions: [{{type: strip_trailing_separator}}]
""",
    )
    session = session_with(rules)
    assert to_upstream(session.receive_from_client(b'12 CREATE "A/"\r\n')) == b'12 CREATE "A"\r\n'
    other = session_with(rules)
    assert to_upstream(other.receive_from_client(b'x1 CREATE "A/"\r\n')) == b'x1 CREATE "A/"\r\n'
    # Sessions with the same facts share the remembered answer: still the right one.
    again = session_with(rules)
    assert to_upstream(again.receive_from_client(b'12 CREATE "B/"\r\n')) == b'12 CREATE "B"\r\n'
    for number in range(MATCHES_REMEMBERED + 20):  # first tags come from clients: bounded
        session_with(rules).receive_from_client(b"t%d NOOP\r\n" % number)
    assert len(rules.session_cache["matches"]) == MATCHES_REMEMBERED
