"""Stub FETCH for messages another session expunged (RFC 2180 §4.1, RFC 9051 §6.4.9).

How this works: when session B expunges messages, session A is told only at its next
command that may carry EXPUNGE; until then A still addresses them by number. Upstreams
answer such a FETCH differently - Dovecot with its own stubs (`BODY[] NIL`,
`RFC822.SIZE 0`, the epoch as date, no UID) and `OK [EXPUNGEISSUED]`, others with NO
(4.1.2) or by leaving the messages out - and clients break on NO, on NIL bodies and on
missing data. `StubFetch` keeps a `MailboxState` (message count, number -> UID map) and,
for every sequence-number FETCH in flight, a `FetchWatch`. It only observes what streams
through: the first line of each untagged FETCH (its number, its UID), EXISTS and EXPUNGE,
and keeps back only one-line FETCH responses that look like an upstream stub. At the
tagged completion:

* the vanished messages are those the upstream stubbed, and those requested but not
  answered - when the completion says so (`[EXPUNGEISSUED]`, or a NO whose text means
  "gone"), or, for missing data, whenever it completes OK;
* their UIDs come from the map; unknown ones are looked up first (the session sends
  `FETCH n (UID)`, which Dovecot still answers for a message this session was not told
  is gone);
* `policy: stub` sends a type-correct stub per message (`wire.fetchstub`) and OK
  [EXPUNGEISSUED]; `policy: no` sends a plain NO; with `on_repeat: bye`, fetching a
  message that was already stubbed, before any EXPUNGE reached the client, ends the
  session with BYE (the loop-breaker);
* held lines that turn out to be real data are sent unchanged.

A UID FETCH is watched the same way: Dovecot stubs a UID it then reports expunged in the
same response (`BODY[] NIL`, `* n EXPUNGE`, `OK [EXPUNGEISSUED]`); those stubs are
dropped, since a UID command answers a vanished UID with no data (RFC 9051 §6.4.9).

Untagged EXPUNGE arriving while a FETCH, STORE or SEARCH runs (§7.5.1 forbids it) is held,
in order, and sent just before the tagged line of the last such command in flight (after
its stubs, which use the old numbers), or of the next command of any kind: later
commands by number then mean the same messages to the client and to the upstream,
which an EXPUNGE held for longer would not (a STORE \\Deleted on the wrong message).

A NO to UID FETCH or UID STORE - or to UID COPY/MOVE of a single UID - that only says the
messages are gone becomes OK, and so does such a NO to STORE (RFC 2180 §4.2: always when
.SILENT, with `policy: stub` otherwise). With QRESYNC, a `* VANISHED` naming UIDs never learnt makes
the numbers unknowable: FETCHes then pass untouched until the next SELECT. At most
MAX_WATCHED_FETCHES commands in flight are followed (a pipelining client's further ones
pass untouched).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from imap_proxy.quirks.actions.base import Action, LocalAnswer, Rewrite, TaggedOutcome
from imap_proxy.quirks.model import StubFetchAction
from imap_proxy.session.mailbox import (
    FetchWatch,
    MailboxState,
    fetch_first_line,
    fetch_run_heads,
    in_order,
    looks_expunged,
    looks_like_stub,
)
from imap_proxy.wire.command import Command, command_set, parse_fetch
from imap_proxy.wire.errors import ProtocolError, Side
from imap_proxy.wire.fetchstub import stub_fetch
from imap_proxy.wire.syntax import (
    Atom,
    astring_bytes,
    encode_sequence_set,
    parse_sequence_set,
)

if TYPE_CHECKING:
    from imap_proxy.quirks.engine import SessionView

MAX_WATCHED_FETCHES = 64  # commands in flight followed at once; later ones pass untouched
_NO_EXPUNGE_DURING = frozenset({"FETCH", "STORE", "SEARCH"})  # RFC 9051 §7.5.1
_UID_COMMANDS = frozenset({"UID STORE", "UID COPY", "UID MOVE"})
_SINGLE_UID_ONLY = frozenset({"UID COPY", "UID MOVE"})  # a NO may have copied nothing
_CODE_EXPUNGEISSUED = b"[EXPUNGEISSUED"
_NOT_ABOUT_MESSAGES = re.compile(
    rb"(?i)mailbox|folder|quota|permission|denied|read-only|readonly|space|limit|error"
)
_STUB_OK_TEXT = b"OK [EXPUNGEISSUED] Some messages were expunged by another session; NOOP"
_STUB_NO_TEXT = b"NO [EXPUNGEISSUED] Some of the requested messages no longer exist; NOOP"
_BYE_TEXT = b"Message %d was expunged by another session and fetched again; log in again"


def _status(line: bytes, tag: bytes) -> tuple[bytes, bytes]:
    """(status word, the rest) of a tagged line."""
    rest = line[len(tag) + 1 :].rstrip(b"\r\n")
    word, _, text = rest.partition(b" ")
    return word.upper(), text


class StubFetch(Action):
    kind = "stub_fetch"
    commands = frozenset(
        # SEARCH is not among them: it may carry long literals, and the session's list of
        # commands in flight tells when one runs.
        {"SELECT", "EXAMINE", "CLOSE", "UNSELECT", "FETCH", "STORE", "UID FETCH"} | _UID_COMMANDS
    )
    observes = frozenset({"FETCH", "EXISTS", "EXPUNGE", "VANISHED"})
    watches_tagged = True

    def __init__(self, rule_id: str, spec: StubFetchAction) -> None:
        super().__init__(rule_id)
        self.policy = spec.policy
        self.bye_on_repeat = spec.on_repeat == "bye"
        self.uid_vanished_ok = spec.uid_vanished_ok
        self.vanished_text = re.compile(spec.vanished_text.encode())
        self.mailbox = MailboxState()
        self._fetches: dict[bytes, FetchWatch] = {}
        # STOREs in flight (no EXPUNGE now): tag -> "STORE", or "STORE.SILENT"
        self._blocking: dict[bytes, str] = {}
        self._uid_commands: dict[bytes, tuple[str, bool]] = {}  # tag -> (name, one UID)
        self._stubbed: set[tuple[str, int]] = set()  # since the last EXPUNGE delivered

    # --- commands --------------------------------------------------------------------

    def on_command(self, command: Command, view: SessionView) -> Rewrite | LocalAnswer | None:
        name, tag = command.name, command.tag
        if name in ("SELECT", "EXAMINE"):
            mailbox = astring_bytes(command.args[0]) if command.args else None
            self._new_mailbox(mailbox)
        elif name in ("CLOSE", "UNSELECT"):
            self._new_mailbox(None)
        elif name in ("FETCH", "UID FETCH"):
            try:
                request = parse_fetch(command)
            except ProtocolError:
                return None  # the upstream answers BAD
            if self.mailbox.reliable and len(self._fetches) < MAX_WATCHED_FETCHES:
                self._fetches[tag] = FetchWatch(tag, request, self.mailbox.exists)
            elif name == "UID FETCH":
                self._follow_uid_command(command)  # its NO can still become OK
        elif name == "STORE" and len(self._blocking) < MAX_WATCHED_FETCHES:
            mode = command.args[1] if len(command.args) > 1 else None
            silent = isinstance(mode, Atom) and mode.value.upper().endswith(b".SILENT")
            self._blocking[tag] = "STORE.SILENT" if silent else "STORE"
        elif name in _UID_COMMANDS:
            self._follow_uid_command(command)
        return None

    def _follow_uid_command(self, command: Command) -> None:
        messages = command_set(command)
        single = messages is not None and len(messages.ranges) == 1
        single = single and messages is not None and messages.ranges[0][0] == messages.ranges[0][1]
        if len(self._uid_commands) >= MAX_WATCHED_FETCHES:  # the oldest is stale
            del self._uid_commands[next(iter(self._uid_commands))]
        self._uid_commands[command.tag] = (command.name, single)

    def _new_mailbox(self, mailbox: bytes | None) -> None:
        self.mailbox.select(mailbox)
        self._fetches.clear()
        self._blocking.clear()
        self._stubbed.clear()

    # --- untagged ----------------------------------------------------------------------

    def on_untagged_line(
        self, kind: str, line: bytes, whole: bool, running: Callable[[], Collection[str]]
    ) -> bool:
        if kind == "FETCH":
            return self._fetch_line(line, whole)
        if kind == "VANISHED":
            self._vanished_line(line)
            return False
        number = _leading_number(line)
        if number is None:
            return False
        if kind == "EXISTS":
            self.mailbox.exists_now(number)
            return False
        # EXPUNGE
        if whole and self._expunge_forbidden(running) and self.mailbox.hold_expunge(line):
            return True
        self.mailbox.expunged(number)
        self._stubbed.clear()
        for watch in self._fetches.values():
            watch.expunged(number)  # a UID FETCH's held lines: numbers above shift down
        return False

    def may_keep_in_run(self, kind: str, run: bytes) -> bool:
        # Only a FETCH with the look of an upstream's stub is ever kept back.
        return kind != "FETCH" or looks_like_stub(run)

    def on_untagged_run(
        self, kind: str, run: bytes, running: Callable[[], Collection[str]]
    ) -> None:
        if kind != "FETCH":
            super().on_untagged_run(kind, run, running)
            return
        # _fetch_line for lines none of which looks like a stub: learn and mark, no keeper.
        numbers, uids = fetch_run_heads(run)
        ordered = in_order(numbers)  # asked once for the map and every watch
        self.mailbox.learn_all(numbers, uids, ordered)
        for watch in self._fetches.values():
            watch.saw_all(numbers, ordered)

    def _vanished_line(self, line: bytes) -> None:
        words = line.rstrip(b"\r\n").split(b" ")
        if len(words) != 3:  # `* VANISHED (EARLIER) uids`: not in the client's view
            return
        try:
            uids = parse_sequence_set(words[2], Side.UPSTREAM)
        except ProtocolError:
            self.mailbox.reliable = False
            return
        self.mailbox.vanished(uids)
        self._stubbed.clear()

    def _watching_blockers(self) -> bool:
        """A FETCH, STORE or SEARCH (no UID) of the client is followed, so in flight."""
        return bool(self._blocking) or any(not w.request.uid for w in self._fetches.values())

    def _expunge_forbidden(self, running: Callable[[], Collection[str]]) -> bool:
        """Whether an EXPUNGE must wait: a FETCH, STORE or SEARCH runs, or others wait."""
        names = running()
        if self._watching_blockers() and _NO_EXPUNGE_DURING.isdisjoint(names):
            # What is followed is stale (a command answered without reaching on_tagged):
            # those entries go, and the next tagged completion releases what is held.
            self._blocking.clear()
            for tag in [t for t, w in self._fetches.items() if not w.request.uid]:
                del self._fetches[tag]
        # after those already held, to keep the order
        held = bool(self.mailbox.held_expunges)
        return held or self._watching_blockers() or "SEARCH" in names

    def _fetch_line(self, line: bytes, whole: bool) -> bool:
        found = fetch_first_line(line)
        if found is None:
            return False
        number, uid = found
        self.mailbox.learn(number, uid)
        keeper: FetchWatch | None = None
        for watch in self._fetches.values():
            watch.saw(number)
            if keeper is None and watch.covers(number, uid):
                keeper = watch
        if keeper is None or not whole or not looks_expunged(line):
            return False
        return keeper.hold(number, line)

    # --- tagged ------------------------------------------------------------------------

    def on_tagged(
        self, tag: bytes, name: str, line: bytes, view: SessionView, lookup: list[bytes] | None
    ) -> TaggedOutcome | None:
        watch = self._fetches.get(tag)
        if watch is not None and name == "FETCH":
            return self._fetch_done(watch, line, lookup)
        if watch is not None and name == "UID FETCH":
            return self._uid_fetch_done(watch, line)
        blocking = self._blocking.pop(tag, None)
        if blocking is not None and blocking.startswith("STORE"):
            outcome = self._store_done(tag, blocking == "STORE.SILENT", line)
            if outcome is not None:
                return outcome
        uid_command = self._uid_commands.pop(tag, None)
        if uid_command is not None and self.uid_vanished_ok:
            outcome = self._uid_done(tag, uid_command, line)
            if outcome is not None:
                return outcome
        return self._release(b"", None, changed=False)

    def _gone(self, status: bytes, text: bytes) -> bool:
        """Whether a completion says that messages were expunged - and nothing else: a NO
        about the mailbox (`[TRYCREATE] Mailbox doesn't exist`), a quota or a right would
        make a client believe a COPY worked and delete the originals."""
        if text.startswith(b"["):
            code = text[1:].split(b"]", 1)[0].split(b" ", 1)[0].upper()
            return code == b"EXPUNGEISSUED"
        if status != b"NO" or _NOT_ABOUT_MESSAGES.search(text):
            return False
        return self.vanished_text.search(text) is not None

    def _fetch_done(
        self, watch: FetchWatch, line: bytes, lookup: list[bytes] | None
    ) -> TaggedOutcome | None:
        status, text = _status(line, watch.tag)
        gone = self._gone(status, text)
        vanished: set[int] = set()
        if gone:
            vanished |= set(watch.held)
        if gone or status == b"OK":
            vanished |= set(watch.missing())
        if not vanished:
            del self._fetches[watch.tag]
            return self._release(b"".join(watch.held.values()), None, changed=False)
        numbers = sorted(vanished)
        for number in numbers:
            held = watch.held.get(number)
            found = fetch_first_line(held) if held is not None else None
            if found is not None:
                self.mailbox.learn(*found)
        unknown = [n for n in numbers if self.mailbox.uid(n) is None]
        if unknown and lookup is None:
            return TaggedOutcome(lookup=encode_sequence_set(unknown), changed=False)
        for answer in lookup or ():
            found = fetch_first_line(answer)
            if found is not None:
                self.mailbox.learn(*found)
        del self._fetches[watch.tag]
        real = b"".join(held for n, held in watch.held.items() if n not in vanished)
        keys = [self._key(n) for n in numbers]
        if self.bye_on_repeat and any(key in self._stubbed for key in keys):
            repeated = next(n for n, key in zip(numbers, keys, strict=True) if key in self._stubbed)
            return TaggedOutcome(untagged=real, bye=_BYE_TEXT % repeated)
        self._stubbed.update(keys)
        if self.policy == "no":
            return self._release(real, watch.tag + b" " + _STUB_NO_TEXT + b"\r\n")
        stubs = b"".join(stub_fetch(n, self.mailbox.uid(n), watch.request.items) for n in numbers)
        replacement = None
        if status != b"OK" or not text.upper().startswith(_CODE_EXPUNGEISSUED):
            replacement = watch.tag + b" " + _STUB_OK_TEXT + b"\r\n"
        return self._release(real + stubs, replacement, stubs=len(numbers))

    def _key(self, number: int) -> tuple[str, int]:
        uid = self.mailbox.uid(number)
        return ("number", number) if uid is None else ("uid", uid)

    def _release(
        self, untagged: bytes, line: bytes | None, *, changed: bool = True, stubs: int = 0
    ) -> TaggedOutcome | None:
        """The outcome, with the held EXPUNGEs after everything that uses old numbers -
        unless another FETCH, STORE or SEARCH is still in flight."""
        if not self._watching_blockers():
            untagged += self.mailbox.release_expunges()
        if not untagged and line is None and not changed:
            return None
        return TaggedOutcome(untagged=untagged, line=line, changed=changed, stubs=stubs)

    def _uid_fetch_done(self, watch: FetchWatch, line: bytes) -> TaggedOutcome | None:
        """Dovecot stubs a UID it is about to report expunged (`BODY[] NIL`, then the
        EXPUNGE): RFC 9051 §6.4.9's answer is no data at all, so confirmed stubs go."""
        del self._fetches[watch.tag]
        status, text = _status(line, watch.tag)
        if not self._gone(status, text):
            real = b"".join(watch.held.values())
            return self._release(real, None, changed=watch.dropped > 0)
        replacement = None
        if status == b"NO" and self.uid_vanished_ok:
            replacement = watch.tag + b" OK " + text + b"\r\n"
        if not watch.held and not watch.dropped and replacement is None:
            return None
        return self._release(b"", replacement)

    def _store_done(self, tag: bytes, silent: bool, line: bytes) -> TaggedOutcome | None:
        """RFC 2180 §4.2: a STORE touching expunged messages answered NO (4.1.2 servers)
        becomes OK when silent, and with `policy: stub` when not: flags on a message that
        is gone change nothing, and clients treat the NO as an error."""
        status, text = _status(line, tag)
        if status != b"NO" or not self._gone(status, text):
            return None
        if not silent and self.policy == "no":
            return None
        return self._release(b"", tag + b" OK " + text + b"\r\n")

    def _uid_done(self, tag: bytes, command: tuple[str, bool], line: bytes) -> TaggedOutcome | None:
        name, single = command
        status, text = _status(line, tag)
        if status != b"NO" or not self._gone(status, text):
            return None
        if name in _SINGLE_UID_ONLY and not single:
            return None  # part of the set may exist, and a NO copied none of it
        return TaggedOutcome(line=tag + b" OK " + text + b"\r\n")


def _leading_number(line: bytes) -> int | None:
    word = line[2:].split(b" ", 1)[0]
    return int(word) if word.isdigit() and len(word) <= 10 else None
