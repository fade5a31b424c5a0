"""The rules and fingerprint definitions a server hands to new sessions, reloadable.

How this works: `RuleStore.load(directory)` reads the rule files and `fingerprints.yaml`
(the directory's own if it has one, else the packaged one) and validates them all; only a
set that loads completely replaces the current one, in one assignment, so a session
always starts with one consistent snapshot (`current`). `reload()` does the same again:
on failure it raises `RuleLoadError` and the old set stays active; sessions already
running keep the snapshot they started with and are never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imap_proxy.quirks.fingerprint import FingerprintSet
from imap_proxy.quirks.model import FINGERPRINT_FILE, RuleLoadError, RuleSet, load_rules


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
    return QuirkSnapshot(rules, fingerprints)


class RuleStore:
    def __init__(self, snapshot: QuirkSnapshot, directory: Path | None = None) -> None:
        self.current = snapshot
        self.directory = directory
        self.generation = 1

    @classmethod
    def load(cls, directory: Path | None = None) -> RuleStore:
        return cls(load_snapshot(directory), directory)

    @classmethod
    def empty(cls) -> RuleStore:
        return cls(QuirkSnapshot(RuleSet.empty(), None))

    def reload(self) -> QuirkSnapshot:
        """Load the directory again; the new set is active only if all of it is valid."""
        snapshot = load_snapshot(self.directory)
        self.current = snapshot
        self.generation += 1
        return snapshot
