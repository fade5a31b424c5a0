"""Client fingerprinting: which IMAP client is this, how sure are we, and why.

How this works: `fingerprints.yaml` (packaged under `imap_proxy/rules/`; a rules directory
may carry its own) defines one entry per client family, each a list of *signals* (see
`quirks/fingerprint_signals.py`): the first tag's shape, how tags progress, verb casing, the first
commands and their order, what follows login or SELECT, whether and when ID is sent, ID
field patterns, the listener and the TLS SNI. A `Fingerprinter` belongs to one session;
the session feeds it every command (`observe_command`), the ID fields (`observe_id`) and
the LOGIN/AUTHENTICATE OK (`observe_authenticated`), in arrival order. After each one,
every family is scored again from all it has seen. For a family, each signal is *held*,
*failed* (known false) or *unknown* (not enough seen yet), and

    score(family) = min(max_confidence,
                        (1 - prod(1 - weight  for held signals))
                            * prod(1 - penalty for failed signals))

where `require: true` makes a signal's penalty 1 (a failed required signal excludes the
family). The best family wins (ties: file order); when the runner-up explains the signals
almost as well, the reported confidence is lowered:

    ratio = score(second) / score(best)
    confidence = score(best) * (1 - ambiguity_weight * ratio ** ambiguity_exponent)

Below `minimum_confidence` the profile is `unknown`. Each observe_* returns the new profile
when its family, version or confidence bucket changed, else None. The fingerprinter
*settles* after `settle_after_commands` commands, or as soon as the confidence is high and
ID was seen; after that every observe_* returns None at once.

The fingerprinter never stores the arguments of LOGIN or AUTHENTICATE: a command is kept
only as its *shape* (`LOGIN <credentials>`, `AUTHENTICATE PLAIN <ir>`, `ID (...)`, other
commands as sent, verb uppercased, cut to a bounded length), so no credential can reach
the evidence, the logs or the metrics.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import ValidationError

from imap_proxy.quirks.fingerprint_signals import (
    AUTH_VERBS,
    FamilyDefinition,
    FingerprintFile,
    IdField,
    Observations,
    Outcome,
    SeenCommand,
    Signal,
    bounded_text,
    regex,
)

PACKAGED_FILE = "fingerprints.yaml"
UNKNOWN_FAMILY = "unknown"
DECISIONS_REMEMBERED = 2048  # per definitions set; an entry is a few hundred bytes
MAX_EVIDENCE = 14
_MECHANISM = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_LITERAL_AT_END = re.compile(r"(~?)\{(\d+)([+-]?)\}$")


@dataclass(frozen=True, slots=True)
class ClientProfile:
    """The best guess at the client: a bounded `family` label, with evidence."""

    family: str
    version: str | None
    confidence: float
    evidence: tuple[str, ...] = ()

    @property
    def confidence_bucket(self) -> str:
        """A bounded metric label: "high" (>= 0.8), "medium" (>= 0.5) or "low"."""
        return _bucket(self.confidence)

    def describe(self) -> str:
        """Human-readable, for the CLI: family, version, confidence, then the evidence."""
        version = f" {self.version}" if self.version else ""
        head = (
            f"{self.family}{version} (confidence {self.confidence:.2f}, {self.confidence_bucket})"
        )
        return "\n".join([head, *(f"  - {line}" for line in self.evidence)])


UNKNOWN = ClientProfile(UNKNOWN_FAMILY, None, 0.0, ())


class FingerprintLoadError(ValueError):
    """A definitions file that cannot be used; each line names the file, family and field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class FingerprintSet:
    """Loaded, validated fingerprint definitions (immutable; shared by all sessions)."""

    def __init__(self, definitions: FingerprintFile, source: str = "<memory>") -> None:
        self.definitions = definitions
        self.source = source
        self.families: tuple[str, ...] = tuple(f.family for f in definitions.families)
        self.scored: tuple[FamilyDefinition, ...] = tuple(
            f for f in definitions.families if f.family != UNKNOWN_FAMILY
        )
        # What the scoring decided for each observation sessions showed, oldest first:
        # the decision is a function of the observations alone (see Fingerprinter).
        self.decisions: dict[tuple[object, ...], _Decision] = {}

    @classmethod
    def load(cls, path: Path) -> FingerprintSet:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise FingerprintLoadError([f"{path}: cannot read: {error}"]) from None
        return cls.from_text(text, str(path))

    @classmethod
    def packaged(cls) -> FingerprintSet:
        """The shipped definitions (parsed once; the set is immutable, so it is shared)."""
        return _packaged()

    @classmethod
    def from_text(cls, text: str, source: str = "<memory>") -> FingerprintSet:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise FingerprintLoadError([f"{source}: invalid YAML: {error}"]) from None
        try:
            definitions = FingerprintFile.model_validate(data)
        except ValidationError as error:
            raise FingerprintLoadError(_name_problems(source, data, error)) from None
        return cls(definitions, source)

    def family(self, name: str) -> FamilyDefinition | None:
        for definition in self.definitions.families:
            if definition.family == name:
                return definition
        return None


@functools.cache
def _packaged() -> FingerprintSet:
    resource = resources.files("imap_proxy").joinpath("rules", PACKAGED_FILE)
    text = resource.read_text(encoding="utf-8")
    return FingerprintSet.from_text(text, f"<packaged {PACKAGED_FILE}>")


def _name_problems(source: str, data: Any, error: ValidationError) -> list[str]:
    """Turn pydantic's locations into "file: family 'x': field 'signals[2].first_tag.pattern'"."""
    families = data.get("families") if isinstance(data, dict) else None
    problems = []
    for item in error.errors():
        loc = list(item["loc"])
        where = "top level"
        if len(loc) >= 2 and loc[0] == "families" and isinstance(loc[1], int):
            entry = families[loc[1]] if isinstance(families, list) else None
            name = entry.get("family") if isinstance(entry, dict) else None
            where = f"family {name!r}" if name else f"family #{loc[1] + 1}"
            loc = loc[2:]
        field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
        field = field.lstrip(".") or "(entry)"
        problems.append(f"{source}: {where}: field {field!r}: {item['msg']}")
    return problems


# --- what one command looks like, without its secrets -----------------------------------


def command_shape(verb: bytes, line: bytes) -> str:
    """The command as the definitions see it: verb uppercased, LOGIN/AUTHENTICATE and ID
    arguments replaced by placeholders (`LOGIN <literal+>`, `AUTHENTICATE PLAIN <ir>`)."""
    name = bounded_text(verb, 40).upper()
    words = len(verb.split()) or 1
    parts = line.rstrip(b"\r\n").split(None, words + 1)
    rest = parts[words + 1] if len(parts) > words + 1 else b""
    if name == "LOGIN":
        literal = _LITERAL_AT_END.search(rest.decode("ascii", "replace"))
        if literal is None:
            return "LOGIN <credentials>" if rest else "LOGIN"
        return "LOGIN <literal+>" if literal.group(3) else "LOGIN <literal>"
    if name == "AUTHENTICATE":
        args = rest.split()
        if not args:
            return "AUTHENTICATE"
        mechanism = args[0].decode("ascii", "replace")
        mechanism = mechanism.upper() if _MECHANISM.match(mechanism) else "<mechanism>"
        return f"AUTHENTICATE {mechanism}" + (" <ir>" if len(args) > 1 else "")
    if name == "ID":
        return "ID NIL" if rest.strip().upper() == b"NIL" else "ID (...)"
    if not rest:
        return name
    return f"{name} {bounded_text(rest, 160)}"


def verb_as_sent(line: bytes) -> bytes:
    """The command word(s) exactly as sent: b"uid fetch", b"LOGIN" (never the arguments)."""
    parts = line.rstrip(b"\r\n").split(b" ", 3)
    if len(parts) < 2:
        return b""
    if parts[1].upper() == b"UID" and len(parts) > 2:
        return parts[1] + b" " + parts[2]
    return parts[1]


class TraceStep(Protocol):
    """A transcript line: `prefix` ("C", "S", …) and its bytes (see quirks/trace.py)."""

    @property
    def prefix(self) -> str: ...

    @property
    def data(self) -> bytes: ...


def profile_from_transcript(
    steps: str | Iterable[TraceStep],
    definitions: FingerprintSet | None = None,
    *,
    listener: str = "imap",
    sni: str | None = None,
) -> ClientProfile:
    """The profile for a recorded C:/S: transcript (the CLI's `imap-proxy fingerprint`):
    its text, or its lines already parsed. A line without a known prefix raises ValueError;
    a client side that cannot be framed raises wire.errors.ProtocolError."""
    from imap_proxy.quirks import trace

    lines = trace.parse_trace(steps) if isinstance(steps, str) else steps
    profile: ClientProfile = trace.replay_transcript(lines, definitions, listener=listener, sni=sni)
    return profile


# --- the engine ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Score:
    family: FamilyDefinition
    score: float
    held: tuple[Outcome, ...]
    against: tuple[Outcome, ...]


@dataclass(frozen=True, slots=True)
class _Decision:
    """What the scoring decided, without the scores or any evidence text (small: it is
    what a session keeps, and what `FingerprintSet` remembers per observation)."""

    family: str
    version: str | None
    confidence: float
    below_minimum: bool = False

    @property
    def key(self) -> tuple[str, str | None, str]:
        return (self.family, self.version, _bucket(self.confidence))


_UNKNOWN_DECISION = _Decision(UNKNOWN_FAMILY, None, 0.0)


class Fingerprinter:
    """One session's fingerprint; feed it what the client does, in arrival order."""

    def __init__(
        self, definitions: FingerprintSet, *, listener: str = "imap", sni: str | None = None
    ) -> None:
        self.definitions = definitions
        self.settled = False
        self._settings = definitions.definitions
        self._seen = Observations(listener=bounded_text(listener.encode(), 40), sni=_sni(sni))
        self._decision = _UNKNOWN_DECISION
        self._profile: ClientProfile | None = UNKNOWN

    @property
    def profile(self) -> ClientProfile:
        """The best guess so far, with its evidence (made on first use after a change)."""
        if self._profile is None:
            self._profile = self._explain()
        return self._profile

    def observe_command(
        self, tag: bytes, verb: bytes, line: bytes, *, authenticated: bool
    ) -> ClientProfile | None:
        if self.settled:
            return None
        seen = self._seen
        if authenticated and seen.auth_at is None:
            seen.auth_at = len(seen.commands)
        seen.tags.append(bounded_text(tag, 64))
        verb_text = bounded_text(verb, 40)
        seen.commands.append(
            SeenCommand(command_shape(verb, line), verb_text, authenticated=authenticated)
        )
        if verb_text.upper() in AUTH_VERBS:
            seen.login_attempts += 1
        return self._update()

    def observe_id(
        self, params: list[tuple[bytes, bytes | None]] | None, *, authenticated: bool
    ) -> ClientProfile | None:
        if self.settled:
            return None
        seen = self._seen
        if seen.id_seen:
            return None  # the first ID counts; a second one is not a new signal
        seen.id_seen = True
        seen.id_authenticated = authenticated or seen.auth_at is not None
        seen.id_at = len(seen.commands)
        if params is None:
            seen.id_fields = None
        else:
            seen.id_fields = {}
            for key, value in params[:30]:
                name = bounded_text(key, 40).lower()
                if value is not None and name not in seen.id_fields:
                    seen.id_fields[name] = bounded_text(value, 120)
        return self._update()

    def observe_authenticated(self) -> ClientProfile | None:
        if self.settled:
            return None
        if self._seen.auth_at is None:
            self._seen.auth_at = len(self._seen.commands)
        return self._update()

    # --- scoring ---------------------------------------------------------------------

    def _update(self) -> ClientProfile | None:
        # This runs after every command until settled, so it makes no evidence text and,
        # for observations some session already had (clients repeat themselves), reuses
        # that decision. The evidence is made when the profile changes or is read.
        before = self._decision.key
        self._decision = decision = self._decide()
        self._profile = None
        seen = self._seen
        if len(seen.commands) >= self._settings.settle_after_commands or (
            seen.id_seen and decision.key[2] == "high"
        ):
            self.settled = True
        if decision.key == before:
            return None
        return self.profile

    def _decide(self) -> _Decision:
        remembered = self.definitions.decisions
        key = self._seen.snapshot()
        decision = remembered.get(key)
        if decision is None:
            decision = self._decision_of(self._rank())
            if len(remembered) >= DECISIONS_REMEMBERED:
                del remembered[next(iter(remembered))]  # the oldest
            remembered[key] = decision
        return decision

    def _rank(self) -> list[_Score]:
        return sorted(
            (self._score(family) for family in self.definitions.scored),
            key=lambda s: -s.score,  # stable: ties keep file order
        )

    def _decision_of(self, ranked: list[_Score]) -> _Decision:
        if not ranked or ranked[0].score <= 0:
            return _UNKNOWN_DECISION
        best = ranked[0]
        second = ranked[1].score if len(ranked) > 1 else 0.0
        settings = self._settings
        ratio = second / best.score
        confidence = best.score * (
            1 - settings.ambiguity_weight * ratio**settings.ambiguity_exponent
        )
        confidence = round(max(0.0, min(1.0, confidence)), 3)
        if confidence < settings.minimum_confidence:
            return _Decision(UNKNOWN_FAMILY, None, confidence, below_minimum=True)
        return _Decision(best.family.family, self._version(best.family), confidence)

    def _explain(self) -> ClientProfile:
        """The profile with its evidence: the families scored again, with their texts."""
        ranked = self._rank()
        decision = self._decision_of(ranked)
        if decision is _UNKNOWN_DECISION:
            return UNKNOWN
        best = ranked[0]
        evidence = [o.detail for o in best.held] + [f"against: {o.detail}" for o in best.against]
        if len(ranked) > 1 and ranked[1].score / best.score >= 0.5:
            others = ", ".join(f"{s.family.family} {s.score:.2f}" for s in ranked[1:4] if s.score)
            evidence.append(f"also fits: {others}")
        if decision.below_minimum:
            settings = self._settings
            hint = f"best guess {best.family.family} at {decision.confidence:.2f}, below "
            hint += f"{settings.minimum_confidence:.2f}"
            return ClientProfile(UNKNOWN_FAMILY, None, 0.0, (hint, *evidence[: MAX_EVIDENCE - 1]))
        return ClientProfile(
            decision.family, decision.version, decision.confidence, tuple(evidence[:MAX_EVIDENCE])
        )

    def _score(self, family: FamilyDefinition) -> _Score:
        keep = 1.0
        factor = 1.0
        held: list[Outcome] = []
        against: list[Outcome] = []
        for signal in family.signals:
            outcome = signal.check(self._seen)
            if outcome is None:
                continue
            if outcome.holds:
                keep *= 1 - signal.weight
                if signal.weight > 0:
                    held.append(outcome)
            else:
                penalty = _penalty(signal)
                factor *= 1 - penalty
                if penalty > 0:
                    against.append(outcome)
        score = min(family.max_confidence, (1 - keep) * factor)
        return _Score(family, score, tuple(held), tuple(against))

    def _version(self, family: FamilyDefinition) -> str | None:
        fields = self._seen.id_fields
        if not fields:
            return None
        for signal in family.signals:
            if not isinstance(signal, IdField) or signal.version_field is None:
                continue
            outcome = signal.check(self._seen)
            value = fields.get(signal.version_field.lower())
            if outcome is None or not outcome.holds or value is None:
                continue
            if signal.version_pattern is None:
                return value[:64]
            found = regex(signal.version_pattern).search(value)
            if found is not None:
                return (found.group(1) if found.groups() else found.group(0))[:64]
        return None


def _penalty(signal: Signal) -> float:
    return 1.0 if signal.require else signal.penalty


def _bucket(confidence: float) -> str:
    if confidence >= 0.8:
        return "high"
    if confidence >= 0.5:
        return "medium"
    return "low"


def _sni(sni: str | None) -> str | None:
    return None if sni is None else bounded_text(sni.encode("utf-8", "replace"), 253).lower()
