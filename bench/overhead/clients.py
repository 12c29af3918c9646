"""Which upstream client for the hot path: kvroute's own pool vs one shared aiohttp.ClientSession.

    python -m bench.overhead.clients [--requests 5000]

Both send the same POST to the instant backend over one keep-alive connection, back to back, from one
uvloop process; the figure is the client's round trip (p50/p99) and its CPU time per request. This is
the measurement behind the choice in docs/proxy.md.
"""

from __future__ import annotations

import argparse
import sys
import time

import aiohttp
import uvloop

from bench import procs
from bench.overhead.run import CHAT, LOGS, summary_us
from kvroute.proxy.upstream import UpstreamPool


async def own_pool(port: int, n: int) -> tuple[list[float], float]:
    pool = UpstreamPool(connect_timeout=5.0)
    target = pool.target(f"http://127.0.0.1:{port}")
    body = CHAT.encode()
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: %b\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % (target.host_header, len(body)))
    latencies = []
    cpu = time.process_time()
    for _ in range(n):
        start = time.perf_counter()
        conn = await pool.exchange(target, head, body, 5.0)
        await conn.read_all(5.0)
        conn.finish()
        latencies.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu
    pool.close()
    return latencies, cpu


async def aiohttp_session(port: int, n: int) -> tuple[list[float], float]:
    latencies = []
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = CHAT.encode()
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession() as session:
        cpu = time.process_time()
        for _ in range(n):
            start = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
            latencies.append(time.perf_counter() - start)
        cpu = time.process_time() - cpu
    return latencies, cpu


async def run(n: int) -> None:
    port = procs.free_port()
    backend = procs.Child("instant", [sys.executable, "-m", "bench.overhead.instant_backend", "--port", str(port)],
                          LOGS / "clients-instant.log")
    await backend.start()
    try:
        await procs.wait_http(f"http://127.0.0.1:{port}/health", backend)
        for name, client in (("kvroute pool", own_pool), ("aiohttp.ClientSession", aiohttp_session)) * 2:
            await client(port, 300)  # warm up
            latencies, cpu = await client(port, n)
            stats = summary_us(latencies)
            print(f"{name:24s} p50 {stats['p50_us']:6.0f} µs  p99 {stats['p99_us']:6.0f} µs  "
                  f"client CPU {cpu / n * 1e6:5.0f} µs/request")
    finally:
        await backend.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead.clients")
    parser.add_argument("--requests", type=int, default=5000)
    uvloop.run(run(parser.parse_args().requests))


if __name__ == "__main__":
    main()
