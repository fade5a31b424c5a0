"""IMAP protocol states and the commands that move between them, as tables.

How this works: RFC 9051 §3 has four states; a command's tagged completion (or an untagged
BYE) moves the session. `next_state()` looks the completion up in `_TRANSITIONS`, keyed by
(state, command, status). Anything not in the table leaves the state alone. The
sub-states a proxy cannot ignore (SASL exchange, IDLE, a literal waiting for `+`, a TLS
switch) live in `ProxySession`, which owns the only instance of this state.
"""

from __future__ import annotations

import enum


class ProtocolState(enum.Enum):
    NOT_AUTHENTICATED = "not-authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


_NA = ProtocolState.NOT_AUTHENTICATED
_AUTH = ProtocolState.AUTHENTICATED
_SEL = ProtocolState.SELECTED
_OUT = ProtocolState.LOGOUT

_TRANSITIONS: dict[tuple[ProtocolState, str, str], ProtocolState] = {
    (_NA, "LOGIN", "OK"): _AUTH,
    (_NA, "AUTHENTICATE", "OK"): _AUTH,
    (_AUTH, "SELECT", "OK"): _SEL,
    (_AUTH, "EXAMINE", "OK"): _SEL,
    (_SEL, "SELECT", "OK"): _SEL,
    (_SEL, "EXAMINE", "OK"): _SEL,
    # RFC 3501 §6.3.1: a failed SELECT closes the selected mailbox.
    (_SEL, "SELECT", "NO"): _AUTH,
    (_SEL, "EXAMINE", "NO"): _AUTH,
    (_SEL, "CLOSE", "OK"): _AUTH,
    (_SEL, "UNSELECT", "OK"): _AUTH,
}

# Commands whose completion logs a user in; the session reports them as Authenticated.
AUTH_COMMANDS = frozenset({"LOGIN", "AUTHENTICATE"})


def next_state(state: ProtocolState, command: str, status: str) -> ProtocolState:
    if command == "LOGOUT" and status == "OK":
        return _OUT
    return _TRANSITIONS.get((state, command, status), state)
