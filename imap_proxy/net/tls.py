"""TLS contexts: the proxy's own (server side) and the one it uses towards the upstream.

How this works: `server_ssl_context()` builds the context used for implicit-TLS listeners
and for STARTTLS offered to clients: TLS 1.2 or 1.3 as configured, forward-secret AEAD
ciphers only for TLS 1.2 (TLS 1.3 suites are always modern), no compression, no
renegotiation, the certificate chain and key from the configuration. The same context
object is kept for the life of the server; `reload_server_certificate()` loads a new chain
into it, which affects every handshake from then on (certificate rotation without a
restart).

`upstream_ssl_context()` builds the client-side context for the upstream (implicit TLS or
STARTTLS): verification is on by default, against the system CAs or `ca_file`, with the
host name checked against `server_name` (or the upstream host). `verify: false` turns both
checks off and logs a warning each time such a context is built. The name to send as SNI
and to check is `upstream_server_name()`; it is passed to `SSLStream` at wrap time.
"""

from __future__ import annotations

import ssl

from imap_proxy.config import TLSConfig, UpstreamConfig
from imap_proxy.observe.logging import get_logger

# Mozilla "intermediate" TLS 1.2 suites: ECDHE key exchange, AEAD only.
MODERN_TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

_log = get_logger("imap_proxy.net.tls")


class TLSSetupError(Exception):
    """The configured certificate, key or CA file cannot be used."""


def _harden(context: ssl.SSLContext, min_version: str) -> None:
    context.minimum_version = _VERSIONS[min_version]
    context.set_ciphers(MODERN_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION
    context.options |= ssl.OP_NO_RENEGOTIATION


def server_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """The context for client-facing TLS (implicit TLS listeners and STARTTLS)."""
    if tls.cert is None or tls.key is None:
        raise TLSSetupError("tls.cert and tls.key are needed for a TLS listener or STARTTLS")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context, tls.min_version)
    reload_server_certificate(context, tls)
    return context


def reload_server_certificate(context: ssl.SSLContext, tls: TLSConfig) -> None:
    """Load (again) the certificate chain and key; later handshakes present the new one."""
    if tls.cert is None or tls.key is None:
        raise TLSSetupError("tls.cert and tls.key must be given together")
    try:
        context.load_cert_chain(certfile=str(tls.cert), keyfile=str(tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError(f"cannot load tls.cert / tls.key: {exc}") from exc


def upstream_ssl_context(up: UpstreamConfig) -> ssl.SSLContext:
    """The context for the connection to the upstream (implicit TLS or STARTTLS)."""
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(up.ca_file) if up.ca_file else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError(f"cannot load upstream.ca_file: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    if up.verify:
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        _log.warning(
            "upstream certificate verification is off",
            upstream=up.address,
            hint="set upstream.verify: true (with upstream.ca_file for a private CA)",
        )
    return context


def upstream_server_name(up: UpstreamConfig) -> str:
    """The name sent as SNI and checked against the upstream's certificate."""
    return up.server_name or up.host_port[0]
