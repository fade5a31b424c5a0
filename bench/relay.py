"""A plain TCP relay in asyncio or trio: the "Python floor" baselines for the proxy.

How this works: `python -m bench.relay --listen HOST:PORT --upstream HOST:PORT` accepts
connections, dials the upstream for each, and copies bytes both ways with two tasks
(read up to 256 KiB, write, await drain) until either side closes; no parsing at all.
It shows what any Python relay costs (event loop, syscalls, copies), so the gap between
it and the proxy is the proxy's own work, and the gap between it and socat is Python's.
It also serves as the relay baseline where socat is missing. `--engine trio` is the same
relay on trio's `SocketStream` (`receive_some` / `send_all`), the I/O the proxy is built
on: the floor of the chosen stack, below which the proxy cannot go without leaving it.
It prints `ready` on stdout once listening, and runs until killed. TCP_NODELAY on both
sides, as the proxy does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import socket
import sys

import trio

READ_SIZE = 256 * 1024


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _serve_one(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream: tuple[str, int],
) -> None:
    _nodelay(client_writer)
    try:
        up_reader, up_writer = await asyncio.open_connection(*upstream, limit=READ_SIZE)
    except OSError:
        client_writer.close()
        return
    _nodelay(up_writer)
    await asyncio.gather(_pump(client_reader, up_writer), _pump(up_reader, client_writer))
    for writer in (client_writer, up_writer):
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _main(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    server = await asyncio.start_server(
        lambda r, w: _serve_one(r, w, upstream), *listen, backlog=4096, limit=READ_SIZE
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


async def _trio_copy(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while data := await source.receive_some(READ_SIZE):
            await sink.send_all(data)
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await sink.aclose()


async def _trio_serve_one(client: trio.SocketStream, upstream: tuple[str, int]) -> None:
    try:
        up = await trio.open_tcp_stream(*upstream)
    except OSError:
        await client.aclose()
        return
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_trio_copy, client, up)
        nursery.start_soon(_trio_copy, up, client)


async def _trio_main(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    # trio sets TCP_NODELAY on the streams it makes (open_tcp_stream, listeners).
    listeners = await trio.open_tcp_listeners(listen[1], host=listen[0], backlog=4096)
    print("ready", flush=True)

    async def handle(stream: trio.SocketStream) -> None:
        await _trio_serve_one(stream, upstream)

    await trio.serve_listeners(handle, listeners)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--upstream", required=True, help="HOST:PORT")
    parser.add_argument("--engine", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listen, upstream = _host_port(args.listen), _host_port(args.upstream)
    with contextlib.suppress(KeyboardInterrupt):
        if args.engine == "trio":
            trio.run(_trio_main, listen, upstream)
        else:
            asyncio.run(_main(listen, upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
