"""The fingerprint definition file's model: families and the signals that identify them.

How this works: each signal is a small pydantic model told apart by its `kind`, with a
`weight` (how much it says for the family when it holds), a `penalty` (how much it says
against when it is known false) and `require` (known false excludes the family). Its
`check(observations)` answers held (`Outcome(True, describe)`), failed (`Outcome(False,
describe)`) or unknown (None: not enough seen yet); `describe()` makes the human-readable
evidence, only when a profile's evidence is wanted.
`Observations` is what one session has shown so far (tags, command shapes, when it
authenticated, the ID fields); quirks/fingerprint.py fills it and combines the outcomes.

Kinds: `first_tag`, `tag_start`, `tag_progression`, `verb_case`, `first_commands`,
`command`, `after_login`, `after_command`, `id_timing`, `id_field`, `listener`, `sni`.
All patterns are Python regular expressions searched (`re.search`) in bounded text.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

AUTH_VERBS = frozenset({"LOGIN", "AUTHENTICATE"})
# RFC 3501 base verbs: clients that lowercase commands do it for these (Thunderbird keeps
# extension verbs such as ID, ENABLE, STARTTLS, STATUS uppercase).
BASE_VERBS = (
    "CAPABILITY", "NOOP", "LOGOUT", "LOGIN", "AUTHENTICATE", "SELECT", "EXAMINE", "CREATE",
    "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB", "APPEND", "CHECK",
    "CLOSE", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "UID FETCH", "UID STORE",
    "UID COPY", "UID SEARCH", "NAMESPACE",
)  # fmt: skip
_TAG_NUMBER = re.compile(r"^(.*?)(\d{1,18})$")
_LETTERS_NUMBER = re.compile(r"^([A-Za-z]+)(\d{1,18})$")
FAMILY_NAME = r"^[a-z0-9][a-z0-9-]{0,39}$"


@functools.lru_cache(maxsize=2048)
def regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def bounded_text(data: bytes, limit: int) -> str:
    """Untrusted bytes as printable text of at most `limit` characters."""
    text = data[: limit * 4].decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else "?" for ch in text[:limit])


def _valid_regex(value: str) -> str:
    try:
        regex(value)
    except re.error as error:
        raise ValueError(f"invalid regular expression {value!r}: {error}") from None
    return value


def _quote(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


# --- what a session has shown -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeenCommand:
    shape: str  # credential-free, see fingerprint.command_shape()
    verb: str  # as sent, case kept ("uid fetch")
    authenticated: bool


@dataclass(slots=True)
class Observations:
    listener: str
    sni: str | None
    tags: list[str] = field(default_factory=list)
    commands: list[SeenCommand] = field(default_factory=list)
    auth_at: int | None = None  # commands seen before the LOGIN/AUTHENTICATE OK
    login_attempts: int = 0
    id_seen: bool = False
    id_authenticated: bool = False
    id_at: int = 0
    id_fields: dict[str, str] | None = None  # None: `ID NIL` (or no ID yet)

    def snapshot(self) -> tuple[object, ...]:
        """Everything seen, hashable: equal snapshots score alike."""
        fields = None if self.id_fields is None else tuple(self.id_fields.items())
        return (
            self.listener,
            self.sni,
            tuple(self.tags),
            tuple(self.commands),
            self.auth_at,
            self.login_attempts,
            self.id_seen,
            self.id_authenticated,
            self.id_at,
            fields,
        )

    def after_auth(self) -> list[SeenCommand] | None:
        return None if self.auth_at is None else self.commands[self.auth_at :]


@dataclass(frozen=True, slots=True)
class Outcome:
    """A signal's answer; `describe()` gives the evidence text. It is built only when asked
    for (a profile's evidence), never while scoring: scoring runs after every command."""

    holds: bool
    describe: Callable[[], str]

    @property
    def detail(self) -> str:
        return self.describe()


def _quoted(template: str, *texts: str, **plain: object) -> Callable[[], str]:
    """Evidence made later: `template` (a literal) formatted with `texts` quoted and
    `plain` as they are (a pattern may hold braces: it is a value, never the template)."""
    return functools.partial(_fill_quoted, template, texts, plain)


def _fill_quoted(template: str, texts: tuple[str, ...], plain: dict[str, object]) -> str:
    return template.format(*map(_quote, texts), **plain)


def _after_login(position: int) -> str:
    return "right after login" if position == 1 else f"{position} commands after login"


# --- signals ----------------------------------------------------------------------------


class _SignalBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(ge=0, le=1, description="how much it says for the family if it holds")
    penalty: float = Field(default=0.0, ge=0, le=1, description="how much against if false")
    require: bool = Field(default=False, description="known false excludes the family")
    note: str | None = Field(default=None, description="where this comes from")


class FirstTag(_SignalBase):
    """The first command's tag matches `pattern`."""

    kind: Literal["first_tag"]
    pattern: str
    _check_pattern = field_validator("pattern")(_valid_regex)

    def check(self, seen: Observations) -> Outcome | None:
        if not seen.tags:
            return None
        held = regex(self.pattern).search(seen.tags[0]) is not None
        verb = "matches" if held else "does not match"
        return Outcome(held, lambda: f"first tag {_quote(seen.tags[0])} {verb} {self.pattern}")


class TagStart(_SignalBase):
    """The number at the end of the first tag lies in [min, max]."""

    kind: Literal["tag_start"]
    min: int = Field(ge=0)
    max: int | None = Field(default=None, ge=0)

    def check(self, seen: Observations) -> Outcome | None:
        if not seen.tags:
            return None
        found = _TAG_NUMBER.match(seen.tags[0])
        if found is None:
            return Outcome(
                False, lambda: f"first tag {_quote(seen.tags[0])} does not end in a number"
            )
        number = int(found.group(2))
        held = number >= self.min and (self.max is None or number <= self.max)
        span = f"{self.min}..{self.max}" if self.max is not None else f">= {self.min}"
        return Outcome(
            held, lambda: f"tag numbers start at {number} ({'' if held else 'not '}{span})"
        )


class TagProgression(_SignalBase):
    """`increment`: same prefix, number +1 each time. `interleaved_prefixes`: letter+number
    tags with several letter prefixes in one session (iOS 26's `B1`, `C5`, `D35`)."""

    kind: Literal["tag_progression"]
    style: Literal["increment", "interleaved_prefixes"]
    min_tags: int = Field(default=3, ge=2, description="tags needed before it can hold/fail")

    def check(self, seen: Observations) -> Outcome | None:
        tags = seen.tags
        if self.style == "increment":
            return self._increment(tags)
        parts = [_LETTERS_NUMBER.match(tag) for tag in tags]
        if any(part is None for part in parts):
            return Outcome(False, lambda: "tags are not all letters+number")
        prefixes = list(dict.fromkeys(part.group(1) for part in parts if part is not None))
        if len(prefixes) >= 2:
            return Outcome(
                True, lambda: f"tag letter prefixes interleave: {', '.join(prefixes[:5])}"
            )
        if len(tags) >= self.min_tags:
            return Outcome(False, lambda: f"{len(tags)} tags share one prefix")
        return None

    def _increment(self, tags: list[str]) -> Outcome | None:
        for before, after in itertools.pairwise(tags):
            a, b = _TAG_NUMBER.match(before), _TAG_NUMBER.match(after)
            if a is None or b is None or a.group(1) != b.group(1):
                return Outcome(False, _quoted("tag {} does not follow {}", after, before))
            if int(b.group(2)) != int(a.group(2)) + 1:
                return Outcome(False, _quoted("tag {} is not {} + 1", after, before))
        if len(tags) >= self.min_tags:
            return Outcome(
                True, lambda: f"tags count up by one: {', '.join(map(_quote, tags[:4]))}"
            )
        return None


class VerbCase(_SignalBase):
    """The base verbs among the first `within` commands are all in `case`."""

    kind: Literal["verb_case"]
    case: Literal["lower", "upper"]
    within: int = Field(default=6, ge=1)
    verbs: tuple[str, ...] = BASE_VERBS

    def check(self, seen: Observations) -> Outcome | None:
        considered = [c.verb for c in seen.commands[: self.within] if c.verb.upper() in self.verbs]
        if not considered:
            return None
        wrong = [v for v in considered if v != (v.lower() if self.case == "lower" else v.upper())]

        def shown() -> str:
            return ", ".join(dict.fromkeys(wrong or considered))

        if wrong:
            return Outcome(False, lambda: f"verbs not {self.case}case: {shown()}")
        return Outcome(True, lambda: f"verbs {self.case}case: {shown()}")


class FirstCommands(_SignalBase):
    """The first commands (STARTTLS and the `skip` verbs left out) match `sequence` in order."""

    kind: Literal["first_commands"]
    sequence: list[str] = Field(min_length=1)
    skip: tuple[str, ...] = ("STARTTLS",)

    @field_validator("sequence")
    @classmethod
    def _sequence(cls, value: list[str]) -> list[str]:
        return [_valid_regex(item) for item in value]

    def check(self, seen: Observations) -> Outcome | None:
        commands = [c for c in seen.commands if c.verb.upper() not in self.skip]
        for index, pattern in enumerate(self.sequence):
            if index >= len(commands):
                return None
            if regex(pattern).search(commands[index].shape) is None:
                shape = commands[index].shape
                return Outcome(
                    False,
                    _quoted("command {n} {} does not match {p}", shape, n=index + 1, p=pattern),
                )
        first = commands[: len(self.sequence)]
        return Outcome(
            True, lambda: f"first commands in order: {', '.join(_quote(c.shape) for c in first)}"
        )


class CommandSeen(_SignalBase):
    """One of the first `within` commands matches `pattern`."""

    kind: Literal["command"]
    pattern: str
    within: int = Field(default=12, ge=1)
    _check_pattern = field_validator("pattern")(_valid_regex)

    def check(self, seen: Observations) -> Outcome | None:
        for command in seen.commands[: self.within]:
            if regex(self.pattern).search(command.shape):
                return Outcome(
                    True, _quoted("command {} matches {p}", command.shape, p=self.pattern)
                )
        if len(seen.commands) >= self.within:
            return Outcome(False, lambda: f"no command matching {self.pattern}")
        return None


class AfterLogin(_SignalBase):
    """One of the first `within` commands after the LOGIN/AUTHENTICATE OK matches."""

    kind: Literal["after_login"]
    pattern: str
    within: int = Field(default=1, ge=1)
    _check_pattern = field_validator("pattern")(_valid_regex)

    def check(self, seen: Observations) -> Outcome | None:
        after = seen.after_auth()
        if after is None:
            return None
        for position, command in enumerate(after[: self.within], start=1):
            if regex(self.pattern).search(command.shape):
                return Outcome(
                    True, _quoted("{} {where}", command.shape, where=_after_login(position))
                )
        if len(after) >= self.within:
            window = after[: self.within]
            return Outcome(
                False,
                lambda: (
                    f"after login {', '.join(_quote(c.shape) for c in window)}, not {self.pattern}"
                ),
            )
        return None


class AfterCommand(_SignalBase):
    """Within `within` commands after one matching `after`, one matches `pattern`."""

    kind: Literal["after_command"]
    after: str
    pattern: str
    within: int = Field(default=3, ge=1)
    _check_patterns = field_validator("pattern", "after")(_valid_regex)

    def check(self, seen: Observations) -> Outcome | None:
        commands = seen.commands
        first_window_done = False
        triggered = False
        for index, command in enumerate(commands):
            if regex(self.after).search(command.shape) is None:
                continue
            window = commands[index + 1 : index + 1 + self.within]
            for follower in window:
                if regex(self.pattern).search(follower.shape):
                    return Outcome(
                        True,
                        _quoted("{} follows {}", follower.shape, command.shape),
                    )
            if not triggered:
                first_window_done = len(window) >= self.within
            triggered = True
        if first_window_done:
            return Outcome(False, lambda: f"nothing matching {self.pattern} after {self.after}")
        return None


class IdTiming(_SignalBase):
    """When ID is sent: `pre_auth`, `post_auth`, or `never` (none within `grace` commands
    after login)."""

    kind: Literal["id_timing"]
    when: Literal["pre_auth", "post_auth", "never"]
    grace: int = Field(default=3, ge=1)

    def check(self, seen: Observations) -> Outcome | None:
        after = seen.after_auth()
        no_id_yet = not seen.id_seen and after is not None and len(after) >= self.grace
        if seen.id_seen:
            when = "after" if seen.id_authenticated else "before"
            if self.when == "never":
                return Outcome(False, lambda: f"ID sent {when} authentication")
            held = (self.when == "pre_auth") != seen.id_authenticated
            return Outcome(held, lambda: f"ID sent {when} authentication")
        if self.when == "pre_auth" and after is not None:
            return Outcome(False, lambda: "no ID before authentication")
        if no_id_yet:
            return Outcome(
                self.when == "never", lambda: f"no ID within {self.grace} commands after login"
            )
        return None


class IdField(_SignalBase):
    """An ID field matches `pattern` (a missing field or `ID NIL` fails it). With
    `version_field`, the profile's version is that field (its `version_pattern` group 1)."""

    kind: Literal["id_field"]
    field: str = Field(min_length=1, max_length=40)
    pattern: str
    version_field: str | None = None
    version_pattern: str | None = None
    _check_pattern = field_validator("pattern")(_valid_regex)

    @field_validator("version_pattern")
    @classmethod
    def _version_pattern(cls, value: str | None) -> str | None:
        return None if value is None else _valid_regex(value)

    def check(self, seen: Observations) -> Outcome | None:
        if not seen.id_seen:
            return None
        if seen.id_fields is None:
            return Outcome(False, lambda: "ID NIL")
        value = seen.id_fields.get(self.field.lower())
        if value is None:
            return Outcome(False, lambda: f"ID has no {self.field!r} field")
        held = regex(self.pattern).search(value) is not None
        verb = "matches" if held else "does not match"
        return Outcome(held, lambda: f"ID {self.field} {_quote(value)} {verb} {self.pattern}")


class ListenerName(_SignalBase):
    """The listener the client came in on (`imap`, `imaps`) matches."""

    kind: Literal["listener"]
    pattern: str
    _check_pattern = field_validator("pattern")(_valid_regex)

    def check(self, seen: Observations) -> Outcome | None:
        held = regex(self.pattern).search(seen.listener) is not None
        verb = "matches" if held else "does not match"
        return Outcome(held, lambda: f"listener {_quote(seen.listener)} {verb} {self.pattern}")


class Sni(_SignalBase):
    """The TLS server name the client asked for matches (unknown without SNI)."""

    kind: Literal["sni"]
    pattern: str
    _check_pattern = field_validator("pattern")(_valid_regex)

    def check(self, seen: Observations) -> Outcome | None:
        sni = seen.sni
        if sni is None:
            return None
        held = regex(self.pattern).search(sni) is not None
        verb = "matches" if held else "does not match"
        return Outcome(held, lambda: f"TLS SNI {_quote(sni)} {verb} {self.pattern}")


Signal = Annotated[
    FirstTag
    | TagStart
    | TagProgression
    | VerbCase
    | FirstCommands
    | CommandSeen
    | AfterLogin
    | AfterCommand
    | IdTiming
    | IdField
    | ListenerName
    | Sni,
    Field(discriminator="kind"),
]


class FamilyDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str = Field(pattern=FAMILY_NAME, description="bounded label for metrics and logs")
    summary: str = Field(min_length=1)
    evidence: Literal["high", "medium", "low"] = Field(
        description="quality of the research behind these signals (clients-and-quirks.md §1)"
    )
    max_confidence: float = Field(default=1.0, ge=0, le=1, description="cap where evidence is weak")
    sources: list[str] = Field(default_factory=list)
    signals: list[Signal] = Field(default_factory=list)


class FingerprintFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    settle_after_commands: int = Field(default=12, ge=1, le=200)
    minimum_confidence: float = Field(default=0.25, ge=0, le=1)
    ambiguity_weight: float = Field(default=0.5, ge=0, le=1)
    ambiguity_exponent: float = Field(default=4.0, gt=0)
    families: list[FamilyDefinition] = Field(min_length=1)

    @model_validator(mode="after")
    def _families(self) -> FingerprintFile:
        names = [f.family for f in self.families]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate families: {', '.join(duplicates)}")
        unknown = [f for f in self.families if f.family == "unknown"]
        if not unknown:
            raise ValueError("a family named 'unknown' (the fallback, no signals) is required")
        if unknown[0].signals:
            raise ValueError("the 'unknown' family takes no signals")
        return self
