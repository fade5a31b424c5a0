"""The ID command (RFC 2971): forwarded with the proxy's additions, or answered here.

How this works: Dovecot (and others) trust `x-originating-ip`, `x-originating-port`,
`x-connected-*`, `x-session-id`, `x-proxy-ttl` and `x-forward-*` ID fields only from
trusted proxies - which the proxy is. A client could therefore spoof its address through
the proxy, so these fields are always removed from the client's ID; when
`forward_originating` is set the proxy adds its own, in Dovecot's format. An ID that
needs no change goes upstream as its original bytes. When the upstream has no ID the
`answer-id-in-every-state` rule answers it (quirks/actions/capabilities.py).
"""

from __future__ import annotations

from imap_proxy.session.settings import SessionSettings
from imap_proxy.wire.command import Command, parse_id_params
from imap_proxy.wire.encode import encode_command
from imap_proxy.wire.errors import ProtocolError
from imap_proxy.wire.message import Message
from imap_proxy.wire.syntax import Nil, ParenList, Quoted, Value

_TRUSTED_ONLY_PREFIXES = (b"x-originating-", b"x-connected-", b"x-forward-")
_TRUSTED_ONLY = frozenset({b"x-session-id", b"x-session-ext-id", b"x-proxy-ttl"})

IdParams = list[tuple[bytes, bytes | None]]


def _trusted_only(field: bytes) -> bool:
    lower = field.lower()
    return lower in _TRUSTED_ONLY or lower.startswith(_TRUSTED_ONLY_PREFIXES)


def originating_fields(settings: SessionSettings) -> IdParams:
    peer = settings.peer
    fields: IdParams = [
        (b"x-originating-ip", peer.address.encode("ascii", "replace")),
        (b"x-originating-port", str(peer.port).encode()),
    ]
    if peer.session_id:
        fields.append((b"x-session-ext-id", peer.session_id.encode("ascii", "replace")))
    return fields


def rewrite_id_command(
    command: Command, original: Message, settings: SessionSettings
) -> Message | None:
    """What to send upstream for the client's ID; None when its arguments are invalid."""
    try:
        params = parse_id_params(command)
    except ProtocolError:
        return None
    kept = [(k, v) for k, v in params or [] if not _trusted_only(k)]
    if settings.forward_originating:
        kept += originating_fields(settings)
    if kept == (params or []):
        return original
    argument: Value = Nil()
    if kept:
        items: list[Value] = []
        for key, value in kept:
            items.append(Quoted(key))
            items.append(Nil() if value is None else Quoted(value))
        argument = ParenList(tuple(items))
    return encode_command(command.tag, "ID", [argument])
