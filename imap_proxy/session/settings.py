"""Per-session settings: plain data handed to `ProxySession` by the I/O layer.

How this works: the pydantic configuration (`imap_proxy.config`) is the user-facing
model; the net layer turns it, plus what it knows of this connection (listener, peer
address, TLS), into one frozen `SessionSettings`. The sans-IO core reads only this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imap_proxy.quirks.model import RuleSet
from imap_proxy.wire.framer import FrameLimits

if TYPE_CHECKING:
    from imap_proxy.quirks.fingerprint import FingerprintSet


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Who is connected: the client's address and the listener it came in on."""

    address: str = "unknown"
    port: int = 0
    listener: str = "imap"
    session_id: str = ""


@dataclass(frozen=True, slots=True)
class SessionSettings:
    client_limits: FrameLimits = field(
        default_factory=lambda: FrameLimits(max_line_length=64 * 1024)
    )
    upstream_limits: FrameLimits = field(
        default_factory=lambda: FrameLimits(max_line_length=16 * 1024 * 1024)
    )
    # The client connection is TLS from the start (implicit-TLS listener).
    client_tls: bool = False
    # The listener can upgrade with STARTTLS (a certificate is configured).
    starttls_available: bool = False
    # Refuse LOGIN/AUTHENTICATE on a plaintext client connection (LOGINDISABLED).
    require_tls: bool = False
    # Upgrade the upstream connection with STARTTLS after its greeting.
    upstream_starttls: bool = False
    # Add x-originating-ip/-port and x-session-id to the client's ID (Dovecot's format).
    forward_originating: bool = False
    # Literals up to this size are kept (besides being streamed) so the message can be
    # parsed; larger ones are streamed only.
    capture_literal_max: int = 8 * 1024
    peer: PeerInfo = field(default_factory=PeerInfo)
    # The quirk rules (all of a directory; each session activates those that match) and
    # the client fingerprint definitions (None: no fingerprinting).
    rules: RuleSet = field(default_factory=RuleSet.empty)
    fingerprints: FingerprintSet | None = None
    sni: str | None = None  # the TLS server name the client asked for, if any
