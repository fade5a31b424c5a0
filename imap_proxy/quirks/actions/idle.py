"""Keeping an idling client company (Q04, Q30).

How this works: Outlook historically never ends IDLE and drops a connection that stays
silent; Dovecot sends `* OK Still here` every `imap_idle_notify_interval` (2 minutes) for
that reason, but a legacy upstream may not. `IdleKeepalive` only declares the interval and
the line: the session offers them while the client is in IDLE (`keepalive_interval`), the
I/O layer's timer calls `ProxySession.keepalive()` when that long has passed without a byte
to the client, and the session sends the line between messages. Keepalives never count as
client activity, so the idle timeout still ends a vanished client's session.
"""

from __future__ import annotations

from imap_proxy.quirks.actions.base import Action
from imap_proxy.quirks.model import IdleKeepaliveAction


class IdleKeepalive(Action):
    kind = "idle_keepalive"

    def __init__(self, rule_id: str, spec: IdleKeepaliveAction) -> None:
        super().__init__(rule_id)
        self.keepalive_interval = spec.interval
        self.keepalive_line = b"* OK " + spec.text.encode() + b"\r\n"
