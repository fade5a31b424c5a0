"""The PROXY protocol header (HAProxy, versions 1 and 2): a sans-IO parser and a v2 encoder.

How this works: a load balancer that hands TCP connections on tells the next hop who the
real client is by sending one header before any other byte. `parse_proxy_header(data)`
looks at the bytes received so far and returns `NEED_DATA` while the header is still
incomplete, a `ProxyHeader` once it is complete (its `length` says how many bytes it
used; whatever follows belongs to the client), or raises `ProxyHeaderError` as soon as
the bytes cannot be a valid header. It never consumes more than the header, so the caller
can hand the rest on (an implicit-TLS ClientHello often arrives in the same segment).

* v1 is one text line: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n` or `PROXY UNKNOWN...\\r\\n`,
  at most 107 bytes.
* v2 is binary: a 12-byte signature, version/command, family/transport, a 16-bit length,
  the addresses (IPv4, IPv6 or Unix) and optional TLVs (kept, not interpreted).

A `LOCAL` command (v2; a load balancer's own health check) or an `UNKNOWN`/`UNSPEC`
family carries no client address: `source` is None and the connection's own address
stands. `encode_proxy_v2()` builds the header the proxy sends to its upstream (Dovecot
accepts it on a listener with `haproxy = yes` from `haproxy_trusted_networks`).
Specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final, Literal

from imap_proxy.wire.errors import ProtocolError, Side
from imap_proxy.wire.framer import NEED_DATA, _NeedData

V1_PREFIX: Final = b"PROXY "
V1_MAX_LENGTH: Final = 107  # the spec's worst case, CRLF included
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH: Final = 16  # signature, version/command, family, length

_V2_VERSION: Final = 0x20
_V2_LOCAL: Final = 0x00
_V2_PROXY: Final = 0x01
_V2_UNSPEC: Final = 0x00
_V2_INET: Final = 0x10
_V2_INET6: Final = 0x20
_V2_UNIX: Final = 0x30
_V2_STREAM: Final = 0x01
_V2_ADDRESS_LENGTH: Final = {_V2_INET: 12, _V2_INET6: 36, _V2_UNIX: 216}

Family = Literal["tcp4", "tcp6", "unix", "unknown"]
Address = tuple[str, int]


class ProxyHeaderError(ProtocolError):
    """The bytes are not a valid PROXY protocol header (or none was sent)."""

    def __init__(self, text: str) -> None:
        super().__init__(Side.CLIENT, text)


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete header: who connected to the load balancer, and where to."""

    version: int  # 1 or 2
    command: Literal["proxy", "local"]
    family: Family
    source: Address | None  # None: LOCAL, UNKNOWN, UNSPEC or Unix (no IP address)
    destination: Address | None
    length: int  # bytes the header took; data after it belongs to the client
    tlvs: tuple[tuple[int, bytes], ...] = ()


def parse_proxy_header(data: bytes) -> ProxyHeader | _NeedData:
    """The header at the start of `data`, `NEED_DATA`, or `ProxyHeaderError`."""
    if not data:
        return NEED_DATA
    if V2_SIGNATURE.startswith(data[: len(V2_SIGNATURE)]):
        return _parse_v2(data)
    if V1_PREFIX.startswith(data[: len(V1_PREFIX)]):
        return _parse_v1(data)
    raise ProxyHeaderError("no PROXY protocol header")


# ----------------------------------------------------------------------------- v1


def _parse_v1(data: bytes) -> ProxyHeader | _NeedData:
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH or b"\n" in data[:V1_MAX_LENGTH]:
            raise ProxyHeaderError("PROXY v1 line too long or not ended by CRLF")
        return NEED_DATA
    line = data[:end]
    fields = line.split(b" ")
    if len(fields) < 2:
        raise ProxyHeaderError("PROXY v1 line without a protocol")
    protocol = fields[1]
    length = end + 2
    if protocol == b"UNKNOWN":
        return ProxyHeader(1, "proxy", "unknown", None, None, length)
    if protocol not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN")
    if len(fields) != 6:
        raise ProxyHeaderError("PROXY v1 line needs source, destination and two ports")
    version = 4 if protocol == b"TCP4" else 6
    source = (_v1_address(fields[2], version), _v1_port(fields[4]))
    destination = (_v1_address(fields[3], version), _v1_port(fields[5]))
    family: Family = "tcp4" if version == 4 else "tcp6"
    return ProxyHeader(1, "proxy", family, source, destination, length)


def _v1_address(raw: bytes, version: int) -> str:
    try:
        address = ipaddress.ip_address(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError("PROXY v1 address is not an IP address") from None
    if address.version != version:
        raise ProxyHeaderError("PROXY v1 address does not match its protocol")
    return str(address)


def _v1_port(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 5 or (len(raw) > 1 and raw.startswith(b"0")):
        raise ProxyHeaderError("PROXY v1 port is not a number")
    port = int(raw)
    if port > 65535:
        raise ProxyHeaderError("PROXY v1 port out of range")
    return port


# ----------------------------------------------------------------------------- v2


def _parse_v2(data: bytes) -> ProxyHeader | _NeedData:
    if len(data) < V2_FIXED_LENGTH:
        return NEED_DATA
    version_command, family_transport, body_length = struct.unpack_from("!BBH", data, 12)
    if version_command & 0xF0 != _V2_VERSION:
        raise ProxyHeaderError("PROXY v2 header with an unknown version")
    command = version_command & 0x0F
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError("PROXY v2 header with an unknown command")
    length = V2_FIXED_LENGTH + body_length
    if len(data) < length:
        return NEED_DATA
    body = data[V2_FIXED_LENGTH:length]
    address_family = family_transport & 0xF0
    transport = family_transport & 0x0F
    if command == _V2_LOCAL:
        return ProxyHeader(2, "local", "unknown", None, None, length)
    if address_family == _V2_UNSPEC:
        return ProxyHeader(2, "proxy", "unknown", None, None, length)
    if address_family not in _V2_ADDRESS_LENGTH:
        raise ProxyHeaderError("PROXY v2 header with an unknown address family")
    if transport != _V2_STREAM:
        raise ProxyHeaderError("PROXY v2 header for a non-stream transport")
    address_length = _V2_ADDRESS_LENGTH[address_family]
    if body_length < address_length:
        raise ProxyHeaderError("PROXY v2 address block too short")
    tlvs = _parse_tlvs(body[address_length:])
    if address_family == _V2_UNIX:
        return ProxyHeader(2, "proxy", "unix", None, None, length, tlvs)
    if address_family == _V2_INET:
        source_ip, dest_ip, source_port, dest_port = struct.unpack_from("!4s4sHH", body)
        family: Family = "tcp4"
    else:
        source_ip, dest_ip, source_port, dest_port = struct.unpack_from("!16s16sHH", body)
        family = "tcp6"
    source = (str(ipaddress.ip_address(source_ip)), source_port)
    destination = (str(ipaddress.ip_address(dest_ip)), dest_port)
    return ProxyHeader(2, "proxy", family, source, destination, length, tlvs)


def _parse_tlvs(block: bytes) -> tuple[tuple[int, bytes], ...]:
    tlvs: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(block):
        if len(block) - offset < 3:
            raise ProxyHeaderError("PROXY v2 TLV truncated")
        kind, size = struct.unpack_from("!BH", block, offset)
        offset += 3
        if len(block) - offset < size:
            raise ProxyHeaderError("PROXY v2 TLV longer than the header")
        tlvs.append((kind, bytes(block[offset : offset + size])))
        offset += size
    return tuple(tlvs)


def encode_proxy_v2(source: Address | None, destination: Address | None) -> bytes:
    """A v2 PROXY header for a TCP connection from `source` to `destination`.

    Both must be IP addresses of the same family; if either is missing (or they are of
    different families) the header is a `LOCAL` one, which tells the receiver to use the
    connection's own addresses.
    """
    if source is not None and destination is not None:
        source_ip = ipaddress.ip_address(source[0])
        dest_ip = ipaddress.ip_address(destination[0])
        if source_ip.version == dest_ip.version:
            family = _V2_INET if source_ip.version == 4 else _V2_INET6
            body = source_ip.packed + dest_ip.packed + struct.pack("!HH", source[1], destination[1])
            return (
                V2_SIGNATURE
                + struct.pack("!BBH", _V2_VERSION | _V2_PROXY, family | _V2_STREAM, len(body))
                + body
            )
    return V2_SIGNATURE + struct.pack("!BBH", _V2_VERSION | _V2_LOCAL, _V2_UNSPEC, 0)


def encode_proxy_v1(source: Address, destination: Address) -> bytes:
    """A v1 PROXY line (what older load balancers send); used by tests and tools."""
    source_ip = ipaddress.ip_address(source[0])
    dest_ip = ipaddress.ip_address(destination[0])
    if source_ip.version != dest_ip.version:
        raise ValueError("source and destination must be of the same IP version")
    protocol = "TCP4" if source_ip.version == 4 else "TCP6"
    line = f"PROXY {protocol} {source_ip} {dest_ip} {source[1]} {destination[1]}\r\n"
    return line.encode("ascii")
