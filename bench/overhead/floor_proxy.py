"""The floor of Python I/O: a byte pipe on uvloop, one upstream connection per client connection.

No HTTP parsing, no routing, no accounting: what any Python proxy pays just to move bytes through one
more process. The overhead benchmark runs it as a contender so that kvroute's figures can be read
against what this machine allows at the time of the run.
`python -m bench.overhead.floor_proxy --port P --backend-port B`
"""

from __future__ import annotations

import argparse
import asyncio
import socket

import uvloop


class Pipe(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Pipe | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class Downstream(Pipe):
    def __init__(self, backend_port: int) -> None:
        super().__init__()
        self.backend_port = backend_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(Pipe, "127.0.0.1", self.backend_port)
        upstream.peer, self.peer = self, upstream
        for data in self.pending:
            assert upstream.transport is not None
            upstream.transport.write(data)
        self.pending.clear()


async def serve(port: int, backend_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Downstream(backend_port), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead.floor_proxy")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend-port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.backend_port))


if __name__ == "__main__":
    main()
