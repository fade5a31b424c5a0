"""What the sans-IO session asks of the I/O layer, and what it reports.

How this works: `ProxySession.receive_from_client()` and its siblings return a list of
these frozen events, in order. Actions (`SendToClient`, `SendToUpstream`, `StartClientTLS`,
`StartUpstreamTLS`, `Close`) must be carried out by the I/O layer in the order given for
each destination; observations (the rest) feed logs and metrics and change nothing.
Observations never carry credentials: LOGIN and AUTHENTICATE data stay inside the session.
"""

from __future__ import annotations

from dataclasses import dataclass

from imap_proxy.wire.errors import Side

# --- actions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendToClient:
    data: bytes


@dataclass(frozen=True, slots=True)
class SendToUpstream:
    data: bytes


@dataclass(frozen=True, slots=True)
class StartClientTLS:
    """Handshake as TLS server on the client stream, then call `client_tls_established()`.

    Until then the session reads nothing more from the client; plaintext the client
    pipelined after STARTTLS has already been discarded.
    """


@dataclass(frozen=True, slots=True)
class StartUpstreamTLS:
    """Handshake as TLS client on the upstream stream, then call `upstream_tls_established()`."""


@dataclass(frozen=True, slots=True)
class Close:
    """Send what is queued, then close both connections. `reason` is a bounded label."""

    reason: str


# --- observations --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpstreamReady:
    """The upstream greeted (and, where configured, TLS is up); the client was greeted."""

    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CommandStarted:
    """A client command was forwarded or taken on by the proxy. `name` is uppercase,
    with its UID prefix ("UID FETCH"); unknown verbs are reported as "OTHER"."""

    tag: str
    name: str


@dataclass(frozen=True, slots=True)
class CommandCompleted:
    """`status` is OK, NO, BAD, or BYE; `by_proxy` when the proxy answered it itself."""

    tag: str
    name: str
    status: str
    by_proxy: bool = False


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The upstream accepted a LOGIN/AUTHENTICATE (or greeted with PREAUTH)."""

    user: str | None
    mechanism: str


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """One side broke the protocol or a limit; `limit` names the limit, if it was one."""

    side: Side
    text: str
    limit: str | None = None


@dataclass(frozen=True, slots=True)
class PlaintextDiscarded:
    """Bytes pipelined after STARTTLS were dropped before the handshake."""

    octets: int


@dataclass(frozen=True, slots=True)
class ClientIdentified:
    """The fingerprint settled on (or refined) a client profile. `family` is a bounded label."""

    family: str
    version: str | None
    confidence: float


@dataclass(frozen=True, slots=True)
class RuleApplied:
    """A quirk rule's action changed what one side sees."""

    rule_id: str
    action: str


@dataclass(frozen=True, slots=True)
class EmulationFinished:
    """An emulated command (a rule's script of upstream commands) ended. `kind` says
    what was emulated ("move"); `outcome` is "ok", "failed" (the client got NO or BAD,
    or the session ended mid-way) or "rolled_back" (a failure after a change was put
    back). Metrics count it by kind and outcome."""

    rule_id: str
    kind: str
    outcome: str


@dataclass(frozen=True, slots=True)
class EmulationStubFetch:
    """Stub FETCH responses stood in for `messages` messages another session expunged
    (metrics: emulations_total{kind="stub_fetch", outcome="served"})."""

    messages: int
    kind: str = "stub_fetch"
    outcome: str = "served"


Action = SendToClient | SendToUpstream | StartClientTLS | StartUpstreamTLS | Close
Observation = (
    UpstreamReady
    | CommandStarted
    | CommandCompleted
    | Authenticated
    | ProtocolViolation
    | PlaintextDiscarded
    | ClientIdentified
    | RuleApplied
    | EmulationFinished
    | EmulationStubFetch
)
Event = Action | Observation
