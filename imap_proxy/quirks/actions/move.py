"""MOVE and UID MOVE (RFC 6851) for an upstream without MOVE, as a script of upstream commands.

How this works: `EmulateMove` advertises MOVE and answers MOVE/UID MOVE with an `Emulate`
whose script (`move_script`) the session runs while no other command is in flight:

* A sequence-number MOVE is first turned into UIDs with `FETCH <set> (UID)` (the client's
  numbers are the upstream's: the session relays EXPUNGE as it comes). So is a UID MOVE
  when the upstream lacks UIDPLUS (`UID FETCH <set> (UID)`), to make the set explicit.
  FETCH, not `UID SEARCH <set>`: GNU imap4d reads a sequence set in UID SEARCH as UIDs.
  Only responses for numbers (UIDs) in the set count, with `*` the largest one seen, so
  an unsolicited FETCH of another message cannot slip in; others go to the client.
* With UIDPLUS: `UID COPY set dest` -> `UID STORE moved +FLAGS.SILENT (\\Deleted)` ->
  `UID EXPUNGE moved`, where `moved` is the source set of the COPY's `[COPYUID]` (what was
  really copied; never a `*` that could take in a message arriving meanwhile). The client
  sees a native MOVE: `* OK [COPYUID v src dst] Moved UIDs.`, then the `* n EXPUNGE`
  lines, then the tagged OK; FETCH echoes of the STORE for the moved UIDs are dropped
  (RFC 6851 §3.3: no STORE responses), every other untagged line is passed on. UID
  EXPUNGE limits the expunge to the moved UIDs: messages another session flagged
  \\Deleted stay.
* Without UIDPLUS (`mode`): `copy-and-flag` copies, then flags the originals \\Deleted
  with a visible STORE (the client sees the flag; expunging is left to it); `rfc4315`
  does RFC 4315 §2.1's dance: `UID SEARCH DELETED`, un-flag the others, `EXPUNGE`,
  re-flag them. It is racy: a message another session flags \\Deleted between the
  SEARCH and the EXPUNGE is expunged too, and one it un-flags meanwhile is flagged
  again. Hence opt-in. `off` advertises nothing and passes MOVE through.

A COPY that fails ends the script with its answer ([TRYCREATE] included): nothing else
happened. A failure after the COPY is rolled back as far as one session can: the
originals lose \\Deleted again (`UID STORE moved -FLAGS.SILENT (\\Deleted)`) and the
client gets NO saying so (a moved message that was \\Deleted before the MOVE loses that
flag too: kept rather than lost). The copies stay in the target: removing them would mean
selecting the target, which loses the client's selected mailbox. At no point is a
message in neither mailbox: it is flagged only once its copy exists, and expunged only
by UID among the copied ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from imap_proxy.quirks.actions.base import (
    Action,
    Emulate,
    EmulationAnswer,
    LocalAnswer,
    Rewrite,
    Script,
    StepResult,
    UpstreamCommand,
)
from imap_proxy.quirks.actions.uidset import SEQUENCE_SET, UidSet
from imap_proxy.quirks.model import MoveEmulationAction
from imap_proxy.wire.command import Command
from imap_proxy.wire.errors import ProtocolError
from imap_proxy.wire.message import Message
from imap_proxy.wire.response import FetchData, StatusResponse, parse_response
from imap_proxy.wire.syntax import Atom, LiteralString, Nil, ParenList, Quoted, Value

if TYPE_CHECKING:
    from imap_proxy.quirks.engine import SessionView

UIDPLUS = "uidplus"
_DELETED = ParenList((Atom(b"\\Deleted"),))
_ECHO_ITEMS = frozenset({"UID", "FLAGS", "MODSEQ"})
_BAD_ARGUMENTS = b"BAD Invalid arguments: MOVE takes a sequence set and a mailbox"


class EmulateMove(Action):
    shared = True  # configuration only
    kind = "emulate_move"
    commands = frozenset({"MOVE", "UID MOVE"})

    def __init__(self, rule_id: str, spec: MoveEmulationAction) -> None:
        super().__init__(rule_id)
        self.mode = spec.mode

    def plan(self, view: SessionView) -> str | None:
        """How MOVE is emulated for this upstream: "uidplus", a `mode`, or None (not).

        Not before login: servers list only part of their capabilities then (Dovecot
        shows neither MOVE nor UIDPLUS), and clients ask again after login."""
        if not view.authenticated or view.has_upstream("MOVE"):
            return None
        if view.has_upstream("UIDPLUS"):
            return UIDPLUS
        return None if self.mode == "off" else self.mode

    def capabilities(self, caps: list[str], view: SessionView) -> list[str]:
        if self.plan(view) is None or any(cap.upper() == "MOVE" for cap in caps):
            return caps
        return [*caps, "MOVE"]

    def on_command(
        self, command: Command, view: SessionView
    ) -> Rewrite | LocalAnswer | Emulate | None:
        plan = self.plan(view)
        if plan is None:
            return None
        if len(command.args) != 2:
            return LocalAnswer(b"", _BAD_ARGUMENTS)
        sequence, mailbox = command.args
        if not isinstance(sequence, Atom) or not SEQUENCE_SET.match(sequence.value):
            return LocalAnswer(b"", _BAD_ARGUMENTS)
        if not _is_mailbox(mailbox):
            return LocalAnswer(b"", _BAD_ARGUMENTS)
        script = move_script(sequence.value, mailbox, uid=command.uid, plan=plan)
        return Emulate(script, self.rule_id, "move")


def _is_mailbox(value: Value) -> bool:
    if isinstance(value, LiteralString):
        return value.value is not None
    return isinstance(value, Atom | Quoted | Nil)


def move_script(sequence: bytes, mailbox: Value, *, uid: bool, plan: str) -> Script:
    """The upstream commands of one MOVE; see the module docstring."""
    out = bytearray()
    resolved: UidSet | None = None
    if uid and plan == UIDPLUS:
        copy_set = sequence
    else:
        verb = "UID FETCH" if uid else "FETCH"
        fetch = yield UpstreamCommand(verb, (Atom(sequence), ParenList((Atom(b"UID"),))))
        found, passed = _fetched_uids(fetch.untagged, sequence, by_uid=uid)
        out += passed
        if fetch.status != "OK":
            return EmulationAnswer(bytes(out), _relayed_status(fetch), "failed")
        if not found:
            return EmulationAnswer(bytes(out), b"OK No messages to move", "ok")
        resolved = found
        copy_set = bytes(resolved)
    copy = yield UpstreamCommand("UID COPY", (Atom(copy_set), mailbox))
    out += b"".join(copy.untagged)
    if copy.status != "OK":
        return EmulationAnswer(bytes(out), _relayed_status(copy), "failed")
    copyuid = _copyuid(copy.line)
    if copyuid is not None:
        validity, source, target = copyuid
        moved = UidSet.parse(source)
        assert moved is not None  # _copyuid checked it
        if plan == UIDPLUS:
            out += b"* OK [COPYUID %s %s %s] Moved UIDs.\r\n" % (validity, source, target)
    elif resolved is not None:
        moved = resolved
    else:
        # UID COPY said OK without COPYUID: nothing was there to copy (RFC 9051 §6.4.9).
        return EmulationAnswer(bytes(out), b"OK No messages were moved", "ok")

    visible = plan == "copy-and-flag"
    flag = yield _store(moved, b"+FLAGS" if visible else b"+FLAGS.SILENT")
    out += b"".join(flag.untagged) if visible else _without_echoes(flag.untagged, moved)
    if flag.status != "OK":
        return (yield from _roll_back(out, moved, flag))
    if visible:
        text = b"OK Move completed: the originals are flagged \\Deleted, not expunged"
        return EmulationAnswer(bytes(out), text, "ok")
    if plan == UIDPLUS:
        expunge = yield UpstreamCommand("UID EXPUNGE", (Atom(bytes(moved)),))
        out += b"".join(expunge.untagged)
        if expunge.status != "OK":
            return (yield from _roll_back(out, moved, expunge))
        # RFC 6851 §4.4: with CONDSTORE the MOVE carries the new HIGHESTMODSEQ.
        code = expunge.text.split(b"]", 1)[0] + b"] " if _has_modseq(expunge) else b""
        return EmulationAnswer(bytes(out), b"OK " + code + b"Move completed", "ok")
    return (yield from _expunge_rfc4315(out, moved))


def _has_modseq(result: StepResult) -> bool:
    return result.text.upper().startswith(b"[HIGHESTMODSEQ ") and b"]" in result.text


def _expunge_rfc4315(out: bytearray, moved: UidSet) -> Script:
    """RFC 4315 §2.1: keep others' \\Deleted messages out of a mailbox-wide EXPUNGE."""
    search = yield UpstreamCommand("UID SEARCH", (Atom(b"DELETED"),))
    deleted, passed = _search_result(search.untagged)
    out += passed
    if search.status != "OK":
        return (yield from _roll_back(out, moved, search))
    others = UidSet.of(u for u in deleted if u not in moved)
    note = b""
    if others:
        unflag = yield _store(others, b"-FLAGS.SILENT")
        out += _without_echoes(unflag.untagged, others)
        if unflag.status != "OK":
            reflag = yield _store(others, b"+FLAGS.SILENT")
            out += _without_echoes(reflag.untagged, others)
            return (yield from _roll_back(out, moved, unflag, _reflag_note(reflag, others)))
    expunge = yield UpstreamCommand("EXPUNGE", ())
    out += b"".join(expunge.untagged)
    if others:
        reflag = yield _store(others, b"+FLAGS.SILENT")
        out += _without_echoes(reflag.untagged, others)
        note = _reflag_note(reflag, others)
    if expunge.status != "OK":
        return (yield from _roll_back(out, moved, expunge, note))
    return EmulationAnswer(bytes(out), b"OK Move completed" + note, "ok")


def _reflag_note(reflag: StepResult, others: UidSet) -> bytes:
    """What the client must be told if other messages could not get \\Deleted back."""
    if reflag.status == "OK":
        return b""
    return b"; re-flagging \\Deleted failed for UIDs " + bytes(others)


def _roll_back(out: bytearray, moved: UidSet, failed: StepResult, note: bytes = b"") -> Script:
    """A step after the COPY failed: take \\Deleted off the originals again."""
    undo = yield _store(moved, b"-FLAGS.SILENT")
    out += _without_echoes(undo.untagged, moved)
    reason = b"MOVE failed (" + _relayed_status(failed) + b")"
    if undo.status == "OK":
        text = b"NO " + reason + b"; the messages stay in the source mailbox, copies remain"
        return EmulationAnswer(bytes(out), text + b" in the target" + note, "rolled_back")
    text = b"NO " + reason + b"; the originals are flagged \\Deleted, copies are in the target"
    return EmulationAnswer(bytes(out), text + note, "failed")


def _store(uids: UidSet, how: bytes) -> UpstreamCommand:
    return UpstreamCommand("UID STORE", (Atom(bytes(uids)), Atom(how), _DELETED))


def _relayed_status(result: StepResult) -> bytes:
    """The upstream's status and text, as the client's answer (NO unless BAD)."""
    status = result.status.encode() if result.status in ("NO", "BAD") else b"NO"
    return status + b" " + (result.text or b"Failed")


def _fetched_uids(
    untagged: Iterable[bytes], sequence: bytes, *, by_uid: bool
) -> tuple[UidSet, bytes]:
    """The UIDs a `[UID] FETCH <sequence> (UID)` reported, and the lines to pass on."""
    seen: list[tuple[int, int, bytes, bool]] = []  # (number, uid, line, only UID)
    passed = bytearray()
    for line in untagged:
        data = _parsed_fetch(line)
        uid = None if data is None else data.get("UID")
        if data is None or not isinstance(uid, Atom) or not uid.value.isdigit():
            passed += line
            continue
        only_uid = all(name == "UID" for name, _value in data.items)
        seen.append((data.number, int(uid.value), line, only_uid))
    if not seen:
        return UidSet(()), bytes(passed)
    keys = [value if by_uid else number for number, value, _line, _only in seen]
    wanted = UidSet.parse(sequence.replace(b"*", b"%d" % max(keys)))
    found: list[int] = []
    for key, (_number, value, line, only_uid) in zip(keys, seen, strict=True):
        if wanted is None or key in wanted:  # None: `$`, the saved search result
            found.append(value)
            if not only_uid:
                passed += line  # our UID plus someone's flag change: the client sees it
        else:
            passed += line
    return UidSet.of(found), bytes(passed)


def _parsed_fetch(line: bytes) -> FetchData | None:
    if b"FETCH" not in line[:32].upper():
        return None
    try:
        response = parse_response(Message.from_line(line))
    except ProtocolError:
        return None
    return response if isinstance(response, FetchData) else None


def _search_result(untagged: Iterable[bytes]) -> tuple[list[int], bytes]:
    """The numbers of `* SEARCH` lines, and the other lines (to pass on)."""
    found: list[int] = []
    passed = bytearray()
    for line in untagged:
        words = line.rstrip(b"\r\n").split(b" ")
        if len(words) >= 2 and words[1].upper() == b"SEARCH":
            for word in words[2:]:
                if not word.isdigit():
                    break  # `(MODSEQ n)` and beyond
                found.append(int(word))
        else:
            passed += line
    return found, bytes(passed)


def _copyuid(line: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(uidvalidity, source set, target set) of a `[COPYUID ...]` code, if it is sound."""
    try:
        response = parse_response(Message.from_line(line))
    except ProtocolError:
        return None
    if not isinstance(response, StatusResponse) or response.code is None:
        return None
    code = response.code
    if code.name != "COPYUID" or isinstance(code.args, bytes) or len(code.args) != 3:
        return None
    if not all(isinstance(arg, Atom) for arg in code.args):
        return None
    validity, source, target = (arg.value for arg in code.args if isinstance(arg, Atom))
    if not validity.isdigit() or UidSet.parse(source) is None or UidSet.parse(target) is None:
        return None
    return validity, source, target


def _without_echoes(untagged: Iterable[bytes], uids: UidSet) -> bytes:
    """The lines minus FETCH responses that only echo our own flag change of `uids`."""
    kept = bytearray()
    for line in untagged:
        if not _is_echo(line, uids):
            kept += line
    return bytes(kept)


def _is_echo(line: bytes, uids: UidSet) -> bool:
    response = _parsed_fetch(line)
    if response is None:
        return False
    uid = response.get("UID")
    if not isinstance(uid, Atom) or not uid.value.isdigit() or int(uid.value) not in uids:
        return False
    return all(name in _ECHO_ITEMS for name, _value in response.items)
