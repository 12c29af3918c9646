"""`kvroute demo`: a simulated fleet, the router in front of it, a short workload, a table, then serve.

Everything runs in one process and one event loop: 4 simulated vLLM backends, the gateway on
127.0.0.1:8080 (admin on 8081), and a streamed workload whose requests share a few long system
prompts, so that cache-aware routing has something to find.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import time
from typing import Sequence

from kvroute.config import Settings
from kvroute.gateway import Gateway
from kvroute.loadgen import ProgressBar, RequestSpec, Result, percentile, run_closed_loop, summarize
from kvroute.sim.fleet import SimFleet

MODEL = "sim-model"
_TOPICS = ["a travel agency", "a bank's support desk", "a code reviewer", "a cooking school"]
_QUESTIONS = [
    "What should I do first?", "Can you summarise that?", "How long will it take?",
    "What does it cost?", "Is there a faster way?", "Give me three options.",
]


def _system_prompt(topic: str, rng: random.Random) -> str:
    # About 2,400 bytes (some 600 tokens): long enough that recomputing it costs real prefill time.
    rules = " ".join(f"Rule {i}: answer as {topic} would, with care for detail number {rng.randint(0, 9999)}."
                     for i in range(40))
    return f"You are the assistant of {topic}. {rules}"


def demo_workload(requests: int, seed: int = 0, max_tokens: int = 32) -> list[RequestSpec]:
    rng = random.Random(seed)
    systems = [_system_prompt(topic, rng) for topic in _TOPICS]
    workload = []
    for index in range(requests):
        group = rng.randrange(len(systems))
        body = {
            "model": MODEL,
            "stream": True,
            "max_tokens": max_tokens,
            "messages": [
                {"role": "system", "content": systems[group]},
                {"role": "user", "content": f"{rng.choice(_QUESTIONS)} (request {index})"},
            ],
        }
        workload.append(RequestSpec(endpoint="chat", body=body, tag=_TOPICS[group]))
    return workload


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def backend_table(results: Sequence[Result]) -> str:
    by_backend: dict[str, list[Result]] = {}
    for result in results:
        if result.ok:
            by_backend.setdefault(result.backend or "?", []).append(result)
    lines = [f"{'backend':<22} {'requests':>8} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'cached %':>9}"]
    for backend in sorted(by_backend):
        rows = by_backend[backend]
        ttfts = [r.ttft_s for r in rows if r.ttft_s is not None]
        prompt = sum(r.prompt_tokens or 0 for r in rows)
        cached = sum(r.cached_tokens or 0 for r in rows)
        share = f"{100 * cached / prompt:.0f}" if prompt else "-"
        lines.append(f"{backend:<22} {len(rows):>8} {_ms(percentile(ttfts, 50)):>12} "
                     f"{_ms(percentile(ttfts, 99)):>12} {share:>9}")
    return "\n".join(lines)


async def run_demo(args: argparse.Namespace) -> int:
    started_at = time.monotonic()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async with SimFleet(instances=args.instances, base_port=0, profile=args.profile, model=MODEL,
                        seed=args.seed) as fleet:
        settings = Settings(host=args.host, port=args.port, admin_port=args.admin_port, backend=fleet.urls,
                            policy=args.policy, seed=args.seed, debug_headers=True)
        gateway = Gateway(settings)
        try:
            await gateway.start()
        except OSError as exc:
            print(f"kvroute demo: cannot listen on {args.host}:{args.port} or admin port {args.admin_port}: "
                  f"{exc}; choose others with --port / --admin-port", file=sys.stderr)
            return 1
        try:
            port, admin_port = gateway.proxy.port, gateway.admin.port if gateway.admin else args.admin_port
            base = f"http://{args.host}:{port}"
            print(f"kvroute demo: {args.instances} simulated backends ({args.profile}) behind {base}, "
                  f"policy {args.policy}")
            workload = demo_workload(args.requests, args.seed)
            bar = ProgressBar(len(workload), label="workload")
            results = await run_closed_loop(base, workload, args.concurrency, progress=bar)
            summary = summarize(results)
            print()
            print(backend_table(results))
            print(f"\n{summary['ok']}/{summary['requests']} requests ok, TTFT p50 {_ms(summary['ttft_p50_s'])} ms, "
                  f"p99 {_ms(summary['ttft_p99_s'])} ms, prompt tokens served from cache "
                  f"{100 * (summary['cache_hit_rate'] or 0):.0f}%")
            print("\nTry it:")
            print(f"  curl -N {base}/v1/chat/completions -H 'content-type: application/json' "
                  f"-d '{{\"model\": \"{MODEL}\", \"stream\": true, "
                  f"\"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'")
            print(f"  status page: http://{settings.admin_host}:{admin_port}/")
            if args.duration is None:
                print("Serving until Ctrl-C.")
                await stop.wait()
            else:
                remaining = args.duration - (time.monotonic() - started_at)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=max(remaining, 0.0))
                except asyncio.TimeoutError:
                    pass
            return 0 if summary["ok"] == summary["requests"] else 1
        finally:
            await gateway.stop()


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="kvroute demo", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=None,
                        help="stop this many seconds after start (default: serve until Ctrl-C)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--admin-port", type=int, default=8081)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--profile", default="qwen2.5-1.5b-l4")
    parser.add_argument("--policy", default="cost")
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(list(argv))
    import uvloop

    return uvloop.run(run_demo(args))
