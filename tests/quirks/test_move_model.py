"""The MOVE script against a simulated two-mailbox server, with any step failing.

A small model of an IMAP server (a selected source mailbox and a target, UIDs, \\Deleted
flags, COPY/STORE/FETCH/SEARCH/EXPUNGE semantics) answers the script's commands; any of
them may be refused (NO, no effect). Whatever fails, hypothesis checks the invariants:
no message is ever in neither mailbox, messages not asked for are untouched, an OK means
moved (or, in copy-and-flag mode, copied and flagged), and a roll-back leaves the
originals unflagged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from imap_proxy.quirks.actions import EmulationAnswer, StepResult
from imap_proxy.quirks.actions.move import move_script
from imap_proxy.quirks.actions.uidset import UidSet
from imap_proxy.wire.encode import encode_command
from imap_proxy.wire.syntax import Atom

PLANS = ["uidplus", "copy-and-flag", "rfc4315"]


@dataclass
class Server:
    source: list[tuple[int, bool]]  # (uid, \Deleted) in sequence order
    refuse: set[int]  # indices of commands answered NO
    uidplus: bool
    target: list[tuple[int, int, bool]] = field(default_factory=list)  # (origin uid, uid, del)
    commands: int = 0

    def run(self, line: bytes) -> StepResult:
        words = line.rstrip(b"\r\n").split(b" ")[1:]
        index, self.commands = self.commands, self.commands + 1
        if index in self.refuse:
            return StepResult("NO", b"t NO refused\r\n", ())
        verb = b" ".join(words[:2]) if words[0] == b"UID" else words[0]
        uids = [uid for uid, _deleted in self.source]
        if verb in (b"FETCH", b"UID FETCH"):
            keys = uids if verb == b"UID FETCH" else list(range(1, len(uids) + 1))
            wanted = UidSet.parse(words[-2].replace(b"*", b"%d" % max(keys or [1])))
            assert wanted is not None
            lines = tuple(
                b"* %d FETCH (UID %d)\r\n" % (n, uid)
                for n, (key, uid) in enumerate(zip(keys, uids, strict=True), 1)
                if key in wanted
            )
            return StepResult("OK", b"t OK\r\n", lines)
        if verb == b"UID COPY":
            chosen = UidSet.parse(words[2].replace(b"*", b"%d" % max(uids or [1])))
            assert chosen is not None
            copied = [(uid, deleted) for uid, deleted in self.source if uid in chosen]
            first = 100 + len(self.target)
            self.target += [(uid, first + i, d) for i, (uid, d) in enumerate(copied)]
            if not copied or not self.uidplus:
                return StepResult("OK", b"t OK Copied\r\n", ())
            source = bytes(UidSet.of(uid for uid, _d in copied))
            dest = bytes(UidSet.of(range(first, first + len(copied))))
            return StepResult("OK", b"t OK [COPYUID 7 %s %s] Copied\r\n" % (source, dest), ())
        if verb == b"UID STORE":
            chosen = UidSet.parse(words[2])
            assert chosen is not None
            adding = words[3].startswith(b"+")
            self.source = [(u, adding if u in chosen else d) for u, d in self.source]
            return StepResult("OK", b"t OK\r\n", ())
        if verb == b"UID SEARCH":
            found = b" ".join(b"%d" % uid for uid, deleted in self.source if deleted)
            return StepResult("OK", b"t OK\r\n", (b"* SEARCH " + found + b"\r\n",))
        if verb in (b"EXPUNGE", b"UID EXPUNGE"):
            limit = UidSet.parse(words[2]) if verb == b"UID EXPUNGE" else None
            gone = [u for u, d in self.source if d and (limit is None or u in limit)]
            expunged: list[bytes] = []
            for uid in gone:
                number = [u for u, _d in self.source].index(uid) + 1
                self.source = [(u, d) for u, d in self.source if u != uid]
                expunged.append(b"* %d EXPUNGE\r\n" % number)
            return StepResult("OK", b"t OK\r\n", tuple(expunged))
        raise AssertionError(f"unexpected command {line!r}")


def drive(server: Server, *, sequence: bytes, uid: bool, plan: str) -> EmulationAnswer:
    script = move_script(sequence, Atom(b"Target"), uid=uid, plan=plan)
    result: StepResult | None = None
    while True:
        try:
            step = next(script) if result is None else script.send(result)
        except StopIteration as stop:
            answer: EmulationAnswer = stop.value
            return answer
        result = server.run(encode_command(b"t", step.name, step.args).to_bytes())


@settings(max_examples=300, deadline=None)
@given(
    deleted=st.lists(st.booleans(), min_size=1, max_size=8),
    picks=st.sets(st.integers(1, 8), min_size=1),
    uid=st.booleans(),
    star=st.booleans(),
    plan=st.sampled_from(PLANS),
    refuse=st.sets(st.integers(0, 7), max_size=3),
)
def test_no_message_is_ever_lost_whatever_fails(
    deleted: list[bool], picks: set[int], uid: bool, star: bool, plan: str, refuse: set[int]
) -> None:
    source = [(2 * n + 1, flag) for n, flag in enumerate(deleted)]  # UIDs 1, 3, 5, …
    keys = [u for u, _d in source] if uid else list(range(1, len(source) + 1))
    chosen = [keys[(p - 1) % len(keys)] for p in picks]
    sequence = bytes(UidSet.of(chosen)) + (b",*" if star else b"")
    asked = {source[keys.index(k)][0] for k in chosen} | ({source[-1][0]} if star else set())
    server = Server(list(source), refuse, uidplus=plan == "uidplus")
    answer = drive(server, sequence=sequence, uid=uid, plan=plan)

    in_source = {u: d for u, d in server.source}
    in_target = {origin for origin, _uid, _d in server.target}
    for original, was_deleted in source:
        assert original in in_source or original in in_target, "a message was lost"
        if original not in asked:  # not ours to touch: there, with its flag
            assert in_source.get(original) == was_deleted or (
                b"re-flagging \\Deleted failed" in answer.status_text  # and it says so
            )
    if answer.status_text.startswith(b"OK") and b"No messages" not in answer.status_text:
        assert asked <= in_target
        if plan == "copy-and-flag":
            assert all(in_source[u] for u in asked)
        else:
            assert not asked & set(in_source)
    if answer.outcome == "rolled_back":
        assert all(in_source.get(u) is False for u in asked)
    if not answer.status_text.startswith(b"OK"):
        assert answer.outcome in ("failed", "rolled_back")
