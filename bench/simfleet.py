"""The simulated fleet in a process of its own, with a reset between benchmark points.

The fleet runs apart from the load generator so that the two do not share one event loop (on two
cores, a shared loop would make the fleet's clock wait for the client's parsing). Its stdin is a
control channel: the line `reset` empties every instance's KV cache and counters (as a restarted
vLLM would be, but without closing sockets, so gateways keep their connections and health state),
and the process answers `ok`. End of stdin stops it.

With `--kv-events` every instance publishes vLLM-format KV events on a port of its own (and serves
replay on another); a reset then ends each instance's event stream as a restarted vLLM's would: the
old publisher's last batch is AllBlocksCleared (a router that lives across the reset empties its
view at once), then the publisher restarts, numbering from 0 with an empty replay buffer (so a
router started for the next point does not replay the previous points' batches). `--tokenizer DIR`
makes the fleet tokenize with that model directory (bench/sim_tokenizer.py builds the bench's).

`--fault I:MODE[:VALUE]` (with `--fault-seconds S`) gives a scenario's fleet a fault from the start
of every point: one backend half as fast (`0:slow:2`), metrics stale for the first 10 s
(`0:metrics_stale` with `--fault-seconds 10`).

    python -m bench.simfleet --instances 4 --profile qwen2.5-1.5b-l4 --time-scale 2 --seed 0
    -> first stdout line: {"urls": [...], "profile": {...}, "kv_events": {url: {"endpoint", "replay_endpoint"}}}
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from typing import Any, Sequence


# Time for the old publisher's I/O thread to deliver AllBlocksCleared before its socket closes, and
# for subscribers to reconnect to the restarted one (ZMQ retries every 100 ms) before the next point:
# a batch published before a SUB socket has rejoined is lost to it until the next batch shows the
# gap (then replayed), so without the wait a point's first blocks could reach the view late.
CLEAR_GRACE_S = 0.2
REJOIN_GRACE_S = 0.3


async def _reset(fleet: Any) -> None:
    publishers = [i.kv_events for i in fleet.instances if i.kv_events is not None]
    for instance in fleet.instances:
        engine = instance.engine
        engine.reset()
        # The cache is empty and nothing runs, so vLLM's reset_prefix_cache succeeds: it queues
        # AllBlocksCleared, sent now (outside a step, as the sim's /reset_prefix_cache does).
        if engine.kv_publisher is not None and engine.kv.reset_prefix_cache():
            engine.flush_kv_events()
    if publishers:
        await asyncio.sleep(CLEAR_GRACE_S)
        for publisher in publishers:
            await publisher.stop()
            await publisher.start()  # same ports, sequence from 0
        await asyncio.sleep(REJOIN_GRACE_S)


class Faults:
    """Scenario faults (`kvroute sim`'s modes, e.g. `0:slow:2`, `0:metrics_stale`), applied when the
    fleet starts and again after every reset, so that each point meets them from its start; with
    `seconds` > 0 they clear that many fleet seconds into the point (a backend whose metrics go
    stale for 10 s, then recover)."""

    def __init__(self, fleet: Any, specs: Sequence[str], seconds: float, time_scale: float) -> None:
        self.fleet = fleet
        self.faults = [parse_fault(spec) for spec in specs]
        self.clear_after_s = seconds / time_scale
        self._clear: asyncio.Task[None] | None = None

    async def apply(self) -> None:
        if self._clear is not None:
            self._clear.cancel()
            self._clear = None
        for index, mode, value in self.faults:
            await self.fleet.set_fault(index, mode, value)
        if self.faults and self.clear_after_s > 0:
            self._clear = asyncio.create_task(self._clear_later())

    async def _clear_later(self) -> None:
        await asyncio.sleep(self.clear_after_s)
        for index in {index for index, _, _ in self.faults}:
            await self.fleet.set_fault(index, "none")


def parse_fault(spec: str) -> tuple[int, str, float | None]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0].isdigit():
        raise ValueError(f"fault {spec!r}: expected INSTANCE:MODE[:VALUE]")
    return int(parts[0]), parts[1], float(parts[2]) if len(parts) == 3 else None


async def _serve(args: argparse.Namespace) -> None:
    from kvroute.sim import SimFleet
    from kvroute.sim.profiles import load_profile

    overrides = {key: float(value) if "." in value else int(value)
                 for key, _, value in (item.partition("=") for item in args.engine)}
    profile = load_profile(args.profile, **overrides)
    async with SimFleet(instances=args.instances, base_port=0, profile=profile,
                        time_scale=args.time_scale, seed=args.seed, tokenizer=args.tokenizer,
                        kv_events_port=0 if args.kv_events else None) as fleet:
        print(json.dumps({"urls": list(fleet.urls), "profile": dataclasses.asdict(profile),
                          "kv_blocks": profile.kv_blocks(), "tokenizer": args.tokenizer,
                          "kv_events": {url: {"endpoint": ep, "replay_endpoint": rep}
                                        for url, (ep, rep) in fleet.kv_events_endpoints.items()},
                          "faults": args.fault, "fault_seconds": args.fault_seconds}), flush=True)
        faults = Faults(fleet, args.fault, args.fault_seconds, args.time_scale)
        await faults.apply()
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            if line.strip() == "reset":
                await _reset(fleet)
                await faults.apply()
                print("ok", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simfleet")
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--profile", default="qwen2.5-1.5b-l4")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", action="append", default=[], metavar="KEY=VALUE",
                        help="profile override, e.g. num_gpu_blocks=2048 (repeatable)")
    parser.add_argument("--tokenizer", help="model directory the instances tokenize with (default: the built-in one)")
    parser.add_argument("--kv-events", action="store_true",
                        help="publish vLLM-format KV events, every instance on free ports (listed on the first line)")
    parser.add_argument("--fault", action="append", default=[], metavar="I:MODE[:VALUE]",
                        help="a fault on instance I from the start of every point (kvroute sim's modes)")
    parser.add_argument("--fault-seconds", type=float, default=0.0, metavar="S",
                        help="faults clear S fleet seconds into each point (default 0: they last)")
    args = parser.parse_args(argv)
    try:
        for spec in args.fault:
            parse_fault(spec)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        import uvloop

        uvloop.run(_serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
