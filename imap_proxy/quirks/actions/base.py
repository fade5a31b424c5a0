"""What every action is: hooks that default to changing nothing.

How this works: the engine calls only the hooks an action declared interest in
(`commands`, `responses`) or that every action has (`capabilities`, `holds`,
`releases_before`). Command hooks return a `Rewrite` (send this command instead), a
`LocalAnswer` (the proxy answers; nothing goes upstream) or an `Emulate` (the proxy
answers after running a script of its own upstream commands); response hooks return the
new response, or None for "unchanged".

An emulation script is sans-IO: a generator that yields one `UpstreamCommand` at a time
(no tag: the session assigns one), is sent that command's `StepResult` (the tagged
status and line, and the one-line untagged responses that arrived while it ran), and
finally returns an `EmulationAnswer`: the untagged bytes the client gets (the script
decides which of the untagged lines it saw are passed on; unrelated ones should be), the
tagged status text, and an outcome label for the `EmulationFinished` observation.

Two hooks watch what streams through without holding it: `on_untagged_line` sees the
first line of each untagged response of the kinds in `observes` (never a literal: FETCH
bodies stream on) and may keep a whole one-line response back; `on_tagged` sees the
tagged completion of each client command (when `watches_tagged`) and returns a
`TaggedOutcome`: lines to send before it, a replacement for it, or a BYE instead.

Commands in `head_commands` (APPEND) reach `on_command` as soon as their first argument is
complete: their last argument is then the message literal still to stream
(`LiteralString(None)`). Response hooks may also return `DROP` (the client does not see
the response). An action with `wants_mailbox_list(command)` true makes the session learn
the mailbox list (`LIST "" "*"`, shown to `learn_list` only) before the command goes on.

A command hook may also return a `ReplaceCommand`: one command of the proxy's own sent in
place of the client's, answered from its outcome (the client's state follows). `after_login`
and `upstream_tag` are hooks for rules about the upstream's own needs (an ID after login,
tag shapes).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from imap_proxy.wire.command import Command
from imap_proxy.wire.response import Response
from imap_proxy.wire.syntax import Value

if TYPE_CHECKING:
    from imap_proxy.quirks.engine import SessionView


@dataclass(frozen=True, slots=True)
class Rewrite:
    command: Command


@dataclass(frozen=True, slots=True)
class Drop:
    """From a response hook: the client must not see this response at all."""


DROP = Drop()


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """`untagged` lines (CRLF included) then the tagged `status_text` (e.g. b"OK done")."""

    untagged: bytes
    status_text: bytes


@dataclass(frozen=True, slots=True)
class UpstreamCommand:
    """A command an emulation script sends upstream: `name` ("UID COPY") and its args."""

    name: str
    args: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class StepResult:
    """What the upstream answered to one `UpstreamCommand`."""

    status: str  # OK, NO, BAD (uppercase)
    line: bytes  # the tagged line, CRLF included
    untagged: tuple[bytes, ...]  # one-line untagged responses received meanwhile

    @property
    def text(self) -> bytes:
        """The tagged line after tag and status: `[TRYCREATE] No such mailbox`."""
        words = self.line.rstrip(b"\r\n").split(b" ", 2)
        return words[2] if len(words) > 2 else b""


@dataclass(frozen=True, slots=True)
class EmulationAnswer:
    """The end of a script: `untagged` (CRLF included), then the tagged `status_text`."""

    untagged: bytes
    status_text: bytes
    outcome: str  # a bounded label: "ok", "failed", "rolled_back"


Script = Generator[UpstreamCommand, StepResult, EmulationAnswer]


@dataclass(frozen=True, slots=True)
class Emulate:
    """Answer the command by running `script` upstream (see the module docstring)."""

    script: Script
    rule_id: str
    kind: str  # what is emulated, a bounded label ("move")
    # The answer's untagged lines are replies to the client's command (LIST, STATUS): the
    # response rules see them as they would the upstream's (names mapped, attributes
    # added), with the client's command as the one they answer.
    replies: bool = False


@dataclass(frozen=True, slots=True)
class TaggedOutcome:
    """What an action makes of a tagged completion. `untagged` (CRLF included) goes to
    the client before the tagged line; `line` replaces the tagged line (None: as it came);
    `bye` ends the session with `* BYE <bye>` instead of the tagged line. `lookup` asks the
    session first to fetch the UIDs of those message numbers (`FETCH <lookup> (UID)`) and
    then to call `on_tagged` again with the untagged lines of that command. `changed` is
    False when the outcome only gives back lines the action had held; `stubs` counts the
    stub responses in `untagged` (for metrics)."""

    untagged: bytes = b""
    line: bytes | None = None
    bye: bytes | None = None
    lookup: bytes | None = None
    changed: bool = True
    stubs: int = 0


@dataclass(frozen=True, slots=True)
class ReplaceCommand:
    """Send `command` (without a tag: the session gives it one of its own) upstream in
    place of the client's, consume its answer (tagged line and untagged lines), and
    answer the client what `answer` makes of it. The client's protocol state follows the
    answer's status. `selected_only`: without a selected mailbox the client gets BAD at
    once (as a server answers UNSELECT there)."""

    command: bytes
    name: str
    answer: Callable[[bytes, list[bytes]], LocalAnswer]
    selected_only: bool = False


class Action:
    kind: ClassVar[str] = "action"
    # Keeps no per-session state (only its rule's parameters): one instance serves every
    # session of a rule set. An action that remembers anything between calls must not say so.
    shared: ClassVar[bool] = False
    commands: frozenset[str] = frozenset()
    head_commands: frozenset[str] = frozenset()
    responses: frozenset[str] = frozenset()
    holds_untagged: ClassVar[bool] = False  # overrides holds()/releases_before()
    observes: frozenset[str] = frozenset()  # untagged kinds whose first line it sees
    watches_tagged: ClassVar[bool] = False  # overrides on_tagged()
    ignores_empty_lines: ClassVar[bool] = False  # the session drops bare CRLF lines
    maps_tags: ClassVar[bool] = False  # overrides upstream_tag()
    keepalive_interval: float | None = None  # seconds of silence in IDLE before a keepalive
    keepalive_line: bytes = b""
    reidle_after: float | None = None  # seconds of one upstream IDLE before a fresh one
    poll_interval: float | None = None  # seconds between NOOPs for a client in IDLE

    def __init__(self, rule_id: str) -> None:
        self.rule_id = rule_id

    def capabilities(self, caps: list[str], view: SessionView) -> list[str]:
        return caps

    def on_command(
        self, command: Command, view: SessionView
    ) -> Rewrite | LocalAnswer | Emulate | ReplaceCommand | None:
        return None

    def wants_command_line(self, line: bytes) -> bool:
        """Whether a command of `commands` with this first line is worth holding whole."""
        return True

    def wants_line(self, kind: str, line: bytes) -> bool:
        """Whether this untagged line (first line of the response) is worth parsing. For
        FETCH it is also asked about a run of one-line responses at once, so it must be a
        search: true for the run whenever it would be for one of its lines."""
        return True

    def on_response(self, response: Response, view: SessionView) -> Response | Drop | None:
        return None

    def wants_mailbox_list(self, command: Command, view: SessionView) -> bool:
        return False

    def after_login(self, view: SessionView) -> list[bytes]:
        """Commands (without tags) to send upstream once a login succeeded."""
        return []

    def upstream_tag(self, tag: bytes) -> bytes | None:
        """The tag to use upstream for this client tag; None keeps it."""
        return None

    def holds(self, kind: str, running: Collection[str]) -> bool:
        return False

    def releases_before(self, command: str) -> bool:
        return False

    def on_untagged_line(
        self, kind: str, line: bytes, whole: bool, running: Callable[[], Collection[str]]
    ) -> bool:
        """The first line of an untagged response; True keeps it back (only when `whole`:
        a one-line response no other action kept). The action then owns the line.
        `running()` names the client's commands in flight (a list: call it only if needed)."""
        return False

    def may_keep_in_run(self, kind: str, run: bytes) -> bool:
        """Whether `on_untagged_line` might keep back one of a run of one-line responses
        of `kind` (the bytes of them all). True, the default, has the session show them
        one by one; False lets it relay the run whole and call `on_untagged_run`."""
        return True

    def on_untagged_run(
        self, kind: str, run: bytes, running: Callable[[], Collection[str]]
    ) -> None:
        """A run of one-line responses of `kind` (their bytes, CRLF-terminated lines) that
        `may_keep_in_run` said it keeps none of: seen as `on_untagged_line` would."""
        for line in run.split(b"\r\n")[:-1]:
            self.on_untagged_line(kind, line + b"\r\n", True, running)

    def on_tagged(
        self, tag: bytes, name: str, line: bytes, view: SessionView, lookup: list[bytes] | None
    ) -> TaggedOutcome | None:
        return None
