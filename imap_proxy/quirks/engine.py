"""The per-session rule engine: which rules are active, and their actions at each hook.

How this works: `SessionRules` is built for one session from a `RuleSet` and a
`SessionView` the session keeps up to date (client profile, first tag, ID fields, upstream
capabilities and greeting, listener, and what LIST responses taught about mailboxes).
`refresh()` re-evaluates every enabled rule's `match` against the view and keeps the
actions of those that hold, in priority order; the session calls it whenever a fact
changes, so a rule applies from the moment its match holds (when nothing a match reads
has changed, a refresh keeps what it has). The hooks are:

* `capabilities(caps)`      - shape the capability list clients see (only the actions
                              that override it are asked: `shapers`);
* `held_commands`           - verbs an action wants to see whole (the session holds them);
* `on_command(cmd)`         - rewrite a command, answer it locally, or emulate it with a
                              script of upstream commands (`actions.base.Emulate`);
* `response_kinds`          - untagged kinds an action wants parsed (LIST, LSUB, …);
* `on_response(resp)`       - rewrite an untagged response, or drop it (None); actions
                              see responses in reverse priority order, so rewrites nest:
                              the rule that renamed a mailbox in commands first (special
                              folders) renames it back in replies last;
* `head_commands`           - verbs an action wants up to their first argument (APPEND);
* `wants_mailbox_list(cmd)` - the session should learn the mailbox list first;
* `holds()/releases_before()` - hold untagged data until a point it may be delivered;
* `observed_kinds` / `on_untagged_line(kind, line, whole, running)` - see the first
  line of an untagged response (a one-line one may be kept back); `on_untagged_run()`
  shows a run of one-line responses at once where no action would keep one back;
* `watches_tagged` / `on_tagged(tag, name, line, lookup)` - act on a tagged completion
  (the first action with an outcome decides it).
* `ignores_empty_lines()`, `after_login()`, `upstream_tag(tag)` - drop bare CRLF lines,
  commands to send upstream after login, the tag a client command gets upstream.

Every hook that changes something returns the (rule id, action type) pairs applied, so
the session can record them (logs, metrics).
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from imap_proxy.quirks.actions import (
    Action,
    Drop,
    Emulate,
    LocalAnswer,
    ReplaceCommand,
    Rewrite,
    build_action,
)
from imap_proxy.quirks.actions.base import TaggedOutcome
from imap_proxy.quirks.model import Match, Rule, RuleSet
from imap_proxy.wire.command import Command
from imap_proxy.wire.response import ListData, Response

Applied = tuple[str, str]  # (rule id, action type)
MAILBOX_CACHE_LIMIT = 10_000


def _no_commands() -> list[tuple[bytes, str]]:
    return []


MATCHES_REMEMBERED = 1024  # per rule set: match inputs -> the rules that match
# A refresh's remembered answer: the inputs (the shared copy), the matching rules, their ids.
_Matched = tuple[tuple[object, ...], tuple[Rule, ...], tuple[str, ...]]


@functools.lru_cache(maxsize=256)
def _uppercased(caps: tuple[str, ...]) -> frozenset[str]:
    """One shared set per capability list: thousands of sessions see the same few."""
    return frozenset(sys.intern(cap.upper()) for cap in caps)


@dataclass
class SessionView:
    """Facts about one session that rules match on and actions read; the session owns it."""

    listener: str = "imap"
    family: str = "unknown"
    confidence: float = 0.0
    first_tag: bytes | None = None
    authenticated: bool = False  # capabilities before login are often a trimmed list
    id_params: list[tuple[bytes, bytes | None]] | None = None
    upstream_capabilities: list[str] = field(default_factory=list)
    greeting: bytes = b""
    delimiter: bytes | None = None
    mailbox_attributes: dict[bytes, frozenset[str]] = field(default_factory=dict)
    # What learn_list() changed, in order (a name again when its attributes changed), and
    # how many changes: actions index them incrementally instead of rescanning.
    mailbox_changes: list[bytes] = field(default_factory=list)
    mailbox_version: int = 0
    mailbox_epoch: int = 0  # changes when mailbox_changes was compacted: index afresh
    # The client's commands in flight, oldest first, as (tag, verb): set by the session,
    # so an action can tell which command an untagged response answers.
    client_commands: Callable[[], list[tuple[bytes, str]]] = field(
        default_factory=lambda: _no_commands
    )

    # upstream_capabilities uppercased, for the list it was made from (the session
    # replaces the list when the capabilities change; it never edits it in place).
    _upper: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    _upper_of: list[str] | None = field(default=None, repr=False, compare=False)

    def has_upstream(self, capability: str) -> bool:
        caps = self.upstream_capabilities
        if caps is not self._upper_of:
            self._upper = _uppercased(tuple(caps))
            self._upper_of = caps
        return capability.upper() in self._upper

    def match_inputs(self) -> tuple[object, ...]:
        """Everything `matches()` reads: the same inputs give the same active rules."""
        return (
            self.family,
            self.confidence,
            self.listener,
            self.first_tag,
            self.greeting,
            tuple(self.upstream_capabilities),
            None if self.id_params is None else tuple(self.id_params),
        )

    def learn_list(self, data: ListData) -> None:
        """Remember a LIST line: the delimiter and the mailbox's attributes."""
        if data.kind not in ("LIST", "XLIST"):
            return
        if data.delimiter is not None:
            self.delimiter = data.delimiter
        if len(self.mailbox_attributes) < MAILBOX_CACHE_LIMIT or (
            data.mailbox in self.mailbox_attributes
        ):
            attributes = frozenset(a.lower() for a in data.attributes)
            if self.mailbox_attributes.get(data.mailbox) != attributes:
                self.mailbox_attributes[data.mailbox] = attributes
                self.mailbox_changes.append(data.mailbox)
                self.mailbox_version += 1
                if len(self.mailbox_changes) > 2 * MAILBOX_CACHE_LIMIT:
                    self.mailbox_changes = list(self.mailbox_attributes)
                    self.mailbox_epoch += 1


def matches(match: Match, view: SessionView) -> bool:
    if match.client_families is not None and view.family not in match.client_families:
        return False
    if view.confidence < match.min_confidence:
        return False
    if match.listeners is not None and view.listener not in match.listeners:
        return False
    if not all(view.has_upstream(c) for c in match.upstream_capabilities_present):
        return False
    if any(view.has_upstream(c) for c in match.upstream_capabilities_absent):
        return False
    if match.tag_pattern is not None and (
        view.first_tag is None
        or not re.search(match.tag_pattern, view.first_tag.decode("ascii", "replace"))
    ):
        return False
    if match.upstream_greeting is not None and not re.search(
        match.upstream_greeting, view.greeting.decode("utf-8", "replace")
    ):
        return False
    return match.id_fields is None or _id_matches(match.id_fields, view.id_params)


def _id_matches(wanted: dict[str, str], params: list[tuple[bytes, bytes | None]] | None) -> bool:
    fields = {k.decode("utf-8", "replace").lower(): v for k, v in params or []}
    for name, pattern in wanted.items():
        value = fields.get(name.lower())
        if value is None or not re.search(pattern, value.decode("utf-8", "replace")):
            return False
    return True


@dataclass(frozen=True, slots=True)
class _HookSets:
    """What a set of active actions asks of the session; the same for every session with
    the same active rules (actions set these from their specs only), so it is computed
    once per rule set and combination (`RuleSet.session_cache`)."""

    held_commands: frozenset[str]
    head_commands: frozenset[str]
    response_kinds: frozenset[str]
    observed_kinds: frozenset[str]
    watches_untagged: bool
    watches_tagged: bool
    maps_tags: bool
    # Where in the active list the actions that shape capabilities stand (the others'
    # `capabilities()` is the no-op of `Action`, not worth a call for every list).
    shaper_positions: tuple[int, ...]

    @classmethod
    def of(cls, active: list[Action]) -> _HookSets:
        response_kinds = frozenset(kind for a in active for kind in a.responses)
        observed_kinds = frozenset(kind for a in active for kind in a.observes)
        return cls(
            held_commands=frozenset(name for a in active for name in a.commands),
            head_commands=frozenset(name for a in active for name in a.head_commands),
            response_kinds=response_kinds,
            observed_kinds=observed_kinds,
            # Untagged lines (every FETCH response) are looked at only when an action cares.
            watches_untagged=bool(response_kinds)
            or bool(observed_kinds)
            or any(a.holds_untagged for a in active),
            watches_tagged=any(a.watches_tagged for a in active),
            maps_tags=any(a.maps_tags for a in active),
            shaper_positions=tuple(
                at
                for at, action in enumerate(active)
                if type(action).capabilities is not Action.capabilities
            ),
        )


class SessionRules:
    def __init__(self, ruleset: RuleSet, view: SessionView) -> None:
        self.view = view
        self._cache = ruleset.session_cache
        self._rules: tuple[Rule, ...] = ruleset.enabled
        self._built: dict[str, list[Action]] = {}
        self.active: list[Action] = []
        self.shapers: list[Action] = []  # the active actions that shape capabilities
        self.held_commands: frozenset[str] = frozenset()
        self.head_commands: frozenset[str] = frozenset()
        self.response_kinds: frozenset[str] = frozenset()
        self.watches_untagged = False
        self.observed_kinds: frozenset[str] = frozenset()
        self.watches_tagged = False
        self.maps_tags = False
        self._inputs: tuple[object, ...] | None = None
        self._matching: tuple[str, ...] | None = None  # the ids of the rules that match
        self.refresh()

    @property
    def active_rule_ids(self) -> list[str]:
        return list(dict.fromkeys(action.rule_id for action in self.active))

    def refresh(self) -> None:
        inputs = self.view.match_inputs()
        if inputs == self._inputs:
            return  # nothing a match reads has changed since the last refresh
        # Which rules match is a function of the inputs: sessions of this rule set share
        # the answers (bounded: first tags and ID fields come from clients), and the
        # session keeps the shared copy of its inputs, not one of its own.
        remembered: dict[tuple[object, ...], _Matched] = self._cache.setdefault("matches", {})
        known = remembered.get(inputs)
        if known is None:
            matching = tuple(rule for rule in self._rules if matches(rule.match, self.view))
            if len(remembered) >= MATCHES_REMEMBERED:
                del remembered[next(iter(remembered))]  # the oldest
            known = remembered[inputs] = (inputs, matching, tuple(rule.id for rule in matching))
        self._inputs, matching, key = known
        if key == self._matching:
            return  # the same rules match: the same actions stay active
        self._matching = key
        built = self._built
        active: list[Action] = []
        for rule in matching:
            actions = built.get(rule.id)
            if actions is None:
                actions = built[rule.id] = self._actions_of(rule)
            active += actions
        self.active = active
        hooks = self._cache.get(key)
        if hooks is None:
            hooks = self._cache[key] = _HookSets.of(active)
        self.shapers = [active[at] for at in hooks.shaper_positions]
        self.held_commands = hooks.held_commands
        self.head_commands = hooks.head_commands
        self.response_kinds = hooks.response_kinds
        self.observed_kinds = hooks.observed_kinds
        self.watches_untagged = hooks.watches_untagged
        self.watches_tagged = hooks.watches_tagged
        self.maps_tags = hooks.maps_tags

    def _actions_of(self, rule: Rule) -> list[Action]:
        """The rule's actions for this session: shared by every session of the rule set
        when none of them keeps per-session state, else built for this session."""
        key = ("actions", rule.id)
        cached: list[Action] | None = self._cache.get(key)
        if cached is not None:
            return cached
        built = [build_action(rule.id, spec) for spec in rule.actions]
        if all(action.shared for action in built):
            self._cache[key] = built
        return built

    def capabilities(self, caps: list[str]) -> tuple[list[str], list[Applied]]:
        applied: list[Applied] = []
        for action in self.shapers:
            shaped = action.capabilities(caps, self.view)
            if shaped != caps:
                applied.append((action.rule_id, action.kind))
            caps = shaped
        return caps, applied

    def on_command(
        self, command: Command
    ) -> tuple[Command | LocalAnswer | Emulate | ReplaceCommand, list[Applied]]:
        """The command to send (maybe rewritten), a local answer, an emulation or a command
        of the proxy's own in its place; and what applied."""
        applied: list[Applied] = []
        for action in self.active:
            if command.name not in action.commands and command.name not in action.head_commands:
                continue
            outcome = action.on_command(command, self.view)
            if isinstance(outcome, LocalAnswer | Emulate | ReplaceCommand):
                return outcome, [*applied, (action.rule_id, action.kind)]
            if isinstance(outcome, Rewrite):
                command = outcome.command
                applied.append((action.rule_id, action.kind))
        return command, applied

    def wants_command(self, name: str, line: bytes) -> bool:
        """Whether any active action wants this command (by its first line) held whole."""
        return any(
            name in action.commands and action.wants_command_line(line) for action in self.active
        )

    def wants_head(self, name: str, line: bytes) -> bool:
        """Whether any active action wants this command's head (by its first line)."""
        return any(
            name in action.head_commands and action.wants_command_line(line)
            for action in self.active
        )

    def wants_line(self, kind: str, line: bytes) -> bool:
        """Whether any active action wants this untagged line (of a wanted kind) parsed."""
        return any(
            kind in action.responses and action.wants_line(kind, line) for action in self.active
        )

    def keepalive(self) -> Action | None:
        """The action that keeps idling clients company, if one is active."""
        return next((a for a in self.active if a.keepalive_interval is not None), None)

    def reidler(self) -> Action | None:
        """The action that renews the upstream's IDLE for an idling client, if active."""
        return next((a for a in self.active if a.reidle_after is not None), None)

    def idle_poller(self) -> Action | None:
        """The action that answers IDLE itself and polls with NOOP, if active."""
        return next((a for a in self.active if a.poll_interval is not None), None)

    def ignores_empty_lines(self) -> Action | None:
        return next((a for a in self.active if a.ignores_empty_lines), None)

    def after_login(self) -> list[tuple[Applied, bytes]]:
        """Commands the active rules send upstream once a login succeeded."""
        return [
            ((action.rule_id, action.kind), command)
            for action in self.active
            for command in action.after_login(self.view)
        ]

    def upstream_tag(self, tag: bytes) -> tuple[bytes, list[Applied]]:
        for action in self.active:
            if action.maps_tags:
                mapped = action.upstream_tag(tag)
                if mapped is not None and mapped != tag:
                    return mapped, [(action.rule_id, action.kind)]
        return tag, []

    def on_response(self, response: Response) -> tuple[Response | None, list[Applied]]:
        """The response to relay (maybe rewritten), None if an action dropped it."""
        if isinstance(response, ListData):
            self.view.learn_list(response)
        applied: list[Applied] = []
        for action in reversed(self.active):  # nested: the first to rewrite sees replies last
            changed = action.on_response(response, self.view)
            if isinstance(changed, Drop):
                return None, [*applied, (action.rule_id, action.kind)]
            if changed is not None and changed != response:
                response = changed
                applied.append((action.rule_id, action.kind))
        return response, applied

    def wants_mailbox_list(self, command: Command) -> bool:
        return any(
            action.wants_mailbox_list(command, self.view)
            for action in self.active
            if command.name in action.commands or command.name in action.head_commands
        )

    def learn(self, response: Response) -> None:
        """A response to the proxy's own LIST: remembered, never shown to the client."""
        if isinstance(response, ListData):
            self.view.learn_list(response)

    def holding_action(self, kind: str, running: Collection[str]) -> Action | None:
        for action in self.active:
            if action.holds(kind, running):
                return action
        return None

    def releases_before(self, command: str) -> Sequence[Action]:
        return [action for action in self.active if action.releases_before(command)]

    def on_untagged_line(
        self, kind: str, line: bytes, whole: bool, running: Callable[[], Collection[str]]
    ) -> bool:
        """Every observing action sees the line; True if one of them kept it back."""
        kept = False
        for action in self.active:
            if kind in action.observes:
                kept |= action.on_untagged_line(kind, line, whole and not kept, running)
        return kept

    def on_untagged_run(
        self, kind: str, run: bytes, running: Callable[[], Collection[str]]
    ) -> bool:
        """Show a run of one-line responses of `kind` to the observing actions; False,
        with nothing shown, when one of them might keep one back (then the session shows
        them one by one)."""
        observers = [action for action in self.active if kind in action.observes]
        if any(action.may_keep_in_run(kind, run) for action in observers):
            return False
        for action in observers:
            action.on_untagged_run(kind, run, running)
        return True

    def on_tagged(
        self, tag: bytes, name: str, line: bytes, lookup: list[bytes] | None
    ) -> tuple[TaggedOutcome | None, list[Applied]]:
        for action in self.active:
            if not action.watches_tagged:
                continue
            outcome = action.on_tagged(tag, name, line, self.view, lookup)
            if outcome is not None:
                return outcome, [(action.rule_id, action.kind)] if outcome.changed else []
        return None, []
