"""The rules and fingerprint definitions a server hands to new sessions, reloadable.

How this works: `RuleStore.load(directory)` reads the rule files and `fingerprints.yaml`
(the directory's own if it has one, else the packaged one) and validates them all; only a
set that loads completely replaces the current one, in one assignment, so a session
always starts with one consistent snapshot (`current`). `reload()` does the same again:
on failure it raises `RuleLoadError` and the old set stays active; sessions already
running keep the snapshot they started with and are never dropped. A set is complete only
if every family a rule's `match.client_families` names is one the fingerprint definitions
know: a misspelt family would otherwise make its rule silently match nobody.

Watching for changes (`rules_watch`): `changed_on_disk()` compares the name, size and
modification time of the directory's rule and fingerprint files with what the last load
or reload attempt saw; the server polls it and reloads when it is true. A half-written
file fails to load like any invalid set, and the write that completes it is a change.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from imap_proxy.quirks.fingerprint import FingerprintSet
from imap_proxy.quirks.model import (
    FINGERPRINT_FILE,
    RULE_FILE_SUFFIXES,
    RuleLoadError,
    RuleSet,
    load_rules,
)


@dataclass(frozen=True, slots=True)
class QuirkSnapshot:
    rules: RuleSet
    fingerprints: FingerprintSet | None


def load_snapshot(directory: Path | None) -> QuirkSnapshot:
    rules = load_rules(directory)
    own = directory / FINGERPRINT_FILE if directory is not None else None
    try:
        fingerprints = (
            FingerprintSet.load(own)
            if own is not None and own.exists()
            else FingerprintSet.packaged()
        )
    except (ValueError, OSError) as error:
        raise RuleLoadError([f"{FINGERPRINT_FILE}: {error}"]) from None
    problems = unknown_families(rules, fingerprints)
    if problems:
        raise RuleLoadError(problems)
    return QuirkSnapshot(rules, fingerprints)


def unknown_families(rules: RuleSet, fingerprints: FingerprintSet) -> list[str]:
    """One problem line per family a rule targets that the definitions do not have."""
    known = fingerprints.families
    problems = []
    for loaded in rules.rules:
        for family in loaded.rule.match.client_families or ():
            if family in known:
                continue
            close = difflib.get_close_matches(family, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(known)
            problems.append(
                f"{loaded.source}: rule {loaded.rule.id}: match.client_families: "
                f"unknown family {family!r} in {FINGERPRINT_FILE} ({hint})"
            )
    return problems


FileSignature = tuple[tuple[str, int, int], ...]
MISSING: FileSignature = (("<missing>", 0, 0),)


def directory_signature(directory: Path | None) -> FileSignature:
    """(name, size, mtime) of each rule or fingerprint file of `directory`, as it is now;
    `MISSING` if it cannot be listed; empty for the packaged rules (they never change)."""
    if directory is None:
        return ()
    try:
        files = sorted(path for path in directory.iterdir() if path.suffix in RULE_FILE_SUFFIXES)
        signature = []
        for path in files:
            status = path.stat()  # follows symlinks: a ConfigMap's ..data swap shows
            signature.append((path.name, status.st_size, status.st_mtime_ns))
    except OSError:
        return MISSING
    return tuple(signature)


class RuleStore:
    def __init__(self, snapshot: QuirkSnapshot, directory: Path | None = None) -> None:
        self.current = snapshot
        self.directory = directory
        self.generation = 1
        # The files as the last load or reload attempt found them (see changed_on_disk).
        self.signature = directory_signature(directory)

    @classmethod
    def load(cls, directory: Path | None = None) -> RuleStore:
        signature = directory_signature(directory)
        store = cls(load_snapshot(directory), directory)
        store.signature = signature  # as they were before reading: a later write shows
        return store

    def changed_on_disk(self) -> bool:
        """True if the directory's files differ from what the last (re)load attempt read;
        a failed attempt counts, so an invalid set is not retried until it changes."""
        return directory_signature(self.directory) != self.signature

    @classmethod
    def empty(cls) -> RuleStore:
        return cls(QuirkSnapshot(RuleSet.empty(), None))

    def reload(self) -> QuirkSnapshot:
        """Load the directory again; the new set is active only if all of it is valid.

        Everything is read and validated before `current` changes, and it changes in one
        assignment: a session starting during a reload gets the old snapshot or the new
        one, never a mixture. On RuleLoadError nothing changes (nor `generation`)."""
        self.signature = directory_signature(self.directory)
        snapshot = load_snapshot(self.directory)
        self.current = snapshot
        self.generation += 1
        return snapshot
