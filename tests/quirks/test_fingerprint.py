"""The client fingerprint engine: real opening lines in, the right family out.

How this works: tests/quirks/openers/*.txt are clients' real opening lines (tags, verb
casing, ID strings, order) as the research catalogue documents them, in the golden
transcript format; each is replayed with `profile_from_transcript` into a Fingerprinter
using the *packaged* definitions, exactly the path `imap-proxy fingerprint TRACE` takes.
Other tests drive a Fingerprinter directly: spoofed IDs, credentials never kept, settling,
change reporting, SNI/listener signals, and validation errors of definition files.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imapclient import IMAPClient

from imap_proxy.config import ProxyConfig
from imap_proxy.quirks.fingerprint import (
    DECISIONS_REMEMBERED,
    UNKNOWN,
    ClientProfile,
    Fingerprinter,
    FingerprintLoadError,
    FingerprintSet,
    command_shape,
    profile_from_transcript,
    verb_as_sent,
)
from imap_proxy.quirks.model import RuleSet
from imap_proxy.quirks.store import QuirkSnapshot, RuleStore
from imap_proxy.quirks.trace import load_trace, parse_trace
from imap_proxy.session.events import ClientIdentified
from tests.support import transcript
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.proxy import RunningProxy, running_proxy

OPENERS = Path(__file__).parent / "openers"
PACKAGED = FingerprintSet.packaged()
SECRETS = ("alice", "hunter2", base64.b64encode(b"\0alice\0hunter2").decode())
RANK = {"low": 0, "medium": 1, "high": 2}

# opener file -> (family, lowest acceptable bucket, version or None)
EXPECTED = {
    "thunderbird": ("thunderbird", "high", "128.5.0"),
    "k9-mail": ("k9-mail", "high", "8.2"),
    "fairemail": ("fairemail", "high", "1.2243"),
    "apple-mail": ("apple-mail", "high", "16.0 (3696.80.82.1.1)"),
    "ios-mail-18": ("ios-mail", "high", "18.2.1"),
    "ios-mail-26": ("ios-mail", "high", "26.5"),
    "outlook-classic": ("outlook-classic", "medium", None),
    "outlook-new": ("outlook-new", "high", "1.2025"),
    "evolution": ("evolution", "high", None),
    "geary": ("geary", "high", None),
    "mutt": ("mutt", "high", None),
    "neomutt": ("mutt", "high", "20250510"),
    "alpine": ("alpine", "high", "2.26"),
    "mbsync": ("mbsync", "low", None),  # numeric tags from 1, no ID: weak evidence
    "offlineimap": ("offlineimap", "high", "8.0.0"),
    "python-imaplib": ("python-imaplib", "medium", None),
    "fetchmail": ("fetchmail", "low", None),  # shares A0001 tags with Roundcube
    "roundcube": ("roundcube", "high", "1.6.9"),
    "sogo": ("sogo", "high", None),
    "aosp-email": ("aosp-email", "high", "2.3.4"),
    "mailkit": ("mailkit", "high", None),
    "javamail": ("javamail", "medium", None),
}


def opener(name: str) -> ClientProfile:
    return profile_from_transcript(load_trace(OPENERS / f"{name}.txt"), PACKAGED)


def test_every_opener_has_an_expectation() -> None:
    files = {p.stem for p in OPENERS.glob("*.txt")} - {"spoofed-thunderbird-imaplib"}
    assert files == set(EXPECTED)
    assert len({family for family, _, _ in EXPECTED.values()}) >= 12


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_opener_gives_the_right_family(name: str) -> None:
    family, lowest, version = EXPECTED[name]
    profile = opener(name)
    assert profile.family == family, profile.describe()
    assert RANK[profile.confidence_bucket] >= RANK[lowest], profile.describe()
    assert 0 < profile.confidence <= 1
    assert profile.version == version
    assert profile.evidence
    # the weakest cases must say so: a low bucket is reported as such, not as high
    if lowest == "low":
        assert profile.confidence_bucket != "high", profile.describe()


def test_confidence_respects_the_family_cap_where_evidence_is_weak() -> None:
    outlook = PACKAGED.family("outlook-classic")
    assert outlook is not None and outlook.evidence == "low"
    profile = opener("outlook-classic")
    assert profile.confidence <= outlook.max_confidence
    assert profile.confidence_bucket == "medium"


def test_outlook_classic_without_id_from_tags_and_capability_after_login() -> None:
    fp = Fingerprinter(PACKAGED)
    fp.observe_command(b"8eeh", b"LOGIN", b"8eeh LOGIN alice hunter2\r\n", authenticated=False)
    fp.observe_authenticated()
    assert fp.profile.confidence_bucket == "low"  # the tag shape alone is one weak trace
    profile = fp.observe_command(b"8eei", b"CAPABILITY", b"8eei CAPABILITY\r\n", authenticated=True)
    assert profile is not None and profile is fp.profile  # the bucket changed: reported
    assert profile.family == "outlook-classic", profile.describe()
    assert profile.confidence_bucket == "medium"
    assert any("right after login" in line for line in profile.evidence)
    assert any("first tag '8eeh'" in line for line in profile.evidence)


def test_outlook_capability_habit_alone_does_not_make_outlook() -> None:
    # Mutt also sends CAPABILITY after login; its tag shape must win.
    profile = opener("mutt")
    assert profile.family == "mutt"
    assert any("CAPABILITY" in line for line in profile.evidence)


def test_spoofed_id_gives_lower_confidence_than_a_consistent_one() -> None:
    spoofed = opener("spoofed-thunderbird-imaplib")
    genuine = opener("thunderbird")
    assert genuine.family == "thunderbird"
    assert spoofed.confidence < genuine.confidence
    assert not (spoofed.family == "thunderbird" and spoofed.confidence_bucket == "high")
    # the tags tell the truth: an imaplib-shaped session
    assert spoofed.family == "python-imaplib"
    assert any(line.startswith("against:") for line in spoofed.evidence)


def test_thunderbird_id_alone_without_tags_is_weaker_than_with_them() -> None:
    fp = Fingerprinter(PACKAGED)
    fp.observe_command(b"1", b"ID", b'1 ID ("name" "Thunderbird")\r\n', authenticated=True)
    fp.observe_id([(b"name", b"Thunderbird")], authenticated=True)
    assert fp.profile.family == "thunderbird"
    assert fp.profile.confidence < opener("thunderbird").confidence


LOGIN_FORMS = [
    b"a1 LOGIN alice hunter2\r\n",
    b'a1 login "alice" "hunter2"\r\n',
    b"a1 LOGIN alice {7}\r\n",
    b"a1 LOGIN alice {7+}\r\n",
    b"a1 AUTHENTICATE PLAIN " + SECRETS[2].encode() + b"\r\n",
    b"a1 AUTHENTICATE hunter2 alice\r\n",  # garbage mechanism: not echoed either
]


@pytest.mark.parametrize("line", LOGIN_FORMS)
def test_credentials_never_stored_or_in_evidence(line: bytes) -> None:
    fp = Fingerprinter(PACKAGED)
    fp.observe_command(b"a1", verb_as_sent(line), line, authenticated=False)
    fp.observe_authenticated()
    for n in range(2, 8):
        fp.observe_command(b"a%d" % n, b"NOOP", b"a%d NOOP\r\n" % n, authenticated=True)
    kept = repr(fp._seen) + repr(fp.profile) + fp.profile.describe()
    for secret in SECRETS:
        assert secret not in kept
    assert command_shape(verb_as_sent(line), line).split()[0] in ("LOGIN", "AUTHENTICATE")


def test_no_opener_leaks_credentials_into_evidence() -> None:
    for path in sorted(OPENERS.glob("*.txt")):
        profile = profile_from_transcript(load_trace(path), PACKAGED)
        text = profile.describe()
        for secret in SECRETS:
            assert secret not in text, (path.name, text)


def test_command_shapes() -> None:
    assert command_shape(b"LOGIN", b"A1 LOGIN {5+}\r\n") == "LOGIN <literal+>"
    assert command_shape(b"LOGIN", b"A1 LOGIN {5}\r\n") == "LOGIN <literal>"
    assert command_shape(b"AUTHENTICATE", b"1 AUTHENTICATE plain abc=\r\n") == (
        "AUTHENTICATE PLAIN <ir>"
    )
    assert command_shape(b"AUTHENTICATE", b"1 AUTHENTICATE XOAUTH2\r\n") == "AUTHENTICATE XOAUTH2"
    assert command_shape(b"ID", b"1 ID NIL\r\n") == "ID NIL"
    assert command_shape(b"id", b'1 id ("name" "x")\r\n') == "ID (...)"
    assert command_shape(b"uid fetch", b"5 uid fetch 1:* (FLAGS)\r\n") == "UID FETCH 1:* (FLAGS)"
    assert verb_as_sent(b"5 uid fetch 1:* (FLAGS)\r\n") == b"uid fetch"


def test_changes_are_reported_once_and_settling_stops_observation() -> None:
    fp = Fingerprinter(PACKAGED)
    assert fp.profile is UNKNOWN
    first = fp.observe_command(
        b"a0000", b"CAPABILITY", b"a0000 CAPABILITY\r\n", authenticated=False
    )
    assert first is not None and first.family == "mutt"
    # same family, version and bucket: no new report
    again = fp.observe_command(b"a0001", b"NOOP", b"a0001 NOOP\r\n", authenticated=False)
    assert again is None
    assert fp.profile.family == "mutt"
    for n in range(2, PACKAGED.definitions.settle_after_commands):
        fp.observe_command(b"a%04d" % n, b"NOOP", b"a%04d NOOP\r\n" % n, authenticated=False)
    assert fp.settled
    before = fp.profile
    assert fp.observe_id([(b"name", b"Thunderbird")], authenticated=False) is None
    assert fp.observe_command(b"x", b"login", b"x login a b\r\n", authenticated=False) is None
    assert fp.profile is before


def test_settles_early_on_high_confidence_with_id() -> None:
    fp = Fingerprinter(PACKAGED)
    fp.observe_command(b"1.854", b"CAPABILITY", b"1.854 CAPABILITY\r\n", authenticated=False)
    assert not fp.settled
    fp.observe_command(
        b"2.854", b"ID", b'2.854 ID ("name" "Mac OS X Mail")\r\n', authenticated=False
    )
    changed = fp.observe_id(
        [(b"name", b"Mac OS X Mail"), (b"version", b"16.0")], authenticated=False
    )
    assert changed is not None and changed.version == "16.0"
    assert fp.settled and fp.profile.confidence_bucket == "high"


def test_id_nil_counts_against_id_signals() -> None:
    fp = Fingerprinter(PACKAGED)
    fp.observe_command(b"1", b"capability", b"1 capability\r\n", authenticated=False)
    fp.observe_command(b"2", b"login", b"2 login a b\r\n", authenticated=False)
    fp.observe_authenticated()
    fp.observe_command(b"3", b"ID", b"3 ID NIL\r\n", authenticated=True)
    fp.observe_id(None, authenticated=True)
    assert fp.profile.family == "sogo"  # lowercase, tags from 1; SOGo's ID field missing
    assert any("ID NIL" in line for line in fp.profile.evidence)


SNI_DEFINITIONS = """
version: 1
families:
  - family: corp-webmail
    summary: our webmail, which connects with SNI webmail-imap.example
    evidence: high
    signals:
      - {kind: sni, pattern: '^webmail-imap\\.', weight: 0.9, require: true}
      - {kind: listener, pattern: '^imaps$', weight: 0.1}
  - family: unknown
    summary: fallback
    evidence: high
"""


def test_sni_and_listener_signals() -> None:
    definitions = FingerprintSet.from_text(SNI_DEFINITIONS)
    hit = Fingerprinter(definitions, listener="imaps", sni="WEBMAIL-IMAP.example")
    assert hit.observe_command(b"1", b"NOOP", b"1 NOOP\r\n", authenticated=False) is not None
    assert hit.profile.family == "corp-webmail" and hit.profile.confidence_bucket == "high"
    assert any("SNI" in line for line in hit.profile.evidence)
    miss = Fingerprinter(definitions, listener="imaps", sni="imap.example")
    miss.observe_command(b"1", b"NOOP", b"1 NOOP\r\n", authenticated=False)
    assert miss.profile.family == "unknown"
    no_sni = Fingerprinter(definitions, listener="imap")
    no_sni.observe_command(b"1", b"NOOP", b"1 NOOP\r\n", authenticated=False)
    assert no_sni.profile.family == "unknown"


def test_transcript_replay_skips_literals_sasl_and_idle_lines() -> None:
    steps = parse_trace(
        """
        S: * OK ready
        C: 1.854 AUTHENTICATE PLAIN
        S: +
        C: 2.854 this SASL line looks like a command but is not
        S: 1.854 OK done
        C: 3.854 APPEND INBOX {23}
        C: 4.854 LOGIN literal
        C: x
        S: 3.854 OK appended
        C: 5.854 IDLE
        S: + idling
        C: DONE
        S: 5.854 OK idle done
        """.replace("        ", "")
    )
    fp = Fingerprinter(PACKAGED)
    from imap_proxy.quirks.trace import _Replay

    replay = _Replay(fp)
    for step in steps:
        (replay.from_client if step.prefix == "C" else replay.to_client)(step.data)
    assert fp._seen.tags == ["1.854", "3.854", "5.854"]
    assert fp._seen.auth_at == 1


def test_transcript_format_matches_the_golden_transcripts() -> None:
    text = (OPENERS / "thunderbird.txt").read_text()
    ours = [(s.prefix, s.data) for s in parse_trace(text)]
    theirs = [(s.prefix, s.data) for s in transcript.parse(text)]
    assert ours == theirs
    # tests' Step objects work directly too
    assert profile_from_transcript(transcript.parse(text)).family == "thunderbird"
    with pytest.raises(ValueError, match="line 1"):
        parse_trace("X: nonsense")


# --- definitions file validation --------------------------------------------------------

GOOD_FAMILY = """
  - family: unknown
    summary: fallback
    evidence: high
"""


def load_error(tmp_path: Path, families: str) -> str:
    path = tmp_path / "fingerprints.yaml"
    path.write_text("version: 1\nfamilies:\n" + families + GOOD_FAMILY)
    with pytest.raises(FingerprintLoadError) as caught:
        FingerprintSet.load(path)
    message = str(caught.value)
    assert str(path) in message
    return message


def test_bad_regex_names_file_family_and_field(tmp_path: Path) -> None:
    message = load_error(
        tmp_path,
        """
  - family: broken-client
    summary: x
    evidence: low
    signals:
      - {kind: first_tag, pattern: '^\\d+$', weight: 0.1}
      - {kind: first_tag, pattern: '^(unclosed', weight: 0.5}
""",
    )
    assert "family 'broken-client'" in message
    assert "signals[1].first_tag.pattern" in message
    assert "invalid regular expression" in message


def test_unknown_signal_kind_and_extra_field_are_errors(tmp_path: Path) -> None:
    message = load_error(
        tmp_path,
        """
  - family: one
    summary: x
    evidence: low
    signals:
      - {kind: telepathy, weight: 0.5}
  - family: two
    summary: x
    evidence: low
    colour: blue
    signals:
      - {kind: tag_start, min: 1, weight: 1.5}
""",
    )
    assert "family 'one'" in message and "signals[0]" in message and "telepathy" in message
    assert "family 'two'" in message and "colour" in message
    assert "signals[0].tag_start.weight" in message


def test_duplicate_family_and_missing_unknown_are_errors(tmp_path: Path) -> None:
    message = load_error(
        tmp_path,
        """
  - {family: twin, summary: x, evidence: low}
  - {family: twin, summary: y, evidence: low}
""",
    )
    assert "duplicate families: twin" in message
    path = tmp_path / "no-unknown.yaml"
    path.write_text("version: 1\nfamilies:\n  - {family: solo, summary: x, evidence: low}\n")
    with pytest.raises(FingerprintLoadError, match="'unknown'"):
        FingerprintSet.load(path)


def test_bad_family_name_and_yaml_syntax(tmp_path: Path) -> None:
    message = load_error(tmp_path, "\n  - {family: Not A Label, summary: x, evidence: low}\n")
    assert "family 'Not A Label'" in message and "field 'family'" in message
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nfamilies: [\n")
    with pytest.raises(FingerprintLoadError, match=r"broken\.yaml: invalid YAML"):
        FingerprintSet.load(broken)


def test_packaged_definitions_cover_the_required_clients() -> None:
    required = {
        "outlook-classic", "outlook-new", "apple-mail", "ios-mail", "thunderbird", "k9-mail",
        "fairemail", "evolution", "geary", "mutt", "alpine", "mbsync", "offlineimap",
        "fetchmail", "python-imaplib", "roundcube", "sogo", "aosp-email", "mailkit",
        "javamail", "unknown",
    }  # fmt: skip
    assert required <= set(PACKAGED.families)
    assert FingerprintSet.packaged() is PACKAGED  # parsed once, shared


# --- robustness -------------------------------------------------------------------------

TAGS = st.one_of(
    st.from_regex(rb"\A[A-Za-z0-9.]{1,12}\Z"),
    st.binary(min_size=0, max_size=30),
    st.integers(0, 10**40).map(lambda n: str(n).encode()),
)
VERBS = st.sampled_from(
    [b"LOGIN", b"login", b"AUTHENTICATE", b"CAPABILITY", b"capability", b"ID", b"uid fetch",
     b"SELECT", b"NOOP", b"", b"X-\xff\x00"]
)  # fmt: skip
ID_PARAMS = st.one_of(
    st.none(),
    st.lists(st.tuples(st.binary(max_size=20), st.one_of(st.none(), st.binary(max_size=80)))),
)
ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("command"), TAGS, VERBS, st.binary(max_size=120), st.booleans()),
        st.tuples(st.just("id"), ID_PARAMS, st.booleans()),
        st.tuples(st.just("auth")),
    ),
    max_size=30,
)


def _step(fp: Fingerprinter, action: tuple[object, ...]) -> ClientProfile | None:
    """Feed one generated action (a command, an ID, the login's OK) to `fp`."""
    if action[0] == "command":
        _, tag, verb, rest, authenticated = action
        assert isinstance(tag, bytes) and isinstance(verb, bytes) and isinstance(rest, bytes)
        line = tag + b" " + verb + b" " + rest + b"\r\n"
        return fp.observe_command(tag, verb, line, authenticated=bool(authenticated))
    if action[0] == "id":
        return fp.observe_id(action[1], authenticated=bool(action[2]))  # type: ignore[arg-type]
    return fp.observe_authenticated()


@settings(max_examples=150, deadline=None)
@given(actions=ACTIONS, sni=st.one_of(st.none(), st.text(max_size=30)))
def test_random_observations_never_raise_and_give_a_valid_profile(
    actions: list[tuple[object, ...]], sni: str | None
) -> None:
    fp = Fingerprinter(PACKAGED, listener="imap", sni=sni)
    commands = 0
    for action in actions:
        result = _step(fp, action)
        commands += action[0] == "command"
        profile = fp.profile
        assert result is None or result is profile
        assert profile.family in PACKAGED.families
        assert 0.0 <= profile.confidence <= 1.0
        assert profile.confidence_bucket in RANK
        assert (profile.family == "unknown") == (profile.confidence == 0.0)
        assert all(isinstance(line, str) for line in profile.evidence)
    assert commands < PACKAGED.definitions.settle_after_commands or fp.settled


def _replay(fp: Fingerprinter, actions: list[tuple[object, ...]]) -> list[object]:
    """Each step's report and profile (with evidence), for comparing two fingerprinters."""
    results: list[object] = []
    for action in actions:
        results += [_step(fp, action), fp.profile, fp.settled]
    return results


@settings(max_examples=100, deadline=None)
@given(actions=ACTIONS)
def test_remembered_decisions_give_what_fresh_scoring_gives(
    actions: list[tuple[object, ...]],
) -> None:
    # A definitions set remembers each observation's decision for later sessions; a
    # session replaying what an earlier one did must get exactly the same reports.
    definitions = FingerprintSet(PACKAGED.definitions)
    fresh = _replay(Fingerprinter(definitions), actions)
    remembered = len(definitions.decisions)
    assert _replay(Fingerprinter(definitions), actions) == fresh
    assert len(definitions.decisions) == remembered  # every step came from memory
    assert _replay(Fingerprinter(FingerprintSet(PACKAGED.definitions)), actions) == fresh


def test_remembered_decisions_are_bounded() -> None:
    definitions = FingerprintSet(PACKAGED.definitions)
    for n in range(DECISIONS_REMEMBERED + 50):
        tag = b"t%d" % n
        Fingerprinter(definitions).observe_command(
            tag, b"NOOP", tag + b" NOOP\r\n", authenticated=False
        )
    assert len(definitions.decisions) == DECISIONS_REMEMBERED
    # The oldest went first: the first tags' observations are no longer remembered.
    remembered_tags = {key[2] for key in definitions.decisions}
    assert ("t0",) not in remembered_tags and ("t2097",) in remembered_tags


# --- live: real clients through the real proxy against Dovecot --------------------------


@contextmanager
def identified(upstream: DovecotInstance) -> Iterator[tuple[RunningProxy, list[ClientIdentified]]]:
    """The real proxy with the packaged definitions; the ClientIdentified events it reports."""
    seen: list[ClientIdentified] = []

    def observe(event: object) -> None:
        if isinstance(event, ClientIdentified):
            seen.append(event)

    store = RuleStore(QuirkSnapshot(RuleSet.empty(), FingerprintSet.packaged()))
    config = ProxyConfig.model_validate(
        {"listen": ["127.0.0.1:0"], "upstream": {"address": f"127.0.0.1:{upstream.port}"}}
    )
    with running_proxy(config, observer=observe, rules=store) as proxy:
        yield proxy, seen


@pytest.mark.dovecot
def test_live_imaplib_session_is_identified(
    dovecot_modern: DovecotInstance, fresh_mail_user: Callable[[DovecotInstance], MailUser]
) -> None:
    user = fresh_mail_user(dovecot_modern)
    with identified(dovecot_modern) as (proxy, seen):
        client = proxy.imap()
        client.login(user.name, user.password)
        client.select("INBOX")
        client.noop()
        client.logout()
    assert seen, "the session reported no fingerprint"
    assert seen[-1].family == "python-imaplib"
    assert seen[-1].confidence >= 0.5
    assert all(user.password not in repr(event) for event in seen)


@pytest.mark.dovecot
def test_live_imapclient_with_a_thunderbird_id_is_not_taken_for_thunderbird(
    dovecot_modern: DovecotInstance, fresh_mail_user: Callable[[DovecotInstance], MailUser]
) -> None:
    user = fresh_mail_user(dovecot_modern)
    with identified(dovecot_modern) as (proxy, seen):
        client = IMAPClient("127.0.0.1", port=proxy.port, ssl=False, timeout=30)
        client.login(user.name, user.password)
        client.id_({"name": "Thunderbird", "version": "115.0"})
        client.select_folder("INBOX")
        client.logout()
    assert seen[-1].family == "python-imaplib"
    assert seen[-1].confidence < opener("thunderbird").confidence


@pytest.mark.dovecot
def test_live_thunderbird_opener_through_the_proxy(
    dovecot_modern: DovecotInstance, fresh_mail_user: Callable[[DovecotInstance], MailUser]
) -> None:
    user = fresh_mail_user(dovecot_modern)
    with identified(dovecot_modern) as (proxy, seen), proxy.raw() as raw:
        raw.read_line()  # greeting
        for tag, command in (
            ("58", "capability"),
            ("59", f'login "{user.name}" "{user.password}"'),
            ("60", 'ID ("name" "Thunderbird" "version" "128.5.0")'),
            ("61", 'select "INBOX"'),
            ("62", "logout"),
        ):
            raw.send(f"{tag} {command}\r\n".encode())
            line = raw.read_line()
            while not line.startswith(f"{tag} ".encode()):
                line = raw.read_line()
            assert line.startswith(f"{tag} OK".encode()), line
    assert seen[-1] == ClientIdentified("thunderbird", "128.5.0", seen[-1].confidence)
    assert seen[-1].confidence >= 0.8
