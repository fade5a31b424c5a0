"""Delete semantics: Outlook's struck-through deletion as a move to Trash, client-driven
moves told apart from deletions, and EXPUNGE scoped to what this session deleted.

How this works:
* `DeleteToTrash` answers a `STORE`/`UID STORE +FLAGS[.SILENT] (\\Deleted)` (that flag
  alone) in a mailbox other than the trash with an `Emulate` that moves the messages to the
  trash instead: the upstream's own `[UID] MOVE` when it has MOVE, else the MOVE emulation's
  script (`move.move_script`, UIDPLUS only). The client sees what a MOVE shows - the
  `* n EXPUNGE` lines - and its STORE completes OK. The trash is the mailbox a LIST showed
  with `\\Trash` (the session is asked to learn the list first when it knows none), else
  the rule's `trash_folder`. If the move fails, the client's own STORE is sent after all
  (it asked for \\Deleted; nothing is lost) and its answer says the move failed.
* A client that moves by `COPY set X` and then `STORE set +FLAGS (\\Deleted)` - the same
  set, with no other command in between - has the messages in X already: with
  `client_moves: keep-flag` that STORE stays a plain flag. The action remembers the last
  COPY (its set and tag) and forgets it at any other command's completion, or when the
  STORE comes while another command is in flight.
* `ScopeExpunge` (needs UIDPLUS) keeps, per mailbox, the UIDs this session flagged
  \\Deleted with STORE or UID STORE (and drops those it un-flagged). Message numbers are
  turned into UIDs with a `MailboxState` (the stub-FETCH rule's model of the client's
  view, fed the same way: FETCH first lines, EXISTS, EXPUNGE, VANISHED); when one is not
  known, the proxy asks `FETCH set (UID)` first and then sends the client's STORE. A
  plain `EXPUNGE` becomes `UID EXPUNGE <those UIDs>` (none: OK at once, nothing goes
  upstream), so another device's \\Deleted messages stay. `CLOSE` becomes `UID EXPUNGE`
  of the same set (its EXPUNGE lines are not the client's: CLOSE sends none), then
  `UNSELECT`, or, upstream without UNSELECT, an `EXAMINE` of a mailbox that cannot exist
  (a failed EXAMINE leaves nothing selected, RFC 3501 §6.3.2); the client gets CLOSE OK.
  A `UID STORE` with `*` counts up to the largest UID learnt; UIDs never learnt are never
  expunged: in doubt a message stays. UIDs count from the STORE command (an EXPUNGE
  pipelined behind it includes them); a STORE the upstream refuses takes back the UIDs it
  added (when its completion reaches this action: the stub-FETCH rule may decide it
  first). In a mailbox opened with EXAMINE both commands go upstream unchanged. Known
  limit: a STORE that `DeleteToTrash` answered (its plain-flag fallback) is not counted,
  so such a message stays flagged rather than expunged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING

from imap_proxy.quirks.actions.base import (
    Action,
    Emulate,
    EmulationAnswer,
    LocalAnswer,
    Rewrite,
    Script,
    StepResult,
    TaggedOutcome,
    UpstreamCommand,
)
from imap_proxy.quirks.actions.move import UIDPLUS, _fetched_uids, move_script
from imap_proxy.quirks.actions.uidset import SEQUENCE_SET, UidSet
from imap_proxy.quirks.model import DeleteToTrashAction, ScopeExpungeAction
from imap_proxy.session.mailbox import MailboxState, fetch_first_line
from imap_proxy.wire.command import Command
from imap_proxy.wire.encode import mailbox_value
from imap_proxy.wire.errors import ProtocolError, Side
from imap_proxy.wire.syntax import Atom, ParenList, Quoted, Value, mailbox_bytes, parse_sequence_set

if TYPE_CHECKING:
    from imap_proxy.quirks.engine import SessionView

_DELETED = b"\\DELETED"
_EXPUNGE_LINE = re.compile(rb"(?i)^\* \d+ EXPUNGE$")
_MAX_MAILBOXES = 64  # mailboxes whose deleted UIDs a session remembers


def _store_parts(command: Command) -> tuple[bytes, bytes, list[bytes]] | None:
    """(set, mode in upper case, flags in upper case) of a STORE without modifiers."""
    if len(command.args) != 3:
        return None
    sequence, mode, flags = command.args
    if not isinstance(sequence, Atom) or not SEQUENCE_SET.match(sequence.value):
        return None
    if not isinstance(mode, Atom):
        return None
    items: Iterable[Value] = flags.items if isinstance(flags, ParenList) else (flags,)
    names = [item.value.upper() for item in items if isinstance(item, Atom)]
    return sequence.value, mode.value.upper(), names


def _same_mailbox(a: bytes, b: bytes) -> bool:
    return a == b or (a.upper() == b"INBOX" and b.upper() == b"INBOX")


def _without_copyuid(untagged: Iterable[bytes]) -> bytes:
    """The lines minus `* OK [COPYUID ...]`: the client asked for a STORE, not a MOVE."""
    return b"".join(line for line in untagged if not line.upper().startswith(b"* OK [COPYUID "))


def _has_expunge(untagged: bytes) -> bool:
    return any(_EXPUNGE_LINE.match(line) for line in untagged.splitlines())


_MOVED_TEXT = b"OK STORE completed: moved to the trash"


class DeleteToTrash(Action):
    kind = "delete_to_trash"
    commands = frozenset(
        {"SELECT", "EXAMINE", "CLOSE", "UNSELECT", "STORE", "UID STORE", "COPY", "UID COPY"}
    )
    watches_tagged = True  # only to forget the last COPY when another command completes

    def __init__(self, rule_id: str, spec: DeleteToTrashAction) -> None:
        super().__init__(rule_id)
        self.trash_folder = None if spec.trash_folder is None else spec.trash_folder.encode()
        self.keep_client_moves = spec.client_moves == "keep-flag"
        self.selected: bytes | None = None
        self.read_only = False
        self._copied: tuple[bytes, bool, UidSet | bytes] | None = None  # (tag, uid, set)
        self._asked_for_list = False

    def trash(self, view: SessionView) -> bytes | None:
        for name, attributes in view.mailbox_attributes.items():
            if "\\trash" in attributes:
                return name
        return self.trash_folder

    def _deletes(self, command: Command) -> bool:
        """A `+FLAGS[.SILENT] (\\Deleted)` STORE: that flag alone (others would be lost)."""
        parts = _store_parts(command)
        if parts is None:
            return False
        _set, mode, flags = parts
        return mode in (b"+FLAGS", b"+FLAGS.SILENT") and flags == [_DELETED]

    def wants_mailbox_list(self, command: Command, view: SessionView) -> bool:
        if command.name not in ("STORE", "UID STORE") or self._asked_for_list:
            return False
        if not view.authenticated or view.mailbox_attributes or not self._deletes(command):
            return False
        self._asked_for_list = True  # once: a list without \Trash will not grow one
        return True

    def on_command(
        self, command: Command, view: SessionView
    ) -> Rewrite | LocalAnswer | Emulate | None:
        name = command.name
        copied, self._copied = self._copied, None
        if name in ("SELECT", "EXAMINE"):
            self.selected = mailbox_bytes(command.args[0]) if command.args else None
            self.read_only = name == "EXAMINE"
            return None
        if name in ("CLOSE", "UNSELECT"):
            self.selected = None
            return None
        if name in ("COPY", "UID COPY"):
            if command.args and isinstance(command.args[0], Atom):
                self._copied = (command.tag, command.uid, _set_key(command.args[0].value))
            return None
        if not self._deletes(command):
            return None
        if self.keep_client_moves and copied is not None and self._moving(copied, command, view):
            return None  # COPY + \Deleted: the client's own move, already in the target
        trash = self.trash(view)
        if trash is None or self.selected is None or self.read_only or not view.authenticated:
            return None
        if _same_mailbox(self.selected, trash):
            return None  # deleting in the trash: a plain flag, as the client asked
        if view.has_upstream("MOVE"):
            script = _native_move(command, mailbox_value(trash))
        elif view.has_upstream("UIDPLUS"):
            script = _emulated_move(command, mailbox_value(trash))
        else:
            return None  # no safe move: the flag stays a flag
        return Emulate(script, self.rule_id, "delete_to_trash")

    def _moving(
        self, copied: tuple[bytes, bool, UidSet | bytes], command: Command, view: SessionView
    ) -> bool:
        tag, uid, copied_set = copied
        sequence = command.args[0]
        assert isinstance(sequence, Atom)  # _deletes checked it
        if uid != command.uid or copied_set != _set_key(sequence.value):
            return False
        # Nothing else may run meanwhile (a FETCH FLAGS or NOOP is the user looking).
        return all(running == tag for running, _verb in view.client_commands())

    def on_tagged(
        self, tag: bytes, name: str, line: bytes, view: SessionView, lookup: list[bytes] | None
    ) -> TaggedOutcome | None:
        if self._copied is not None and self._copied[0] != tag:
            self._copied = None  # another command ran after the COPY
        return None


def _set_key(sequence: bytes) -> UidSet | bytes:
    """A set compared by meaning (`1,2` is `1:2`) when explicit, else by its text."""
    parsed = UidSet.parse(sequence)
    return parsed if parsed is not None else sequence


def _native_move(command: Command, trash: Value) -> Script:
    verb = "UID MOVE" if command.uid else "MOVE"
    move = yield UpstreamCommand(verb, (command.args[0], trash))
    if move.status == "OK":
        return EmulationAnswer(_without_copyuid(move.untagged), _MOVED_TEXT, "ok")
    failed = move.status.encode() + b" " + (move.text or b"Failed")
    return (yield from _plain_store(command, b"".join(move.untagged), failed))


def _emulated_move(command: Command, trash: Value) -> Script:
    sequence = command.args[0]
    assert isinstance(sequence, Atom)
    moved = yield from move_script(sequence.value, trash, uid=command.uid, plan=UIDPLUS)
    if moved.outcome == "ok":
        return EmulationAnswer(_without_copyuid(moved.untagged.splitlines(True)), _MOVED_TEXT, "ok")
    return (yield from _plain_store(command, moved.untagged, moved.status_text))


def _plain_store(command: Command, before: bytes, failed: bytes) -> Script:
    """The move failed: the client's own STORE after all (it asked for \\Deleted)."""
    if not command.uid and _has_expunge(before):
        # Numbers moved under the client's feet: its set no longer means the same messages.
        text = b"NO Moving to the trash failed (" + failed + b"); nothing was flagged"
        return EmulationAnswer(before, text, "failed")
    store = yield UpstreamCommand(command.name, command.args)
    untagged = before + b"".join(store.untagged)
    note = b" (moving to the trash failed: " + failed + b")"
    if store.status == "OK":
        return EmulationAnswer(untagged, b"OK STORE completed" + note, "fell_back")
    status = b"BAD" if store.status == "BAD" else b"NO"
    return EmulationAnswer(untagged, status + b" " + (store.text or b"Failed") + note, "failed")


# --- expunge scoping --------------------------------------------------------------------


def _union(a: UidSet, b: UidSet) -> UidSet:
    return UidSet._merged((*a.ranges, *b.ranges))


def _minus(a: UidSet, b: UidSet) -> UidSet:
    """The UIDs of `a` not in `b`, range by range (never expanded)."""
    out: list[tuple[int, int]] = []
    for low, high in a.ranges:
        start = low
        for b_low, b_high in b.ranges:
            if b_high < start or b_low > high:
                continue
            if b_low > start:
                out.append((start, b_low - 1))
            start = max(start, b_high + 1)
            if start > high:
                break
        if start <= high:
            out.append((start, high))
    return UidSet(tuple(out))


class ScopeExpunge(Action):
    kind = "scope_expunge"
    commands = frozenset(
        {"SELECT", "EXAMINE", "CLOSE", "UNSELECT", "STORE", "UID STORE", "EXPUNGE"}
    )
    observes = frozenset({"FETCH", "EXISTS", "EXPUNGE", "VANISHED"})
    watches_tagged = True  # a STORE the upstream refused flagged nothing

    def __init__(self, rule_id: str, spec: ScopeExpungeAction) -> None:
        super().__init__(rule_id)
        self.unselect_mailbox = spec.unselect_mailbox.encode()
        self.mailbox = MailboxState()
        self.read_only = False
        self.deleted: dict[bytes, UidSet] = {}  # mailbox -> UIDs this session flagged
        # STOREs in flight: tag -> (mailbox, the UIDs they added), taken back on NO/BAD
        self._in_flight: dict[bytes, tuple[bytes, UidSet]] = {}

    @property
    def mine(self) -> UidSet:
        selected = self.mailbox.selected
        return self.deleted.get(selected, UidSet(())) if selected is not None else UidSet(())

    def _set_mine(self, uids: UidSet) -> None:
        selected = self.mailbox.selected
        if selected is None:
            return
        if selected not in self.deleted and len(self.deleted) >= _MAX_MAILBOXES:
            del self.deleted[next(iter(self.deleted))]
        self.deleted[selected] = uids

    # --- commands ------------------------------------------------------------------

    def on_command(
        self, command: Command, view: SessionView
    ) -> Rewrite | LocalAnswer | Emulate | None:
        name = command.name
        if name in ("SELECT", "EXAMINE"):
            self.mailbox.select(mailbox_bytes(command.args[0]) if command.args else None)
            self.read_only = name == "EXAMINE"
            return None
        if name == "UNSELECT":
            self.mailbox.select(None)
            return None
        if not view.authenticated or not view.has_upstream("UIDPLUS") or self.read_only:
            return None  # read-only: EXPUNGE is refused and CLOSE expunges nothing upstream
        if name == "EXPUNGE" and not command.args and self.mailbox.selected is not None:
            return self._expunge()
        if name == "CLOSE" and not command.args and self.mailbox.selected is not None:
            uids = self.mine
            self._set_mine(UidSet(()))
            self.mailbox.select(None)
            unselect = view.has_upstream("UNSELECT")
            script = _close_script(uids, None if unselect else self.unselect_mailbox)
            return Emulate(script, self.rule_id, "scope_close")
        if name in ("STORE", "UID STORE"):
            return self._store(command)
        return None

    def _expunge(self) -> LocalAnswer | Emulate:
        uids = self.mine
        if not uids:
            return LocalAnswer(b"", b"OK EXPUNGE completed (no message this session deleted)")
        self._set_mine(UidSet(()))
        return Emulate(_expunge_script(self, uids), self.rule_id, "scope_expunge")

    def _store(self, command: Command) -> Emulate | None:
        parts = _store_parts(command)
        if parts is None or self.mailbox.selected is None:
            return None
        sequence, mode, flags = parts
        sign = mode[:1] if mode[:1] in (b"+", b"-") else b""
        if _DELETED not in flags and sign:
            return None  # \Deleted is neither set nor taken off
        adds = _DELETED in flags and sign != b"-"
        if command.uid:
            self._note(self._uids_of(sequence), adds=adds, tag=command.tag)
            return None
        uids, unknown = self._numbers_to_uids(sequence)
        if unknown and adds:
            return Emulate(_learn_then_store(self, command, adds), self.rule_id, "scope_store")
        self._note(uids, adds=adds, tag=command.tag)
        return None

    def _note(self, uids: UidSet | None, *, adds: bool, tag: bytes | None = None) -> None:
        if uids is None:
            return
        before = self.mine
        self._set_mine(_union(before, uids) if adds else _minus(before, uids))
        selected = self.mailbox.selected
        if adds and tag is not None and selected is not None:
            if len(self._in_flight) >= _MAX_MAILBOXES:  # the oldest is stale
                del self._in_flight[next(iter(self._in_flight))]
            self._in_flight[tag] = (selected, _minus(uids, before))

    def on_tagged(
        self, tag: bytes, name: str, line: bytes, view: SessionView, lookup: list[bytes] | None
    ) -> TaggedOutcome | None:
        added = self._in_flight.pop(tag, None)
        status = line[len(tag) + 1 :].split(b" ", 1)[0].upper()
        if added is not None and status in (b"NO", b"BAD"):
            mailbox, uids = added
            if mailbox in self.deleted:
                self.deleted[mailbox] = _minus(self.deleted[mailbox], uids)
        return None

    def _largest_uid(self) -> int:
        return max((self.mailbox.uid(n) or 0 for n in range(1, self.mailbox.exists + 1)), default=0)

    def _uids_of(self, sequence: bytes) -> UidSet | None:
        """An explicit UID set; `*` counts as the largest UID learnt (none: nothing)."""
        if b"*" in sequence:
            largest = self._largest_uid()
            if not largest:
                return None
            sequence = sequence.replace(b"*", b"%d" % largest)
        return UidSet.parse(sequence)

    def _numbers_to_uids(self, sequence: bytes) -> tuple[UidSet, list[int]]:
        """The UIDs of these message numbers, and the numbers whose UID is not known."""
        try:
            numbers = parse_sequence_set(sequence, Side.CLIENT)
        except ProtocolError:
            return UidSet(()), []
        found: list[int] = []
        unknown: list[int] = []
        exists = self.mailbox.exists
        for low, high in numbers.bounds(exists):
            for number in range(max(low, 1), min(high, exists) + 1):
                uid = self.mailbox.uid(number)
                if uid is None:
                    unknown.append(number)
                else:
                    found.append(uid)
        return UidSet.of(found), unknown

    # --- untagged ------------------------------------------------------------------

    def may_keep_in_run(self, kind: str, run: bytes) -> bool:
        return False  # it only learns from what passes

    def on_untagged_line(
        self, kind: str, line: bytes, whole: bool, running: Callable[[], Collection[str]]
    ) -> bool:
        if kind == "FETCH":
            found = fetch_first_line(line)
            if found is not None:
                self.mailbox.learn(*found)
            return False
        words = line.rstrip(b"\r\n").split(b" ")
        if kind == "VANISHED":
            if len(words) == 3:  # `* VANISHED (EARLIER) uids` is not the client's view
                try:
                    self.mailbox.vanished(parse_sequence_set(words[2], Side.UPSTREAM))
                except ProtocolError:
                    self.mailbox.reliable = False
            return False
        if len(words) < 3 or not words[1].isdigit() or len(words[1]) > 10:
            return False
        if kind == "EXISTS":
            self.mailbox.exists_now(int(words[1]))
        elif kind == "EXPUNGE":
            self.mailbox.expunged(int(words[1]))
        return False


def _learn_then_store(action: ScopeExpunge, command: Command, adds: bool) -> Script:
    """`FETCH set (UID)` for the numbers whose UID is not known, then the client's STORE."""
    sequence = command.args[0]
    assert isinstance(sequence, Atom)
    fetch = yield UpstreamCommand("FETCH", (sequence, ParenList((Atom(b"UID"),))))
    found, passed = _fetched_uids(fetch.untagged, sequence.value, by_uid=False)
    for line in fetch.untagged:
        learnt = fetch_first_line(line)
        if learnt is not None:
            action.mailbox.learn(*learnt)
    store = yield UpstreamCommand(command.name, command.args)
    if store.status == "OK":
        action._note(found, adds=adds)
    outcome = "ok" if store.status == "OK" else "failed"
    return EmulationAnswer(passed + b"".join(store.untagged), _relayed(store), outcome)


def _relayed(result: StepResult) -> bytes:
    if result.status in ("OK", "NO", "BAD"):
        return result.status.encode() + b" " + (result.text or b"Completed")
    return b"NO " + (result.text or b"Failed")


def _expunge_script(action: ScopeExpunge, uids: UidSet) -> Script:
    expunge = yield UpstreamCommand("UID EXPUNGE", (Atom(bytes(uids)),))
    untagged = b"".join(expunge.untagged)
    if expunge.status != "OK":
        action._note(uids, adds=True)  # still this session's, for its next EXPUNGE
        return EmulationAnswer(untagged, _relayed(expunge), "failed")
    # The upstream's text: with CONDSTORE it carries the new [HIGHESTMODSEQ].
    return EmulationAnswer(untagged, _relayed(expunge), "ok")


def _close_script(uids: UidSet, examine: bytes | None) -> Script:
    """UID EXPUNGE of this session's deletions, then leave the mailbox without expunging."""
    out = bytearray()
    if uids:
        expunge = yield UpstreamCommand("UID EXPUNGE", (Atom(bytes(uids)),))
        # CLOSE sends no EXPUNGE responses (RFC 9051 §6.4.1): the client forgets the mailbox.
        out += b"".join(line for line in expunge.untagged if not _has_expunge(line))
        if expunge.status != "OK":
            return EmulationAnswer(bytes(out), b"NO CLOSE failed: " + _relayed(expunge), "failed")
    if examine is None:
        leave = yield UpstreamCommand("UNSELECT", ())
        left = leave.status == "OK"
    else:
        leave = yield UpstreamCommand("EXAMINE", (Quoted(examine),))
        left = leave.status != "BAD"  # NO (no such mailbox) is the expected outcome
    out += b"".join(line for line in leave.untagged if not _has_expunge(line))
    if not left:
        return EmulationAnswer(bytes(out), b"NO CLOSE failed: " + _relayed(leave), "failed")
    return EmulationAnswer(bytes(out), b"OK CLOSE completed", "ok")
