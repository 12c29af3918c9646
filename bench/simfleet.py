"""The simulated fleet in a process of its own, with a reset between benchmark points.

The fleet runs apart from the load generator so that the two do not share one event loop (on two
cores, a shared loop would make the fleet's clock wait for the client's parsing). Its stdin is a
control channel: the line `reset` empties every instance's KV cache and counters (as a restarted
vLLM would be, but without closing sockets, so gateways keep their connections and health state),
and the process answers `ok`. End of stdin stops it.

    python -m bench.simfleet --instances 4 --profile qwen2.5-1.5b-l4 --time-scale 2 --seed 0
    -> first stdout line: {"urls": [...], "profile": {...}}
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from typing import Any, Sequence


def _reset(fleet: Any) -> None:
    for instance in fleet.instances:
        instance.engine.reset()


async def _serve(args: argparse.Namespace) -> None:
    from kvroute.sim import SimFleet
    from kvroute.sim.profiles import load_profile

    overrides = {key: float(value) if "." in value else int(value)
                 for key, _, value in (item.partition("=") for item in args.engine)}
    profile = load_profile(args.profile, **overrides)
    async with SimFleet(instances=args.instances, base_port=0, profile=profile,
                        time_scale=args.time_scale, seed=args.seed) as fleet:
        print(json.dumps({"urls": list(fleet.urls), "profile": dataclasses.asdict(profile),
                          "kv_blocks": profile.kv_blocks()}), flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            if line.strip() == "reset":
                _reset(fleet)
                print("ok", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simfleet")
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--profile", default="qwen2.5-1.5b-l4")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", action="append", default=[], metavar="KEY=VALUE",
                        help="profile override, e.g. num_gpu_blocks=2048 (repeatable)")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(_serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
