"""The user-facing configuration: pydantic models with embedded defaults.

How this works: `ProxyConfig` is the whole configuration. Every field has a default that
is sensible for a proxy on one host, so `imap-proxy run --upstream HOST:PORT` needs no
file. A YAML or TOML file, then `IMAP_PROXY_…` environment variables (nested fields with
`__`, e.g. `IMAP_PROXY_UPSTREAM__SECURITY=tls`), then command-line flags override it, in
that order (see `imap_proxy.config_loader`). Unknown keys are errors (`extra="forbid"`).
Durations are seconds; sizes are octets.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    WithJsonSchema,
    field_validator,
    model_validator,
)

MIN_IDLE_TIMEOUT = 30 * 60  # RFC 9051 §5.4: an IDLE client must not be cut before 30 minutes


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def split_host_port(value: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` -> (host, port). Port 0 means "pick a free port"."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port must be a number in {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host, port


HOST_PORT_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):[0-9]{1,5}$"
_HOST_PORT_RE = re.compile(HOST_PORT_PATTERN)


def _check_host_port(value: str) -> str:
    if not _HOST_PORT_RE.match(value):
        raise ValueError(f"expected HOST:PORT or [IPV6]:PORT, got {value!r}")
    split_host_port(value)  # the port range
    return value


# `HOST:PORT` or `[V6]:PORT` as a string; validated with a readable message (not a regex dump).
HostPort = Annotated[
    str,
    AfterValidator(_check_host_port),
    WithJsonSchema(
        {"type": "string", "pattern": HOST_PORT_PATTERN, "examples": ["127.0.0.1:1143"]}
    ),
]


class UpstreamSecurity(enum.StrEnum):
    PLAIN = "plain"
    TLS = "tls"
    STARTTLS = "starttls"


class LogFormat(enum.StrEnum):
    JSON = "json"
    CONSOLE = "console"


class TLSConfig(_Strict):
    """The proxy's own certificate, for implicit-TLS listeners and STARTTLS."""

    cert: Path | None = Field(default=None, description="PEM certificate chain file")
    key: Path | None = Field(default=None, description="PEM private key file")
    min_version: Literal["1.2", "1.3"] = Field(
        default="1.2", description="lowest TLS version offered to clients"
    )

    @field_validator("min_version", mode="before")
    @classmethod
    def _version_from_number(cls, value: object) -> object:
        # YAML/TOML read an unquoted 1.2 as a number.
        return str(value) if isinstance(value, float | int) else value

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TLSConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key must be given together")
        return self

    @property
    def configured(self) -> bool:
        return self.cert is not None


class UpstreamConfig(_Strict):
    """The one IMAP server behind the proxy."""

    address: HostPort = "127.0.0.1:143"
    security: UpstreamSecurity = Field(
        default=UpstreamSecurity.PLAIN,
        description="plain TCP, implicit TLS, or STARTTLS after the greeting",
    )
    verify: bool = Field(default=True, description="verify the upstream's TLS certificate")
    ca_file: Path | None = Field(
        default=None, description="CA bundle for the upstream (default: the system store)"
    )
    server_name: str | None = Field(
        default=None, description="SNI and the name checked in its certificate (default: host)"
    )
    connect_timeout: float = Field(default=10.0, gt=0, description="seconds")
    spare_connections: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="connections kept open and greeted ahead of clients, so a login does not "
        "wait for the upstream's connect (0: off); refilled only while clients connect",
    )
    spare_max_age: float = Field(
        default=20.0,
        gt=0,
        description="seconds a spare may wait unused (keep it below the upstream's pre-login "
        "timeout; Dovecot's is 180)",
    )

    @property
    def host_port(self) -> tuple[str, int]:
        return split_host_port(self.address)


class LimitsConfig(_Strict):
    """Hard limits; a peer exceeding one is disconnected with an error."""

    max_connections: int = Field(default=10_000, ge=1)
    max_connections_per_ip: int = Field(default=0, ge=0, description="0: no per-address limit")
    client_max_line: int = Field(default=64 * 1024, ge=1024, description="octets")
    client_max_literal: int = Field(default=256 * 1024 * 1024, ge=0, description="octets")
    upstream_max_line: int = Field(default=16 * 1024 * 1024, ge=1024, description="octets")
    upstream_max_literal: int = Field(default=4 * 1024 * 1024 * 1024, ge=0, description="octets")
    capture_literal_max: int = Field(
        default=8 * 1024, ge=0, description="literals up to this size are kept for parsing"
    )


class PerformanceConfig(_Strict):
    """Trading CPU for latency."""

    busy_poll_us: int = Field(
        default=500,
        ge=0,
        le=100_000,
        description="a plain TCP read whose last wait was shorter than this polls for up "
        "to this long (yielding to every other connection) before the process sleeps; "
        "0: never poll. Saves the wake-up after a sleep on each round trip",
    )
    busy_pollers: int = Field(
        default=2, ge=1, description="reads that may poll at once, across the process"
    )


class TimeoutsConfig(_Strict):
    """Timeouts in seconds."""

    preauth: float = Field(default=60.0, gt=0, description="until the client authenticates")
    idle: float = Field(
        default=float(MIN_IDLE_TIMEOUT), gt=0, description="inactivity; at least 1800 (RFC 9051)"
    )
    tls_handshake: float = Field(default=30.0, gt=0)
    greeting: float = Field(
        default=30.0,
        gt=0,
        description="from the client's connect until the upstream has greeted (and finished "
        "STARTTLS and the capability probe); then the client gets * BYE [UNAVAILABLE]",
    )
    drain: float = Field(
        default=30.0, ge=0, description="on SIGTERM, how long in-flight commands may finish"
    )

    @field_validator("idle")
    @classmethod
    def _idle_at_least_thirty_minutes(cls, value: float) -> float:
        if value < MIN_IDLE_TIMEOUT:
            raise ValueError(f"timeouts.idle must be at least {MIN_IDLE_TIMEOUT} s (RFC 9051)")
        return value


class IdConfig(_Strict):
    """The ID command (RFC 2971). What the proxy answers for an upstream without ID is the
    `answer-id-in-every-state` rule's `fields`."""

    forward_originating: bool = Field(
        default=False, description="add x-originating-ip/-port and x-session-id upstream"
    )


class ProxyProtocolConfig(_Strict):
    """PROXY protocol (HAProxy v1/v2): real client addresses from a load balancer."""

    trusted: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="load balancer source ranges that must send a PROXY header; "
        "with any set, connections from elsewhere are refused (empty: PROXY protocol off)",
    )
    send_upstream: bool = Field(
        default=False, description="send a v2 PROXY header with the client address upstream"
    )
    header_timeout: float = Field(
        default=5.0, gt=0, description="seconds a trusted source has to send its header"
    )


class LogConfig(_Strict):
    """Structured logs on stderr."""

    format: LogFormat = LogFormat.CONSOLE
    level: Literal["debug", "info", "warning", "error"] = "info"
    hash_user: bool = Field(
        default=True, description="log a hash of the user name instead of the name"
    )

    @field_validator("level", mode="before")
    @classmethod
    def _level_any_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class KeepLiterals(enum.StrEnum):
    """What the session recorder keeps of a literal longer than `literal_keep_octets`."""

    NONE = "none"  # its size only
    TRUNCATE = "truncate"  # its first `literal_keep_octets` octets and its size
    HASH = "hash"  # its SHA-256 and its size
    FULL = "full"  # all of it


class RecorderConfig(_Strict):
    """The session recorder: redacted C:/S: transcripts of chosen sessions (default: off).

    A session is recorded when it is sampled (`sample_rate`) and matches every filter
    that is set (`users`, `families`; empty: any). Credentials are always removed."""

    enabled: bool = False
    directory: Path | None = Field(default=None, description="where transcripts are written")
    users: list[str] = Field(
        default_factory=list, description="record only these users (any case; empty: any)"
    )
    families: list[str] = Field(
        default_factory=list,
        description="record only these client families, as fingerprinted (empty: any)",
    )
    sample_rate: float = Field(default=1.0, ge=0, le=1, description="share of sessions")
    max_file_bytes: int = Field(
        default=8 * 1024 * 1024, ge=4096, description="a session's transcript stops there"
    )
    max_total_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=4096,
        description="finished transcripts beyond this are deleted, oldest first",
    )
    keep_literals: KeepLiterals = Field(
        default=KeepLiterals.HASH, description="none | truncate | hash | full"
    )
    literal_keep_octets: int = Field(
        default=64, ge=0, description="literals up to this size are always kept"
    )

    @model_validator(mode="after")
    def _enabled_needs_a_directory(self) -> RecorderConfig:
        if self.enabled and self.directory is None:
            raise ValueError("recorder.enabled needs recorder.directory")
        if self.max_total_bytes < self.max_file_bytes:
            raise ValueError("recorder.max_total_bytes must be at least max_file_bytes")
        return self


class ProxyConfig(_Strict):
    """The whole configuration of one proxy process."""

    listen: list[HostPort] = Field(
        default_factory=lambda: ["127.0.0.1:1143"], description="plain/STARTTLS listeners"
    )
    listen_tls: list[HostPort] = Field(
        default_factory=list, description="implicit-TLS listeners (need tls.cert and tls.key)"
    )
    tls: TLSConfig = Field(default_factory=TLSConfig)
    require_tls: bool = Field(
        default=False, description="refuse LOGIN/AUTHENTICATE on a plaintext client connection"
    )
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    rules: Path | None = Field(
        default=None, description="quirk rules directory (default: the packaged rules)"
    )
    rules_watch: float = Field(
        default=0,
        ge=0,
        description="seconds between checks of the rules directory for changed files, "
        "which are then reloaded as on SIGHUP (default 0: only SIGHUP reloads)",
    )
    metrics_listen: HostPort | None = Field(
        default=None, description="Prometheus /metrics, /healthz, /readyz (default: off)"
    )
    log: LogConfig = Field(default_factory=LogConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig)
    id: IdConfig = Field(default_factory=IdConfig)
    proxy_protocol: ProxyProtocolConfig = Field(default_factory=ProxyProtocolConfig)
    recorder: RecorderConfig = Field(default_factory=RecorderConfig)

    @model_validator(mode="after")
    def _tls_listeners_need_a_certificate(self) -> ProxyConfig:
        if self.listen_tls and not self.tls.configured:
            raise ValueError("listen_tls needs tls.cert and tls.key")
        if not self.listen and not self.listen_tls:
            raise ValueError("at least one of listen / listen_tls is needed")
        if self.upstream.spare_connections and self.proxy_protocol.send_upstream:
            raise ValueError(
                "upstream.spare_connections cannot be used with proxy_protocol.send_upstream "
                "(a spare is opened before its client's address is known)"
            )
        return self
