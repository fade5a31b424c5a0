"""Client-keyed behaviour that is the operator's explicit choice.

How this works: `ShedBackgroundLoad` follows Apple TN3189: from iOS 18.5 Mail's ID has an
`event` field, and a server under load may answer the ID of a background daemon
(`name` starting `com.apple.`, `event` "indexer" or "back-fill") with `NO [UNAVAILABLE]`;
Mail then postpones that background download by about a day. The rule's match carries
the ID keys (RFC 2971 §3 forbids acting on ID data, which is why such rules are off by
default and named as ID-keyed); the action only answers the ID, it never closes the
session or refuses a login, and foreground sessions (`event` NIL) are untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imap_proxy.quirks.actions.base import Action, LocalAnswer, Rewrite
from imap_proxy.quirks.model import ShedBackgroundLoadAction
from imap_proxy.wire.command import Command

if TYPE_CHECKING:
    from imap_proxy.quirks.engine import SessionView


class ShedBackgroundLoad(Action):
    shared = True  # configuration only
    kind = "shed_background_load"
    commands = frozenset({"ID"})

    def __init__(self, rule_id: str, spec: ShedBackgroundLoadAction) -> None:
        super().__init__(rule_id)
        text = spec.text.encode()
        self.status = b"NO [UNAVAILABLE]" + (b" " + text if text else b"")

    def on_command(self, command: Command, view: SessionView) -> Rewrite | LocalAnswer | None:
        return LocalAnswer(b"", self.status)
