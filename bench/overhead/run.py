"""What a router adds to a request: the same instant backend reached directly, through kvroute, and
through the peer gateways (sglang-router 0.3.2, smg 1.13.0, vllm-router 0.1.17), in one run on one
machine, routing on (kvroute `cost`, the peers `cache_aware`).

    python -m bench.overhead.run [--seconds 8] [--rate 500] [--sequential 3000] [--peers sglang,smg,vllm-router]

Per contender, a short chat request non-streamed and streamed, and one with a 32 KiB system prompt:
  * one client, one keep-alive connection, requests back to back: latency p50/p99;
  * an open loop at a fixed rate (default 500 req/s) over pooled connections: latency p50/p99 and
    the router's CPU time per request;
  * `wrk -t1 -c32` for the maximum rate, with the router's CPU time per request.
"Added" is the contender's figure minus the direct one. Results go to bench/results/overhead/overhead-*.json;
docs/benchmarks.md quotes them. The backend, the router, wrk and this client share the machine's
cores, as they would on a small box; nothing here is a test.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httptools
import uvloop

from bench import contenders, procs
from bench.overhead.instant_backend import MODEL
from bench.run import machine

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "overhead"  # beside the other benchmarks' results, not the code
# Child processes' logs: kept out of the tree (only results are worth committing).
LOGS = Path(tempfile.gettempdir()) / "kvroute-bench-overhead"
CHAT = json.dumps({"model": MODEL, "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                                {"role": "user", "content": "Hello! Who are you?"}],
                   "max_tokens": 16}, separators=(",", ":"))
STREAM = CHAT[:-1] + ',"stream":true}'
# A long system prompt (32 KiB) as agents and RAG send: what a router pays per byte of body.
CHAT_32K = json.dumps({"model": MODEL, "messages": [{"role": "system", "content": "You are a helpful assistant. " * 1130},
                                                    {"role": "user", "content": "Hello! Who are you?"}],
                       "max_tokens": 16}, separators=(",", ":"))
BODIES = {"chat": CHAT, "stream": STREAM, "chat_32k": CHAT_32K}


def raw_request(body: str) -> bytes:
    data = body.encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%b" % (len(data), data))


class Reply:
    __slots__ = ("parser", "done", "status")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done = False
        self.status = 0

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_message_complete(self) -> None:
        self.done = True


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_us(latencies_s: list[float]) -> dict[str, float]:
    return {"p50_us": round(percentile(latencies_s, 0.5) * 1e6, 1),
            "p99_us": round(percentile(latencies_s, 0.99) * 1e6, 1), "n": len(latencies_s)}


def sequential(port: int, body: str, n: int, warmup: int = 300, max_s: float = 20.0) -> dict[str, float]:
    """Back-to-back requests on one keep-alive connection, a blocking client: nothing overlaps.
    Stops early after `max_s` (a contender at tens of ms per request would take minutes)."""
    request = raw_request(body)
    latencies = []
    deadline = time.monotonic() + max_s
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(warmup + n):
            if time.monotonic() > deadline and len(latencies) >= 100:
                break
            reply = Reply()
            start = time.perf_counter()
            sock.sendall(request)
            while not reply.done:
                data = sock.recv(65536)
                if not data:
                    raise RuntimeError("server closed the connection")
                reply.parser.feed_data(data)
            if i >= warmup:
                latencies.append(time.perf_counter() - start)
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}")
    return summary_us(latencies)


class RateClient(asyncio.Protocol):
    """One pooled connection of the open-loop client."""

    def __init__(self, idle: list[RateClient], latencies: list[float], errors: list[int]) -> None:
        self.idle, self.latencies, self.errors = idle, latencies, errors
        self.transport: asyncio.Transport | None = None
        self.reply = Reply()
        self.started = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.reply = Reply()
        self.started = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.reply.parser.feed_data(data)
        if self.reply.done:
            self.latencies.append(time.perf_counter() - self.started)
            if self.reply.status != 200:
                self.errors.append(self.reply.status)
            self.idle.append(self)


async def fixed_rate(port: int, body: str, rate: float, seconds: float) -> dict[str, float]:
    """An open loop: request i leaves at i/rate whatever happened to the ones before it."""
    loop = asyncio.get_running_loop()
    idle: list[RateClient] = []
    latencies: list[float] = []
    errors: list[int] = []
    request = raw_request(body)
    for _ in range(16):
        await loop.create_connection(lambda: RateClient(idle, latencies, errors), "127.0.0.1", port)
    connections = list(idle)
    total = int(rate * seconds)
    start = loop.time()
    for i in range(total):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if not idle:
            _, conn = await loop.create_connection(lambda: RateClient(idle, latencies, errors), "127.0.0.1", port)
            connections.append(conn)
        else:
            conn = idle.pop()
        conn.send(request)
    while len(latencies) < total:
        await asyncio.sleep(0.05)
    for conn in connections:
        assert conn.transport is not None
        conn.transport.close()
    if errors:
        raise RuntimeError(f"{len(errors)} errors at a fixed rate, e.g. HTTP {errors[0]}")
    return summary_us(latencies)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        child, parent = int(entry.name), int(fields[1])
        children.setdefault(parent, []).append(child)
        stats[child] = (int(fields[11]), int(fields[12]))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        utime, stime = stats.get(current, (0, 0))
        total += utime + stime
        todo.extend(children.get(current, []))
    return total / ticks


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def wrk(port: int, body: str, seconds: float, connections: int = 32) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as body_file:
        body_file.write(body)
        body_file.flush()
        env = dict(os.environ, BENCH_BODY_FILE=body_file.name)
        done = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s",
                               str(HERE / "post.lua"), f"http://127.0.0.1:{port}/v1/chat/completions"],
                              capture_output=True, text=True, env=env, check=True)
    out = done.stdout
    requests = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if requests is None or rate is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}\n{done.stderr}")
    result: dict[str, float] = {"requests": int(requests.group(1)), "req_per_s": round(float(rate.group(1)))}
    for q in ("50", "99"):
        found = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if found:
            result[f"p{q}_us"] = round(float(found.group(1)) * _UNITS[found.group(2)] * 1e6, 1)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or errors:
        result["failures"] = out[out.find("Socket errors") if errors else out.find("Non-2xx"):].strip()  # type: ignore[assignment]
    return result


def _cpu_per_request(pids: dict[str, int | None], before: dict[str, float], result: dict[str, Any], n: int) -> None:
    for label, pid in pids.items():
        if pid:
            result[f"{label}cpu_us_per_request"] = round((cpu_seconds(pid) - before[label]) / n * 1e6, 1)


async def measure(name: str, port: int, pid: int | None, backend_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    """`cpu_us_per_request` is the router's; `backend_cpu_us_per_request` the instant backend's, for scale."""
    result: dict[str, Any] = {}
    pids = {"": pid, "backend_": backend_pid}
    for kind, body in BODIES.items():
        print(f"  {name} {kind}: sequential", flush=True)
        result[f"{kind}_sequential"] = sequential(port, body, args.sequential)
        print(f"  {name} {kind}: {args.rate:.0f} req/s", flush=True)
        before = {label: cpu_seconds(p) if p else 0.0 for label, p in pids.items()}
        rated = await fixed_rate(port, body, args.rate, args.seconds)
        _cpu_per_request(pids, before, rated, rated["n"])
        result[f"{kind}_rate"] = rated
        print(f"  {name} {kind}: wrk", flush=True)
        before = {label: cpu_seconds(p) if p else 0.0 for label, p in pids.items()}
        loaded = wrk(port, body, args.seconds)
        _cpu_per_request(pids, before, loaded, loaded["requests"])
        result[f"{kind}_wrk"] = loaded
    return result


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown; "added" = the row's p50 minus direct's. p99s stay absolute: on a shared machine their
    differences are noise."""
    direct = results["direct"]
    rows = ["| contender | body | seq p50 | seq p99 | added seq p50 | @rate p50 | @rate p99 | added @rate p50 | "
            "router CPU/req @rate | wrk req/s | router CPU/req @wrk | backend CPU/req @rate, @wrk |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = [name for name in ("direct", "floor") if name in results]
    for name in order + [name for name in results if name not in order]:
        res = results[name]
        for kind in BODIES:
            seq, rate, load = res[f"{kind}_sequential"], res[f"{kind}_rate"], res[f"{kind}_wrk"]
            base_seq, base_rate = direct[f"{kind}_sequential"], direct[f"{kind}_rate"]
            added = "—" if name == "direct" else f"{seq['p50_us'] - base_seq['p50_us']:.0f} µs"
            added_rate = "—" if name == "direct" else f"{rate['p50_us'] - base_rate['p50_us']:.0f} µs"
            cpu_rate = f"{rate['cpu_us_per_request']:.0f} µs" if "cpu_us_per_request" in rate else "—"
            cpu_wrk = f"{load['cpu_us_per_request']:.0f} µs" if "cpu_us_per_request" in load else "—"
            backend_cpu = f"{rate['backend_cpu_us_per_request']:.0f}, {load['backend_cpu_us_per_request']:.0f} µs"
            rows.append(f"| {name} | {kind} | {seq['p50_us']:.0f} µs | {seq['p99_us']:.0f} µs | {added} | "
                        f"{rate['p50_us']:.0f} µs | {rate['p99_us']:.0f} µs | {added_rate} | {cpu_rate} | "
                        f"{load['req_per_s']:,.0f} | {cpu_wrk} | {backend_cpu} |")
    return "\n".join(rows)


async def measure_floor(backend_port: int, backend_pid: int, log_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The byte pipe of floor_proxy.py in front of the same backend: Python's I/O floor on this machine now."""
    port = procs.free_port()
    child = procs.Child("floor", [sys.executable, "-m", "bench.overhead.floor_proxy", "--port", str(port),
                                  "--backend-port", str(backend_port)], log_dir / "floor.log")
    await child.start()
    try:
        await procs.wait_http(f"http://127.0.0.1:{port}/health", child)
        assert child.proc is not None
        return await measure("floor", port, child.proc.pid, backend_pid, args)
    finally:
        await child.stop()


async def run(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    load_before = os.getloadavg()
    log_dir = LOGS / f"overhead-{stamp}"
    port = procs.free_port()
    backend = procs.Child("instant", [sys.executable, "-m", "bench.overhead.instant_backend", "--port", str(port)],
                          log_dir / "instant.log")
    await backend.start()
    results: dict[str, dict[str, Any]] = {}
    try:
        await procs.wait_http(f"http://127.0.0.1:{port}/health", backend)
        backend_url = f"http://127.0.0.1:{port}"
        chosen = [contenders.DIRECT, contenders.kvroute(args.policy)]
        if args.workers > 1:
            base = contenders.kvroute(args.policy)
            chosen.append(dataclasses.replace(base, name=f"{base.name}:workers={args.workers}",
                                              flags=(*base.flags, "--workers", str(args.workers))))
        chosen += [contenders.peer(kind, args.peer_policy) for kind in args.peers.split(",") if kind]
        assert backend.proc is not None
        print("floor ...", flush=True)
        results["floor"] = await measure_floor(port, backend.proc.pid, log_dir, args)
        for contender in chosen:
            print(f"{contender.name} ...", flush=True)
            try:
                running = await contenders.start(contender, [backend_url], log_dir, MODEL)
            except RuntimeError as exc:  # a peer could not be installed here
                print(f"  skipped: {exc}", flush=True)
                continue
            try:
                target = int(running.base_url.rsplit(":", 1)[1])
                pid = running.child.proc.pid if running.child and running.child.proc else None
                results[contender.name] = await measure(contender.name, target, pid, backend.proc.pid, args)
            finally:
                await running.stop()
    finally:
        await backend.stop()
    report = {"command": " ".join(["python -m bench.overhead.run", *sys.argv[1:]]), "machine": machine(),
              "versions": contenders.versions(), "rate": args.rate, "seconds": args.seconds,
              # The machine is shared: other work's load is part of every number here.
              "load_average": {"before": load_before, "after": os.getloadavg()}, "results": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"overhead-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    print(f"\nwritten: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead.run")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each fixed-rate and wrk run")
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second of the open loop")
    parser.add_argument("--sequential", type=int, default=3000, help="requests of the sequential run")
    parser.add_argument("--policy", default="cost", help="kvroute's routing policy")
    parser.add_argument("--workers", type=int, default=1, help="also run kvroute with this many worker processes")
    parser.add_argument("--peers", default="sglang,smg,vllm-router", help="peer gateways to measure ('' for none)")
    parser.add_argument("--peer-policy", default="cache_aware", help="the peers' routing policy")
    uvloop.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
