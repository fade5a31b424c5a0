"""Quirk rules as data: the file format, validated by pydantic, and loading a directory.

How this works: a rules directory holds YAML (or TOML) files, each with a list `rules:`.
A rule has an `id`, a `summary`, `evidence` (the trace that makes it fire and one where
it must not), `enabled`, `priority`, a `match` (all given conditions must hold) and
`actions` drawn from a finite vocabulary: each action is a pydantic model told apart by
its `type`, so every parameter is typed and an unknown one is an error. `load_rules()`
reads every file of a directory into a `RuleSet`; any problem raises `RuleLoadError` whose
lines name the file, the rule id and the field. `rules_json_schema()` is what
`imap-proxy rules schema` prints.

Rules keyed on ID fields (`match.id_fields`) are allowed but explicit: RFC 2971 §3 says a
server must not work around client bugs from ID data, so that choice is the operator's,
and no rule may make the proxy refuse service because of an ID.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

RULE_FILE_SUFFIXES = (".yaml", ".yml", ".toml")
FINGERPRINT_FILE = "fingerprints.yaml"  # lives beside the rules; not a rule file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"invalid regular expression {value!r}: {error}") from None
    return value


class Match(_Strict):
    """When a rule applies. Every condition given must hold; none given means always."""

    client_families: list[str] | None = Field(
        default=None, description="fingerprint families the rule targets (any of them)"
    )
    min_confidence: float = Field(default=0.0, ge=0, le=1)
    id_fields: dict[str, str] | None = Field(
        default=None,
        description="ID field -> regex, all must match (explicitly ID-keyed: RFC 2971 §3)",
    )
    tag_pattern: str | None = Field(default=None, description="regex on the client's first tag")
    upstream_capabilities_present: list[str] = Field(default_factory=list)
    upstream_capabilities_absent: list[str] = Field(default_factory=list)
    upstream_greeting: str | None = Field(default=None, description="regex on the greeting")
    listeners: list[str] | None = None

    _regex_tag = field_validator("tag_pattern", "upstream_greeting")(_check_regex)

    @field_validator("id_fields")
    @classmethod
    def _id_regexes(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for pattern in (value or {}).values():
            _check_regex(pattern)
        return value


# --- the action vocabulary -------------------------------------------------------------


class CapabilitiesAction(_Strict):
    """Shape the capability list clients see (greeting, [CAPABILITY] codes, CAPABILITY)."""

    type: Literal["capabilities"]
    prepend: list[str] = Field(default_factory=list, description="added first, if absent")
    add: list[str] = Field(default_factory=list, description="added last, if absent")
    remove: list[str] = Field(default_factory=list)


class AnswerIdAction(_Strict):
    """Answer ID in every state when the upstream has no ID (RFC 2971), and advertise ID."""

    type: Literal["answer_id"]
    fields: dict[str, str] | None = Field(
        default=None, description="what to answer; none answers `* ID NIL`"
    )


class StripTrailingSeparatorAction(_Strict):
    """Remove one trailing hierarchy separator from mailbox names in commands."""

    type: Literal["strip_trailing_separator"]
    separators: list[str] = Field(
        default_factory=lambda: ["/", "."],
        description="used until the upstream's separator is known from a LIST response",
    )


class LsubNoselectAction(_Strict):
    """Add \\Noselect to LSUB lines of mailboxes LIST showed as not selectable."""

    type: Literal["lsub_noselect"]


class LsubSpecialUseAction(_Strict):
    """Add special-use attributes (\\Trash, \\Sent, …) to LSUB lines, as LIST shows them
    or as `folders` maps them."""

    type: Literal["lsub_special_use"]
    folders: dict[str, str] = Field(
        default_factory=dict, description="mailbox name -> special-use attribute"
    )


class HoldUntaggedAction(_Strict):
    """Hold untagged responses of the given kinds until a command of `release_on` ends."""

    type: Literal["hold_untagged"]
    kinds: list[Literal["EXISTS", "RECENT"]] = Field(
        default_factory=lambda: ["EXISTS", "RECENT"]  # type: ignore[arg-type]
    )
    release_on: list[str] = Field(default_factory=lambda: ["NOOP", "CHECK"])
    except_during: list[str] = Field(default_factory=lambda: ["SELECT", "EXAMINE"])


class MoveEmulationAction(_Strict):
    """Advertise MOVE and emulate MOVE/UID MOVE (RFC 6851) with COPY, STORE and UID
    EXPUNGE when the upstream has UIDPLUS; `mode` says what to do when it has not."""

    type: Literal["emulate_move"]
    mode: Literal["copy-and-flag", "rfc4315", "off"] = Field(
        default="copy-and-flag",
        description=(
            "without UIDPLUS: copy-and-flag (COPY, then flag the originals \\Deleted and "
            "leave expunging to the client), rfc4315 (RFC 4315 §2.1's un-flag/EXPUNGE/"
            "re-flag sequence; racy, opt-in) or off (no MOVE advertised)"
        ),
    )


class StubFetchAction(_Strict):
    """Messages expunged by another session that this client still addresses: a FETCH by
    sequence number gets type-correct stubs and OK (`policy: stub`, RFC 2180 §4.1.3) or a
    plain NO (`policy: no`, §4.1.2); `on_repeat: bye` ends the session when the same
    vanished message is fetched again before its EXPUNGE could be delivered (Gulbrandsen's
    loop-breaker). UID FETCH/UID STORE (and UID COPY/MOVE of one UID) answered NO only
    for vanished UIDs become OK (RFC 9051 §6.4.9)."""

    type: Literal["stub_fetch"]
    policy: Literal["stub", "no"] = "stub"
    on_repeat: Literal["same", "bye"] = "same"
    uid_vanished_ok: bool = True
    vanished_text: str = Field(
        default=(
            r"(?i)\bexpunged\b"
            r"|\b(messages?|uids?)\b.*\b(no longer|vanished|(do|does)(n't| not) exist)"
        ),
        description="regex on the text of a tagged NO without response code that means "
        "'those messages are gone' ([EXPUNGEISSUED] always does; a text naming a mailbox, "
        "folder, quota, permission or error never does)",
    )

    _regex = field_validator("vanished_text")(_check_regex)


SpecialUse = Literal["\\Trash", "\\Sent", "\\Drafts", "\\Junk", "\\Archive", "\\All", "\\Flagged"]


class MapSpecialFoldersAction(_Strict):
    """Map the client's names for special folders ("Deleted Items") to the upstream's real
    folder of that role, in every command and response that names a mailbox."""

    type: Literal["map_special_folders"]
    aliases: dict[SpecialUse, list[str]] = Field(
        description="role -> the names this client uses for it; the first is the one it sees"
    )
    upstream_names: dict[str, SpecialUse] = Field(
        default_factory=dict,
        description="upstream folder name -> role, for folders LIST shows without the "
        "attribute (localized names go here); the first existing one wins",
    )
    upstream_folders: dict[SpecialUse, str] = Field(
        default_factory=dict,
        description="role -> the upstream folder, for servers without SPECIAL-USE "
        "(overrides what LIST shows)",
    )
    learn_with_list: bool = Field(
        default=True,
        description="when a command names an alias and the role's folder is not yet known, "
        'send `LIST "" "*"` upstream first to learn it',
    )


class SynthesizeSpecialUseAction(_Strict):
    """Add special-use attributes to LIST/LSUB by folder name where the upstream has none,
    advertise SPECIAL-USE, and accept RFC 6154's LIST forms by rewriting them."""

    type: Literal["synthesize_special_use"]
    folders: dict[str, SpecialUse] = Field(description="upstream folder name -> attribute")


class XlistAction(_Strict):
    """Answer XLIST (the Gmail-era extension) from LIST, with special-use attributes and
    \\Inbox, and advertise XLIST."""

    type: Literal["xlist"]
    folders: dict[str, SpecialUse] = Field(
        default_factory=dict,
        description="upstream folder name -> attribute, where LIST shows none",
    )


class AnswerNamespaceAction(_Strict):
    """Answer NAMESPACE locally when the upstream lacks it (new Outlook gives up an
    account on NO/BAD), with one personal namespace; advertise NAMESPACE."""

    type: Literal["answer_namespace"]
    prefix: str = Field(default="", description="the personal namespace's prefix")
    delimiter: str = Field(
        default=".",
        min_length=1,
        max_length=1,
        description="used until a LIST response of the session showed the upstream's",
    )
    advertise: bool = True


class AnswerEnableAction(_Strict):
    """Answer ENABLE locally when the upstream lacks it: `* ENABLED` naming nothing (no
    extension is claimed that is not backed) and a tagged OK."""

    type: Literal["answer_enable"]
    advertise: bool = Field(default=False, description="also list ENABLE in capabilities")


def _impossible_mailbox(description: str) -> Any:
    """A mailbox name to EXAMINE so that nothing stays selected: one no user has."""
    return Field(
        default="imap-proxy/no such mailbox/unselect",
        min_length=1,
        pattern=r"^[\x20-\x7e]+$",
        description=description,
    )


class EmulateUnselectAction(_Strict):
    """UNSELECT for upstreams without it, never via CLOSE (CLOSE expunges): EXAMINE of a
    mailbox that cannot exist (a failed EXAMINE leaves no mailbox selected, RFC 3501
    §6.3.2), then OK to the client; advertise UNSELECT."""

    type: Literal["emulate_unselect"]
    mailbox: str = _impossible_mailbox("a name no user has (printable ASCII)")
    advertise: bool = True


class IgnoreEmptyLinesAction(_Strict):
    """Ignore empty command lines (bare CRLF) from the client instead of relaying them."""

    type: Literal["ignore_empty_lines"]


class DropFetchModifierAction(_Strict):
    """Remove a FETCH modifier the upstream cannot take: `(CHANGEDSINCE 0)` asks for
    everything anyway, so dropping it changes no result."""

    type: Literal["drop_fetch_modifier"]
    modifier: str = Field(default="CHANGEDSINCE", pattern=r"^[A-Za-z][A-Za-z0-9-]*$")
    values: list[str] = Field(
        default_factory=lambda: ["0"], min_length=1, description="only with these values"
    )


class UntaggedStatusTextAction(_Strict):
    """Give untagged OK/NO/BAD responses without text a text (`* OK [code]` ->
    `* OK [code] ok`): strict parsers require it."""

    type: Literal["untagged_status_text"]
    text: str = Field(default="ok", min_length=1, pattern=r"^[\x20-\x7e]+$")
    statuses: list[Literal["OK", "NO", "BAD"]] = Field(
        default_factory=lambda: ["OK", "NO", "BAD"]  # type: ignore[arg-type]
    )


class EmptyPartialFetchAction(_Strict):
    """Answer a partial body fetch past the end (`BODY[]<5000>` of a 300-byte message)
    with an empty string where the upstream says NIL."""

    type: Literal["empty_partial_fetch"]


class NormalizeBodyStructureAction(_Strict):
    """Rewrite BODYSTRUCTURE/ENVELOPE data to grammar-valid forms: `""` for NIL parameter
    values, NIL for empty lists, 0 for negative counts, a default for a NIL encoding."""

    type: Literal["normalize_body_structure"]
    default_encoding: str = Field(default="7BIT", pattern=r"^[A-Za-z0-9-]+$")


class ShedBackgroundLoadAction(_Strict):
    """Apple TN3189: answer the ID of a background Mail daemon with `NO [UNAVAILABLE]`,
    which postpones its background download (about a day). Operator opt-in."""

    type: Literal["shed_background_load"]
    text: str = Field(default="Try again later", pattern=r"^[\x20-\x7e]*$")


class SendIdUpstreamAction(_Strict):
    """Send an ID upstream right after login, for providers that require one (NetEase
    refuses SELECT without it); its response is consumed, the client never sees it."""

    type: Literal["send_id_upstream"]
    fields: dict[str, str] = Field(
        default_factory=lambda: {"name": "imap-proxy"},
        min_length=1,
        max_length=30,
        description="the ID fields (RFC 2971 §3.3: at most 30, never empty)",
    )

    @field_validator("fields")
    @classmethod
    def _printable(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not re.fullmatch(r"[\x20-\x7e]{1,30}", name) or not re.fullmatch(
                r"[\x20-\x7e]{0,1024}", text
            ):
                raise ValueError("ID fields: printable ASCII, names up to 30, values 1024")
        return value


class PrefixNumericTagsAction(_Strict):
    """Send purely numeric client tags upstream with a letter prefix (`1` -> `A1`), for
    servers that reject numeric tags; responses are mapped back to the client's tag."""

    type: Literal["prefix_numeric_tags"]
    prefix: str = Field(default="A", pattern=r"^[A-Za-z]{1,4}$")


class IdleKeepaliveAction(_Strict):
    """Send `* OK <text>` to a client in IDLE after `interval` seconds without a byte to
    it, for clients (Outlook) that drop connections that stay silent."""

    type: Literal["idle_keepalive"]
    interval: float = Field(default=120, ge=1, le=1500, description="seconds")
    text: str = Field(default="Still here", min_length=1, pattern=r"^[\x20-\x7e]+$")


class ReidleAction(_Strict):
    """Keep a client's IDLE alive across the upstream's IDLE timeout (RFC 2177: servers
    may end an IDLE after 30 minutes): after `reidle_after` seconds the proxy ends the
    upstream's IDLE (DONE) and starts a new one of its own; the client sees only the
    untagged data that arrives meanwhile."""

    type: Literal["reidle"]
    reidle_after: float = Field(
        default=1500, ge=1, le=1740, description="seconds of one upstream IDLE (< 29 minutes)"
    )


class IdlePollAction(_Strict):
    """IDLE for upstreams without it: advertise IDLE, answer the client's IDLE with `+`
    locally, send NOOP upstream every `poll_interval` seconds and relay what it brings
    (EXISTS, EXPUNGE, FETCH, RECENT); DONE gets `OK IDLE terminated`."""

    type: Literal["idle_poll"]
    poll_interval: float = Field(default=30, ge=1, le=1500, description="seconds")


class DeleteToTrashAction(_Strict):
    """A `STORE`/`UID STORE +FLAGS (\\Deleted)` on messages outside the trash becomes a
    move to the trash (the upstream's MOVE, or the MOVE emulation with UIDPLUS): the client
    sees the messages expunged and the STORE OK. A failed move falls back to the plain
    STORE. A COPY of the same set just before (`client_moves: keep-flag`) is the client's
    own move (COPY + \\Deleted): its \\Deleted stays a plain flag."""

    type: Literal["delete_to_trash"]
    trash_folder: str | None = Field(
        default=None,
        min_length=1,
        description="the upstream's trash when no LIST shows a \\Trash mailbox "
        "(None: such sessions keep plain \\Deleted)",
    )
    client_moves: Literal["keep-flag", "to-trash"] = Field(
        default="keep-flag",
        description="a STORE \\Deleted of the very set the previous command copied: "
        "keep-flag (the client is moving: the messages are already in the target) or "
        "to-trash (treat it like any delete)",
    )


class ScopeExpungeAction(_Strict):
    """EXPUNGE and CLOSE remove only the messages this session flagged \\Deleted (by UID,
    from its own STORE/UID STORE), never another device's: sent upstream as `UID EXPUNGE`;
    CLOSE as `UID EXPUNGE` then UNSELECT (or an EXAMINE of `unselect_mailbox` where the
    upstream lacks UNSELECT). Needs UIDPLUS upstream."""

    type: Literal["scope_expunge"]
    unselect_mailbox: str = _impossible_mailbox(
        "for CLOSE without UNSELECT upstream: a name no user has"
    )


class ListStatusAction(_Strict):
    """`LIST ... RETURN (STATUS (...))` (RFC 5819) for upstreams without LIST-STATUS: a plain
    LIST, then one STATUS per selectable mailbox, answered as LIST-STATUS would (each
    `* LIST` followed by its `* STATUS`); RETURN (SUBSCRIBED) and (CHILDREN) are answered
    from LSUB and the plain LIST where the upstream lacks LIST-EXTENDED. Advertises
    LIST-STATUS."""

    type: Literal["emulate_list_status"]
    max_status: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="at most this many STATUS commands per LIST; the tagged OK says how "
        "many mailboxes were left without STATUS",
    )


class Utf8AcceptAction(_Strict):
    """UTF8=ACCEPT (RFC 6855) for upstreams without it: advertise it, answer `ENABLE
    UTF8=ACCEPT`, then convert mailbox names UTF-8 -> modified UTF-7 in commands and back
    in LIST/LSUB/STATUS replies. Raw 8-bit names from clients that did not enable it are
    converted too (with `advertise: false`, only those); names that are not UTF-8 get NO."""

    type: Literal["utf8_accept"]
    advertise: bool = Field(
        default=True,
        description="advertise UTF8=ACCEPT and answer ENABLE UTF8=ACCEPT; false converts "
        "only the raw 8-bit names clients send without enabling it",
    )
    advertise_enable: bool = Field(
        default=True,
        description="also advertise ENABLE where the upstream lacks it (clients send "
        "ENABLE only when it is advertised); the proxy then answers every ENABLE",
    )


ActionSpec = Annotated[
    CapabilitiesAction
    | AnswerIdAction
    | StripTrailingSeparatorAction
    | LsubNoselectAction
    | LsubSpecialUseAction
    | HoldUntaggedAction
    | MoveEmulationAction
    | StubFetchAction
    | MapSpecialFoldersAction
    | SynthesizeSpecialUseAction
    | XlistAction
    | AnswerNamespaceAction
    | AnswerEnableAction
    | EmulateUnselectAction
    | IgnoreEmptyLinesAction
    | DropFetchModifierAction
    | UntaggedStatusTextAction
    | EmptyPartialFetchAction
    | NormalizeBodyStructureAction
    | ShedBackgroundLoadAction
    | SendIdUpstreamAction
    | PrefixNumericTagsAction
    | IdleKeepaliveAction
    | ReidleAction
    | IdlePollAction
    | DeleteToTrashAction
    | ScopeExpungeAction
    | ListStatusAction
    | Utf8AcceptAction,
    Field(discriminator="type"),
]


Upstream = Literal["modern", "legacy", "rev2only", "legacy_noidle", "legacy_nouidplus"]


class Evidence(_Strict):
    """Traces (in the repository's tests/rules/traces/) that show the rule at work: one
    on which it fires and one on which it must not, each replayed through the proxy
    against a private Dovecot of the given profile."""

    fires: str = Field(description="a client trace on which the rule fires")
    silent: str = Field(description="a trace it must not fire on (another client/upstream)")
    upstream: Upstream = "modern"
    silent_upstream: Upstream | None = Field(default=None, description="default: `upstream`")
    faults: list[str] = Field(
        default_factory=list,
        description="server anomalies the test harness injects in front of Dovecot for "
        "this evidence (tests/support/faults.py), for rules about upstream misbehaviour",
    )
    silent_faults: list[str] | None = Field(default=None, description="default: `faults`")
    replay_parameters: dict[str, float | int | str] = Field(
        default_factory=dict,
        description="action parameters changed for the evidence replays only (a timer's "
        "interval shortened so the replay does not wait minutes)",
    )


class Rule(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)
    summary: str
    evidence: Evidence
    enabled: bool = True
    priority: int = Field(default=100, description="lower runs first")
    match: Match = Field(default_factory=Match)
    actions: list[ActionSpec] = Field(min_length=1)
    references: list[str] = Field(default_factory=list)


class RuleFile(_Strict):
    rules: list[Rule]


class RuleLoadError(Exception):
    """One or more rule files are invalid; `problems` has one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class LoadedRule:
    rule: Rule
    source: str  # file name, for messages


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Every rule of a directory, enabled or not, ordered by priority then id."""

    rules: tuple[LoadedRule, ...]
    origin: str = ""
    # Shared by every session of this set (filled by the engine): what a given set of
    # active rules makes of the hooks, so each session need not work it out again.
    session_cache: dict[Any, Any] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )
    _enabled: tuple[Rule, ...] | None = field(
        default=None, init=False, compare=False, hash=False, repr=False
    )

    @classmethod
    def empty(cls) -> RuleSet:
        return cls((), "empty")

    @property
    def enabled(self) -> tuple[Rule, ...]:
        if self._enabled is None:
            enabled = tuple(loaded.rule for loaded in self.rules if loaded.rule.enabled)
            object.__setattr__(self, "_enabled", enabled)
            return enabled
        return self._enabled

    def get(self, rule_id: str) -> Rule:
        for loaded in self.rules:
            if loaded.rule.id == rule_id:
                return loaded.rule
        raise KeyError(rule_id)

    def only(self, rule_ids: Iterable[str]) -> RuleSet:
        """These rules alone, enabled whatever their files say (for tests and replay)."""
        wanted = set(rule_ids)
        chosen = tuple(
            LoadedRule(loaded.rule.model_copy(update={"enabled": True}), loaded.source)
            for loaded in self.rules
            if loaded.rule.id in wanted
        )
        missing = wanted - {loaded.rule.id for loaded in chosen}
        if missing:
            raise KeyError(", ".join(sorted(missing)))
        return RuleSet(chosen, self.origin)


def packaged_rules_dir() -> Path:
    return Path(str(resources.files("imap_proxy") / "rules"))


def _read(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        return tomllib.loads(text)
    return yaml.safe_load(text)


def _field_path(error_loc: tuple[int | str, ...], data: Any) -> tuple[str, str]:
    """(rule id, dotted field path) for a pydantic error location inside a rule file."""
    rule_id = "?"
    if len(error_loc) >= 2 and error_loc[0] == "rules" and isinstance(error_loc[1], int):
        try:
            rule_id = str(data["rules"][error_loc[1]].get("id", f"#{error_loc[1] + 1}"))
        except (KeyError, IndexError, TypeError, AttributeError):
            rule_id = f"#{error_loc[1] + 1}"
        error_loc = error_loc[2:]
    return rule_id, ".".join(str(part) for part in error_loc) or "(rule)"


def load_rule_file(path: Path) -> list[Rule]:
    try:
        data = _read(path)
    except (OSError, yaml.YAMLError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise RuleLoadError([f"{path.name}: cannot read: {error}"]) from None
    try:
        return RuleFile.model_validate(data).rules
    except ValidationError as error:
        problems = []
        for item in error.errors():
            rule_id, where = _field_path(tuple(item["loc"]), data)
            problems.append(f"{path.name}: rule {rule_id}: {where}: {item['msg']}")
        raise RuleLoadError(problems) from None


def load_rules(directory: Path | None = None) -> RuleSet:
    """Every rule file of `directory` (the packaged rules by default), or RuleLoadError."""
    directory = directory or packaged_rules_dir()
    if not directory.is_dir():
        raise RuleLoadError([f"{directory}: not a directory"])
    loaded: list[LoadedRule] = []
    problems: list[str] = []
    for path in sorted(directory.iterdir()):
        if path.suffix not in RULE_FILE_SUFFIXES or path.name == FINGERPRINT_FILE:
            continue
        try:
            loaded += [LoadedRule(rule, path.name) for rule in load_rule_file(path)]
        except RuleLoadError as error:
            problems += error.problems
    seen: dict[str, str] = {}
    for item in loaded:
        if item.rule.id in seen:
            problems.append(
                f"{item.source}: rule {item.rule.id}: id: also defined in {seen[item.rule.id]}"
            )
        seen[item.rule.id] = item.source
    if problems:
        raise RuleLoadError(problems)
    loaded.sort(key=lambda item: (item.rule.priority, item.rule.id))
    return RuleSet(tuple(loaded), str(directory))


def rules_json_schema() -> str:
    return json.dumps(RuleFile.model_json_schema(), indent=2, sort_keys=True)
