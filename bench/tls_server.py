"""A loopback TLS target for certificate checks, run as its own process by bench.stall.

`python -m bench.tls_server CERT KEY` listens on a free port of 127.0.0.1, prints the port on
stdout, and on every connection completes the TLS handshake, then closes. It runs at the
lowest CPU priority: a real target is on another machine, and its handshakes must not take
the benchmarked worker's cores (it still gets every cycle the worker leaves).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import sys

import uvloop


async def serve(cert: str, key: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def handshake_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(10):
                await reader.read(1)  # the client closes after the handshake
        writer.close()

    server = await asyncio.start_server(
        handshake_then_close, "127.0.0.1", 0, ssl=context, backlog=1024
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    os.nice(19)
    uvloop.run(serve(sys.argv[1], sys.argv[2]))
