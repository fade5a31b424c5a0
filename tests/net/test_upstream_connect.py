"""Dialling the upstream: a numeric address directly, a host name through the resolver;
either way TCP_NODELAY is on and a refusal reads the same.

How this works: `connect_upstream` dials the scripted fake upstream (tests/net/fakes.py)
by its numeric address and by the name `localhost`, and a loopback port nothing listens
on; the tests read the greeting and the socket option off what comes back.
"""

from __future__ import annotations

import socket

import pytest
import trio

from imap_proxy.config import UpstreamConfig
from imap_proxy.net.upstream import UpstreamUnavailable, connect_upstream
from tests.net.fakes import (
    GREETING,
    LineClient,
    UpstreamScript,
    fake_imap_server,
    free_port_refusing,
)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_numeric_and_named_upstreams_connect_with_nodelay(host: str) -> None:
    async with trio.open_nursery() as nursery:
        port = await fake_imap_server(nursery, UpstreamScript())
        stream = await connect_upstream(UpstreamConfig(address=f"{host}:{port}"))
        assert isinstance(stream, trio.SocketStream)
        assert stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert await LineClient(stream).read_line() == GREETING
        await stream.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_refused_upstream_reads_the_same_by_number_and_by_name(host: str) -> None:
    with pytest.raises(UpstreamUnavailable) as refused:
        await connect_upstream(UpstreamConfig(address=f"{host}:{free_port_refusing()}"))
    assert refused.value.reason == "connection refused"
