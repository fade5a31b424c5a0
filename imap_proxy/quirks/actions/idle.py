"""Keeping an idling client company (Q04, Q30).

How this works: Outlook historically never ends IDLE and drops a connection that stays
silent; Dovecot sends `* OK Still here` every `imap_idle_notify_interval` (2 minutes) for
that reason, but a legacy upstream may not. `IdleKeepalive` only declares the interval and
the line: the session offers them while the client is in IDLE (`keepalive_interval`), the
I/O layer's timer calls `ProxySession.keepalive()` when that long has passed without a byte
to the client, and the session sends the line between messages. Keepalives never count as
client activity, so the idle timeout still ends a vanished client's session.

The IDLE bridge (the rest of Q04) keeps a client's IDLE alive for as long as the client
likes. `Reidle` declares `reidle_after`: an upstream may end an IDLE after 30 minutes
(RFC 2177), so that long into an upstream IDLE the session sends DONE, swallows the
tagged OK, sends an IDLE of its own and swallows its `+`; the client's final DONE ends
whichever IDLE runs then, and the upstream's answer to it goes to the client's tag.
`IdlePoll` declares `poll_interval` for an upstream without IDLE: the session answers
the client's IDLE with `+` itself, sends NOOP every so often and relays the untagged data
it brings. Both are timed by the session's `next_tick(now)` / `tick(now)`, which the I/O
layer schedules on its timers; the actions only hold the parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imap_proxy.quirks.actions.base import Action
from imap_proxy.quirks.model import IdleKeepaliveAction, IdlePollAction, ReidleAction

if TYPE_CHECKING:
    from imap_proxy.quirks.engine import SessionView


class IdleKeepalive(Action):
    shared = True  # configuration only
    kind = "idle_keepalive"

    def __init__(self, rule_id: str, spec: IdleKeepaliveAction) -> None:
        super().__init__(rule_id)
        self.keepalive_interval = spec.interval
        self.keepalive_line = b"* OK " + spec.text.encode() + b"\r\n"


class Reidle(Action):
    shared = True  # configuration only
    kind = "reidle"

    def __init__(self, rule_id: str, spec: ReidleAction) -> None:
        super().__init__(rule_id)
        self.reidle_after = spec.reidle_after


class IdlePoll(Action):
    shared = True  # configuration only
    kind = "idle_poll"

    def __init__(self, rule_id: str, spec: IdlePollAction) -> None:
        super().__init__(rule_id)
        self.poll_interval = spec.poll_interval

    def capabilities(self, caps: list[str], view: SessionView) -> list[str]:
        if any(cap.upper() == "IDLE" for cap in caps):
            return caps
        return [*caps, "IDLE"]
