"""A plain TCP relay in asyncio: the "Python floor" baseline for the proxy.

How this works: `python -m bench.relay --listen HOST:PORT --upstream HOST:PORT` accepts
connections, dials the upstream for each, and copies bytes both ways with two tasks
(read up to 256 KiB, write, await drain) until either side closes; no parsing at all.
It shows what any Python relay costs (event loop, syscalls, copies), so the gap between
it and the proxy is the proxy's own work, and the gap between it and socat is Python's.
It also serves as the relay baseline where socat is missing. It prints `ready` on stdout
once listening, and runs until killed. TCP_NODELAY on both sides, as the proxy does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import socket
import sys

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--upstream", required=True, help="HOST:PORT")
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(_host_port(args.listen), _host_port(args.upstream)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
