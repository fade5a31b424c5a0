"""Real clients' opening sequences, replayed byte for byte over a raw socket through the proxy.

How this works: each `Replay` is data -- the client's commands as captured in
../shared/research/clients-and-quirks.md §1.2 and §4.1 (tags, verb casing, pipelining,
literals as the client sends them), with `{user}`, `{password}`, `{sasl_plain}` and
`{trash}` filled in per test -- grouped into `Step`s: the bytes a client sends in one go,
and what it waits for before sending more (the tagged completion of the step's last
command, or a `+` continuation). `replay()` sends each step, reads the responses (literals
included), and the test asserts that no response is NO or BAD, tagged or untagged, and that
every command was completed OK. The greeting must never advertise IMAP4rev2 (Dovecot is
rev1; the capability contract forbids passing rev2 on). The proxy runs with its packaged
rules and fingerprint definitions and an observer collecting its `ClientIdentified`
events: the session's last one must name `Replay.fingerprint` (a family of
imap_proxy/rules/fingerprints.yaml, the names rules' `client_families` use) and
`Replay.version`, with at least medium confidence. The compatibility table's note says
which family the proxy identified.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

import pytest

from imap_proxy.session.events import ClientIdentified
from tests.clients.conftest import CompatScenario
from tests.clients.support import TRASH_FOLDER, append_raw, client_proxy_config, make_message
from tests.support.dovecot import DovecotInstance, MailUser
from tests.support.proxy import RawClient, running_proxy

pytestmark = pytest.mark.dovecot

CONTINUATION = "+"
_LITERAL_AT_END = re.compile(rb"\{(\d+)\}\r\n$")
_FAILURE = re.compile(rb"^(\S+) (NO|BAD)\b", re.IGNORECASE)
_TAGGED = re.compile(rb"^(\S+) (OK|NO|BAD)\b", re.IGNORECASE)
MEDIUM_CONFIDENCE = 0.5  # the fingerprint's "medium" bucket (imap_proxy/rules/fingerprints.yaml)


@dataclass(frozen=True, slots=True)
class Step:
    """Lines a client sends in one go (CRLF added to each), then what it waits for:
    the tagged completion of `until` or, for CONTINUATION, a `+` line."""

    lines: tuple[str, ...]
    until: str


@dataclass(frozen=True, slots=True)
class Replay:
    name: str
    client: str
    source: str  # where the sequence comes from
    steps: tuple[Step, ...]
    fingerprint: str  # the family the fingerprint engine should give this session
    version: str | None  # and the client version it should read from the ID
    profiles: tuple[str, ...] = ("modern", "legacy")


def one(line: str) -> Step:
    """A single command, waited for by its tag."""
    return Step((line,), line.split(" ", 1)[0])


IOS_ID = (
    '("name" "com.apple.email.maild" "version" "3864.600.51.2.1" "os" "iOS" '
    '"os-version" "26.5 (23F77)" "vendor" "Apple Inc" "event" NIL)'
)
MACOS_ID = (
    '("name" "Mac OS X Mail" "version" "16.0 (3696.80.82.1.1)" "os" "Mac OS X" '
    '"os-version" "12.3 (21E230)" "vendor" "Apple Inc.")'
)
REPLAYS = (
    Replay(
        name="iOS 26 Mail opener",
        client="iOS Mail (replay)",
        source="§4.1: B1..B4, C5, D35, C19, D6 (ClientOpenerTest, iOS 26.5)",
        fingerprint="ios-mail",
        version="26.5",
        steps=(
            one("B1 AUTHENTICATE PLAIN {sasl_plain}"),
            one(f"B2 ID {IOS_ID}"),
            Step(  # pipelined in one packet, as iOS does
                (
                    "B3 NAMESPACE",
                    'B4 LIST "" "*" RETURN (STATUS (MESSAGES UIDNEXT UIDVALIDITY UNSEEN '
                    "HIGHESTMODSEQ) SPECIAL-USE)",
                ),
                "B4",
            ),
            one('C5 SELECT "INBOX" (CONDSTORE)'),
            one("D35 UID SEARCH RETURN (ALL) UID 1:*"),
            one("C19 UID FETCH 1:3 (UID BODY.PEEK[]<0.393216>)"),
            Step(("D6 IDLE",), CONTINUATION),
            Step(("DONE",), "D6"),
            one("D7 LOGOUT"),
        ),
    ),
    Replay(
        name="macOS Mail pre-login ID",
        client="macOS Mail (replay)",
        source="§1.2: 1.854 CAPABILITY, 2.854 ID before AUTHENTICATE, ENABLE QRESYNC",
        fingerprint="apple-mail",
        version="16.0 (3696.80.82.1.1)",
        steps=(
            one("1.854 CAPABILITY"),
            one(f"2.854 ID {MACOS_ID}"),
            Step(("3.854 AUTHENTICATE PLAIN",), CONTINUATION),
            Step(("{sasl_plain}",), "3.854"),
            one("4.854 ENABLE QRESYNC"),
            one('5.854 SELECT "INBOX"'),
            one("6.854 UNSELECT"),
            one('7.854 SELECT "INBOX"'),
            one("8.854 UNSELECT"),
            one("9.854 LOGOUT"),
        ),
    ),
    Replay(
        name="Thunderbird lowercase verbs, random first tag",
        client="Thunderbird (replay)",
        source="§1.2: first tag 1+rand()%100 (58 from a trace), lowercase verbs",
        fingerprint="thunderbird",
        version="128.5.0",
        steps=(
            one("58 capability"),
            one('59 login "{user}" "{password}"'),
            one('60 ID ("name" "Thunderbird" "version" "128.5.0")'),
            one('61 list (subscribed) "" "*" return (special-use)'),
            one('62 select "INBOX"'),
            one("63 uid fetch 1:* (FLAGS)"),
            one('64 uid copy 1 "{trash}"'),
            one("65 uid store 1 +FLAGS (\\Deleted)"),
            one("66 noop"),
            one("67 logout"),
        ),
    ),
    Replay(
        name="new Outlook LOGIN with non-synchronizing literals",
        client="new Outlook (replay)",
        source="§1.2: A1 LOGIN {n+} (sora PR #77), then ID, NAMESPACE, ENABLE",
        fingerprint="outlook-new",
        version="16.0",
        # rev2only: an upstream greeting with IMAP4rev2 (and no IMAP4rev1), as Outlook saw it
        profiles=("modern", "legacy", "legacy_noliteralplus", "rev2only"),
        steps=(
            Step(("A1 LOGIN {{{user_len}+}}", "{user} {{{password_len}+}}", "{password}"), "A1"),
            one('A2 ID ("name" "Microsoft Outlook" "version" "16.0")'),
            one("A3 NAMESPACE"),
            one("A4 ENABLE CONDSTORE"),
            one("A5 CAPABILITY"),
            one('A6 LIST "" "*"'),
            one('A7 SELECT "INBOX"'),
            one("A8 UID FETCH 1:* (UID FLAGS)"),
            one("A9 LOGOUT"),
        ),
    ),
)


def read_response(raw: RawClient) -> bytes:
    """One server line, with any literals it announces (and the line after each)."""
    data = raw.read_line()
    while (literal := _LITERAL_AT_END.search(data)) is not None:
        size = int(literal.group(1))
        while len(raw.buffer) < size:
            chunk = raw.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed inside a literal after {data[-200:]!r}")
            raw.buffer += chunk
        data += raw.buffer[:size]
        raw.buffer = raw.buffer[size:]
        data += raw.read_line()
    return data


def replay(raw: RawClient, steps: tuple[Step, ...], values: dict[str, str]) -> list[bytes]:
    """Send every step and return all server responses after the greeting."""
    responses: list[bytes] = []
    for step in steps:
        raw.send(b"".join(line.format(**values).encode() + b"\r\n" for line in step.lines))
        while True:
            response = read_response(raw)
            responses.append(response)
            if step.until == CONTINUATION and response.startswith(b"+"):
                break
            tagged = _TAGGED.match(response)
            if tagged and tagged.group(1).decode() == step.until:
                break
    return responses


def sent_tags(steps: tuple[Step, ...]) -> list[str]:
    """The tag of every command in `steps` (continuation data and DONE have none)."""
    return [
        line.split(" ", 1)[0]
        for step in steps
        for line in step.lines
        if " " in line and not line.startswith("{")
    ]


@pytest.mark.parametrize(
    ("replay_case", "profile"),
    [
        pytest.param(case, profile, id=f"{case.fingerprint}-{profile}")
        for case in REPLAYS
        for profile in case.profiles
    ],
)
def test_opener_replay(
    replay_case: Replay,
    profile: str,
    request: pytest.FixtureRequest,
    fresh_mail_user: object,
    compat: CompatScenario,
) -> None:
    compat.set(
        kind="replay",
        client=replay_case.client,
        version="replayed trace",
        scenario=replay_case.name,
    )
    upstream: DovecotInstance = request.getfixturevalue(f"dovecot_{profile}")
    user: MailUser = fresh_mail_user(upstream)  # type: ignore[operator]
    append_raw(upstream, user, [make_message(key) for key in ("first", "second", "third")])
    values = {
        "user": user.name,
        "password": user.password,
        "user_len": str(len(user.name)),
        "password_len": str(len(user.password)),
        "sasl_plain": base64.b64encode(f"\0{user.name}\0{user.password}".encode()).decode(),
        "trash": TRASH_FOLDER[profile],
    }
    identified: list[ClientIdentified] = []

    def observe(event: object) -> None:
        if isinstance(event, ClientIdentified):
            identified.append(event)

    config = client_proxy_config(upstream)
    with running_proxy(config, observer=observe) as proxy, proxy.raw() as raw:
        greeting = raw.read_line()
        assert greeting.startswith(b"* OK"), greeting
        assert b"IMAP4rev1" in greeting and b"IMAP4REV2" not in greeting.upper(), greeting
        responses = replay(raw, replay_case.steps, values)

    failures = [r for r in responses if _FAILURE.match(r)]
    assert not failures, failures
    completed = {
        m.group(1).decode(): m.group(2).upper()
        for r in responses
        if (m := _TAGGED.match(r)) and not r.startswith(b"*")
    }
    assert completed == dict.fromkeys(sent_tags(replay_case.steps), b"OK"), responses
    assert not any(b"IMAP4REV2" in r.upper() for r in responses if b"CAPABILITY" in r)
    # The proxy told this client apart by what it sent: the family its rules name.
    assert identified, "the session reported no fingerprint"
    last = identified[-1]
    compat.note = f"identified as {last.family}"
    assert (last.family, last.version) == (replay_case.fingerprint, replay_case.version)
    assert last.confidence >= MEDIUM_CONFIDENCE, identified
