"""Holding untagged responses until they may be delivered (Dovecot's delay-newmail).

How this works: some old clients (OS X Mail < 2.1, Outlook Express) ignore or choke on
EXISTS/RECENT sent in reply to anything but NOOP and CHECK. `HoldUntagged` tells the
session to hold those kinds while other commands run, except during the commands that
must carry them (SELECT, EXAMINE), and to release them just before the tagged completion
of a `release_on` command. The session keeps the queue and collapses it (only the latest
EXISTS and RECENT count), so holding never loses information.
"""

from __future__ import annotations

from collections.abc import Collection

from imap_proxy.quirks.actions.base import Action
from imap_proxy.quirks.model import HoldUntaggedAction


class HoldUntagged(Action):
    shared = True  # configuration only
    kind = "hold_untagged"
    holds_untagged = True

    def __init__(self, rule_id: str, spec: HoldUntaggedAction) -> None:
        super().__init__(rule_id)
        self.kinds = frozenset(spec.kinds)
        self.release_on = frozenset(name.upper() for name in spec.release_on)
        self.except_during = frozenset(name.upper() for name in spec.except_during)

    def holds(self, kind: str, running: Collection[str]) -> bool:
        return kind in self.kinds and not (self.except_during & set(running))

    def releases_before(self, command: str) -> bool:
        return command in self.release_on
