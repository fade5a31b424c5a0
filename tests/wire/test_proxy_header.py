"""The sans-IO PROXY protocol parser and encoder (imap_proxy.wire.proxy_header).

Headers from the specification and from HAProxy/AWS-style senders parse to the addresses
they carry; every prefix of a valid header is NEED_DATA (never an error, never a wrong
answer); bytes after the header are never counted in it; encode -> parse round-trips for
any addresses; anything else raises ProxyHeaderError (a ProtocolError) rather than
anything unexpected.
"""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imap_proxy.wire.errors import ProtocolError
from imap_proxy.wire.framer import NEED_DATA
from imap_proxy.wire.proxy_header import (
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    encode_proxy_v1,
    encode_proxy_v2,
    parse_proxy_header,
)

AFTER = b"\x16\x03\x01\x02\x00"  # the start of a TLS ClientHello that followed the header


def parsed(data: bytes) -> ProxyHeader:
    result = parse_proxy_header(data)
    assert isinstance(result, ProxyHeader), result
    return result


def v2(version_command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", version_command, family, len(body)) + body


# ----------------------------------------------------------------------------- v1


def test_v1_tcp4_from_the_specification() -> None:
    line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    header = parsed(line + AFTER)
    assert header.version == 1
    assert header.command == "proxy"
    assert header.family == "tcp4"
    assert header.source == ("192.168.0.1", 56324)
    assert header.destination == ("192.168.0.11", 443)
    assert header.length == len(line)


def test_v1_tcp6() -> None:
    line = b"PROXY TCP6 2001:db8::1 2001:db8::ff 40000 993\r\n"
    header = parsed(line)
    assert header.family == "tcp6"
    assert header.source == ("2001:db8::1", 40000)
    assert header.destination == ("2001:db8::ff", 993)


@pytest.mark.parametrize("line", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n"])
def test_v1_unknown_carries_no_address(line: bytes) -> None:
    header = parsed(line + b"a001 NOOP\r\n")
    assert header.family == "unknown"
    assert header.source is None
    assert header.length == len(line)


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n",  # a port missing
        b"PROXY TCP4 192.168.0.1 2001:db8::1 56324 443\r\n",  # family mismatch
        b"PROXY TCP6 192.168.0.1 192.168.0.11 56324 443\r\n",
        b"PROXY TCP4 192.168.0.300 192.168.0.11 56324 443\r\n",
        b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",
        b"PROXY TCP4 192.168.0.1 192.168.0.11 -1 443\r\n",
        b"PROXY TCP4 192.168.0.1 192.168.0.11 0443 443\r\n",
        b"PROXY UDP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        b"PROXY TCP4  192.168.0.1 192.168.0.11 56324 443\r\n",  # two spaces
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n",  # LF only
        b"PROXY\r\n",
        b"PROXY " + b"1" * (V1_MAX_LENGTH + 1),  # no CRLF within the longest header
        b"a001 LOGIN user pass\r\n",  # an IMAP client that is not behind a balancer
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x00",  # TLS without a header
    ],
)
def test_malformed_headers_raise(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data)


def test_the_error_is_a_protocol_error_from_the_client_side() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_proxy_header(b"a001 NOOP\r\n")
    assert caught.value.side.value == "client"


# ----------------------------------------------------------------------------- v2


def test_v2_tcp4_with_tlvs() -> None:
    body = (
        bytes([203, 0, 113, 7, 10, 0, 0, 5])
        + struct.pack("!HH", 51234, 993)
        + struct.pack("!BH", 0x04, 2)  # PP2_TYPE_NOOP
        + b"\x00\x00"
        + struct.pack("!BH", 0xEA, 5)  # AWS VPC endpoint id style custom TLV
        + b"vpce-"
    )
    header = parsed(v2(0x21, 0x11, body) + AFTER)
    assert header.version == 2
    assert header.command == "proxy"
    assert header.family == "tcp4"
    assert header.source == ("203.0.113.7", 51234)
    assert header.destination == ("10.0.0.5", 993)
    assert header.tlvs == ((0x04, b"\x00\x00"), (0xEA, b"vpce-"))
    assert header.length == 16 + len(body)


def test_v2_tcp6() -> None:
    source = ipaddress.IPv6Address("2001:db8::7")
    destination = ipaddress.IPv6Address("2001:db8::1")
    body = source.packed + destination.packed + struct.pack("!HH", 60000, 143)
    header = parsed(v2(0x21, 0x21, body))
    assert header.family == "tcp6"
    assert header.source == ("2001:db8::7", 60000)
    assert header.destination == ("2001:db8::1", 143)


def test_v2_local_is_a_health_check_without_addresses() -> None:
    header = parsed(v2(0x20, 0x00, b"") + b"a1 NOOP\r\n")
    assert header.command == "local"
    assert header.source is None
    assert header.length == 16


def test_v2_local_may_still_carry_an_address_block_which_is_skipped() -> None:
    body = bytes(12)
    header = parsed(v2(0x20, 0x11, body))
    assert header.command == "local"
    assert header.length == 28


def test_v2_unix_and_unspec_carry_no_ip_address() -> None:
    assert parsed(v2(0x21, 0x31, bytes(216))).family == "unix"
    assert parsed(v2(0x21, 0x31, bytes(216))).source is None
    assert parsed(v2(0x21, 0x00, b"")).family == "unknown"


@pytest.mark.parametrize(
    "data",
    [
        v2(0x11, 0x11, bytes(12)),  # version 1 in a v2 header
        v2(0x22, 0x11, bytes(12)),  # command 2
        v2(0x21, 0x12, bytes(12)),  # UDP
        v2(0x21, 0x41, bytes(12)),  # family 4
        v2(0x21, 0x11, bytes(11)),  # address block too short
        v2(0x21, 0x21, bytes(12)),  # IPv6 needs 36 bytes
        v2(0x21, 0x11, bytes(12) + b"\x01\x00"),  # truncated TLV header
        v2(0x21, 0x11, bytes(12) + b"\x01\x00\x05abc"),  # TLV longer than the header
    ],
)
def test_malformed_v2_headers_raise(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data)


# ------------------------------------------------------------- incremental input


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        b"PROXY UNKNOWN\r\n",
        encode_proxy_v2(("203.0.113.7", 1), ("10.0.0.1", 143)),
        encode_proxy_v2(("2001:db8::7", 1), ("2001:db8::1", 143)),
        encode_proxy_v2(None, None),
    ],
)
def test_every_prefix_needs_data_and_the_whole_parses(header: bytes) -> None:
    for end in range(len(header)):
        assert parse_proxy_header(header[:end]) is NEED_DATA, header[:end]
    assert parsed(header + AFTER).length == len(header)


# ----------------------------------------------------------------------- encoding

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(min_value=0, max_value=65535)


@given(
    st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)),
    ports,
    ports,
    st.binary(max_size=8),
)
def test_v2_encoding_round_trips(
    hosts: tuple[str, str], source_port: int, destination_port: int, after: bytes
) -> None:
    source, destination = (hosts[0], source_port), (hosts[1], destination_port)
    encoded = encode_proxy_v2(source, destination)
    header = parsed(encoded + after)
    assert header.source == source
    assert header.destination == destination
    assert header.length == len(encoded)


@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), ports, ports)
def test_v1_encoding_round_trips(hosts: tuple[str, str], source_port: int, dport: int) -> None:
    encoded = encode_proxy_v1((hosts[0], source_port), (hosts[1], dport))
    assert len(encoded) <= V1_MAX_LENGTH
    header = parsed(encoded)
    assert header.source == (hosts[0], source_port)
    assert header.destination == (hosts[1], dport)


def test_mixed_families_encode_as_local() -> None:
    header = parsed(encode_proxy_v2(("192.0.2.1", 1), ("2001:db8::1", 2)))
    assert header.command == "local"


@given(st.binary(max_size=300))
def test_any_bytes_parse_need_data_or_raise_the_one_error(data: bytes) -> None:
    try:
        result = parse_proxy_header(data)
    except ProxyHeaderError:
        return
    if isinstance(result, ProxyHeader):
        assert 0 < result.length <= len(data)
    else:
        assert result is NEED_DATA


@given(st.binary(min_size=1, max_size=200))
def test_any_bytes_after_a_v2_signature_never_escape_as_other_errors(tail: bytes) -> None:
    with contextlib.suppress(ProxyHeaderError):
        parse_proxy_header(V2_SIGNATURE + tail)
