"""Where the session meets the quirk rules and the fingerprint.

How this works: `RuleHooks` belongs to one `ProxySession`. It keeps the `SessionView`
that rules match on (fed by the session: greeting, upstream capabilities, first tag, ID
fields, and the client profile the `Fingerprinter` derives from every command), a
`SessionRules` whose active set it refreshes whenever one of those facts changes, and the
queue of untagged responses a rule holds back. Each method is one hook point of the
session; each returns the observations to report (`ClientIdentified`, `RuleApplied`), and
every application is also counted in `applied` for the session summary.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from imap_proxy.quirks.actions import Emulate, LocalAnswer, ReplaceCommand
from imap_proxy.quirks.actions.base import TaggedOutcome
from imap_proxy.quirks.engine import Applied, SessionRules, SessionView
from imap_proxy.session import events as ev
from imap_proxy.session.settings import SessionSettings
from imap_proxy.wire.command import Command
from imap_proxy.wire.encode import encode_response
from imap_proxy.wire.errors import ProtocolError
from imap_proxy.wire.message import Message
from imap_proxy.wire.response import ListData, StatusData, parse_response

if TYPE_CHECKING:
    from imap_proxy.quirks.fingerprint import ClientProfile, Fingerprinter

HOLDABLE = frozenset({"EXISTS", "RECENT"})
# Untagged data that refers to message numbers the client must know: a held EXISTS is
# released before it (a client must never see a number it was not told exists).
RELEASE_BEFORE_KINDS = frozenset({"EXPUNGE", "FETCH", "VANISHED"})


def untagged_kind(line: bytes) -> str:
    """The kind of an untagged line: `* 3 EXISTS` -> "EXISTS", `* LIST …` -> "LIST"."""
    words = line[2:40].split(b" ", 2)
    word = words[0]
    if word.isdigit() and len(words) > 1:
        word = words[1]
    return word.rstrip(b"\r\n").upper().decode("ascii", "replace")


class RuleHooks:
    def __init__(self, settings: SessionSettings) -> None:
        self.view = SessionView(listener=settings.peer.listener)
        self.rules = SessionRules(settings.rules, self.view)
        self.fingerprinter: Fingerprinter | None = None
        if settings.fingerprints is not None:
            from imap_proxy.quirks.fingerprint import Fingerprinter

            self.fingerprinter = Fingerprinter(
                settings.fingerprints, listener=settings.peer.listener, sni=settings.sni
            )
        self.applied: Counter[Applied] = Counter()
        self._held: dict[str, bytes] = {}  # kind -> latest line; at most one of each

    # --- facts ---------------------------------------------------------------------

    def upstream_changed(self, capabilities: list[str], greeting: bytes | None = None) -> None:
        self.view.upstream_capabilities = capabilities
        if greeting is not None:
            self.view.greeting = greeting
        self.rules.refresh()

    def command_started(
        self, tag: bytes, name: str, line: bytes, authenticated: bool
    ) -> list[ev.Event]:
        if self.view.first_tag is None:
            self.view.first_tag = tag
            self.rules.refresh()
        if self.fingerprinter is None or self.fingerprinter.settled:
            return []
        return self._profile(
            self.fingerprinter.observe_command(tag, _verb(line), line, authenticated=authenticated)
        )

    def authenticated(self) -> list[ev.Event]:
        self.view.authenticated = True
        self.rules.refresh()
        if self.fingerprinter is None or self.fingerprinter.settled:
            return []
        return self._profile(self.fingerprinter.observe_authenticated())

    def id_seen(
        self, params: list[tuple[bytes, bytes | None]] | None, authenticated: bool
    ) -> list[ev.Event]:
        self.view.id_params = params
        self.rules.refresh()
        if self.fingerprinter is None:
            return []
        return self._profile(self.fingerprinter.observe_id(params, authenticated=authenticated))

    def _profile(self, profile: ClientProfile | None) -> list[ev.Event]:
        if profile is None:
            return []
        self.view.family = profile.family
        self.view.confidence = profile.confidence
        self.rules.refresh()
        return [ev.ClientIdentified(profile.family, profile.version, profile.confidence)]

    @property
    def profile(self) -> ClientProfile | None:
        return None if self.fingerprinter is None else self.fingerprinter.profile

    # --- commands --------------------------------------------------------------------

    def capabilities(self, caps: list[str]) -> tuple[list[str], list[ev.Event]]:
        shaped, applied = self.rules.capabilities(caps)
        return shaped, self._record(applied)

    def wants_whole(self, name: str, line: bytes | None = None) -> bool:
        """Whether rules want this command held whole (and this first line, if given)."""
        if name not in self.rules.held_commands:
            return False
        return line is None or self.rules.wants_command(name, line)

    def wants_head(self, name: str, line: bytes | None = None) -> bool:
        """Rules rewrite this command's first argument; the rest (a message) streams.
        With `line` (the first line), only if a rule wants this one."""
        if name not in self.rules.head_commands:
            return False
        return line is None or self.rules.wants_head(name, line)

    def wants_mailbox_list(self, command: Command) -> bool:
        return self.rules.wants_mailbox_list(command)

    def learn_mailboxes(self, lines: list[bytes]) -> None:
        """The untagged replies to the proxy's own LIST: remembered, not relayed."""
        for line in lines:
            try:
                self.rules.learn(parse_response(Message.from_line(line)))
            except ProtocolError:
                continue

    def on_command(
        self, command: Command
    ) -> tuple[Command | LocalAnswer | Emulate | ReplaceCommand, list[ev.Event]]:
        outcome, applied = self.rules.on_command(command)
        return outcome, self._record(applied)

    def empty_line_ignored(self) -> list[ev.Event] | None:
        """Events if a rule drops an empty client line; None to relay it."""
        action = self.rules.ignores_empty_lines()
        if action is None:
            return None
        return self._record([(action.rule_id, action.kind)])

    def after_login(self) -> list[tuple[bytes, list[ev.Event]]]:
        """(command without tag, events) for each command rules send after login."""
        return [(command, self._record([applied])) for applied, command in self.rules.after_login()]

    def upstream_tag(self, tag: bytes) -> tuple[bytes, list[ev.Event]]:
        """The tag this client command carries upstream (rules may reshape it)."""
        if not self.rules.maps_tags:
            return tag, []
        mapped, applied = self.rules.upstream_tag(tag)
        return mapped, self._record(applied)

    def record(self, applied: list[Applied]) -> list[ev.Event]:
        """Report rule applications the session carried out itself (a keepalive)."""
        return self._record(applied)

    def _record(self, applied: list[Applied]) -> list[ev.Event]:
        if not applied:  # nearly every hook call: Counter.update() is no cheap no-op
            return []
        self.applied.update(applied)
        return [ev.RuleApplied(rule_id, action) for rule_id, action in applied]

    # --- untagged responses ---------------------------------------------------------

    def wants_response(self, kind: str, line: bytes | None = None) -> bool:
        """Whether rules want this untagged kind parsed (and this first line, if given)."""
        if kind not in self.rules.response_kinds:
            return False
        return line is None or self.rules.wants_line(kind, line)

    def rewrite_response(self, line: bytes) -> tuple[bytes, list[ev.Event]]:
        """A one-line untagged response after the rules (b"" when dropped); unparseable
        lines pass unchanged."""
        return self.rewrite_message(Message.from_line(line))

    def rewrite_message(self, message: Message) -> tuple[bytes, list[ev.Event]]:
        try:
            response = parse_response(message)
        except ProtocolError:
            return message.to_bytes(), []
        rewritten, applied = self.rules.on_response(response)
        if not applied:
            return message.to_bytes(), []
        if rewritten is None:  # dropped: the client does not see it
            return b"", self._record(applied)
        return encode_response(rewritten).to_bytes(), self._record(applied)

    def rewrite_replies(
        self, untagged: bytes, tag: bytes, name: str
    ) -> tuple[bytes, list[ev.Event]]:
        """An emulated command's untagged answer (one-line responses), through the response
        rules line by line as if the upstream had sent it in reply to the client's command
        `tag` `name` (which is then the oldest command in flight). A STATUS line that
        follows a LIST line the rules dropped, for the same mailbox, goes too: RFC 5819
        pairs them, and a hidden mailbox must not show through its STATUS."""
        if not self.rules.watches_untagged:
            return untagged, []
        earlier = self.view.client_commands
        self.view.client_commands = lambda: [(tag, name), *earlier()]
        out = bytearray()
        events: list[ev.Event] = []
        dropped: bytes | None = None  # the mailbox of the LIST line just dropped
        try:
            for line in _lines(untagged):
                kind = untagged_kind(line)
                if kind == "STATUS" and dropped is not None and _mailbox_of(line) == dropped:
                    continue
                dropped = None
                if not self.wants_response(kind, line):
                    out += line
                    continue
                rewritten, applied = self.rewrite_response(line)
                events += applied
                if not rewritten and kind == "LIST":
                    dropped = _mailbox_of(line)
                out += rewritten
        finally:
            self.view.client_commands = earlier
        return bytes(out), events

    def hold(self, kind: str, line: bytes, running: Collection[str]) -> list[ev.Event] | None:
        """Events if the rules hold this untagged line back; None to relay it now."""
        if kind not in HOLDABLE:
            return None
        action = self.rules.holding_action(kind, running)
        if action is None:
            return None
        self._held[kind] = line  # a later EXISTS/RECENT supersedes an earlier one
        return self._record([(action.rule_id, action.kind)])

    def release_before_untagged(self, kind: str) -> bytes:
        return self.release_all() if self._held and kind in RELEASE_BEFORE_KINDS else b""

    def release_before_completion(self, command: str) -> bytes:
        if self._held and self.rules.releases_before(command):
            return self.release_all()
        return b""

    def release_all(self) -> bytes:
        out = b"".join(self._held.values())
        self._held.clear()
        return out

    def observes(self, kind: str) -> bool:
        return kind in self.rules.observed_kinds

    def observe_untagged(
        self, kind: str, line: bytes, whole: bool, running: Callable[[], Collection[str]]
    ) -> bool:
        """Show a rule the first line of an untagged response; True if it kept it back.
        `running()` names the client's commands in flight."""
        return self.rules.on_untagged_line(kind, line, whole, running)

    def pass_run(self, kind: str, run: bytes, running: Callable[[], Collection[str]]) -> bool:
        """Whether a run of one-line untagged responses of `kind` may be relayed whole:
        nothing is held that must go before them, no rule wants one parsed, and no rule
        would keep one back (the observing rules have then seen them all)."""
        if kind in HOLDABLE or (self._held and kind in RELEASE_BEFORE_KINDS):
            return False
        if self.wants_response(kind, run):  # line predicates are searches: any line's
            return False
        return not self.observes(kind) or self.rules.on_untagged_run(kind, run, running)

    def on_tagged(
        self, tag: bytes, name: str, line: bytes, lookup: list[bytes] | None = None
    ) -> tuple[TaggedOutcome | None, list[ev.Event]]:
        outcome, applied = self.rules.on_tagged(tag, name, line, lookup)
        events = self._record(applied)
        if outcome is not None and outcome.stubs:
            events.append(ev.EmulationStubFetch(outcome.stubs))
        return outcome, events

    def drop_held(self) -> None:
        """A new mailbox is being selected: what was held describes the old one."""
        self._held.clear()


def _lines(data: bytes) -> list[bytes]:
    """CRLF-terminated lines (a bare CR or LF inside a line stays in it)."""
    parts = data.split(b"\r\n")
    lines = [part + b"\r\n" for part in parts[:-1]]
    return [*lines, parts[-1]] if parts[-1] else lines


def _mailbox_of(line: bytes) -> bytes | None:
    """The mailbox a one-line LIST or STATUS response names."""
    try:
        response = parse_response(Message.from_line(line))
    except ProtocolError:
        return None
    return response.mailbox if isinstance(response, ListData | StatusData) else None


def _verb(line: bytes) -> bytes:
    """The command word(s) exactly as sent: b"uid fetch", b"LOGIN" (never the arguments)."""
    parts = line.rstrip(b"\r\n").split(b" ", 3)
    if len(parts) < 2:
        return b""
    if parts[1].upper() == b"UID" and len(parts) > 2:
        return parts[1] + b" " + parts[2]
    return parts[1]
