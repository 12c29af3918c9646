"""`kvroute sim`: serve N simulated vLLM instances on consecutive ports until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from .fleet import SimFleet
from .profiles import BUILTIN
from .server import FAULT_MODES


def build_parser(prog: str = "kvroute sim") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Simulated vLLM fleet (OpenAI API, /metrics, faults).")
    p.add_argument("--instances", type=int, default=1, help="number of vLLM servers (default 1)")
    p.add_argument("--base-port", type=int, default=8000, help="first port; instance i listens on base+i (0: pick free ports)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model", action="append", default=None, help="served model name (repeatable; default sim-model)")
    p.add_argument("--profile", default="qwen2.5-1.5b-l4", help=f"built-in ({', '.join(BUILTIN)}) or a YAML file")
    p.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument("--per-token-delay", type=float, default=None,
                   help="every engine step takes exactly this many simulated seconds (overrides the profile's timing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None,
                   help="a model's tokenizer.json or its directory (default: built-in ~4 bytes/token); chats are "
                        "rendered with the model's chat template beside it (chat_template.jinja, tokenizer_config.json)")
    p.add_argument("--chat-template", default=None, metavar="NAME|PATH|TEMPLATE",
                   help="like vLLM's flag: a Jinja file or inline template; or built-in chatml/llama3 "
                        "(default: the tokenizer's own, else the profile's)")
    p.add_argument("--default-max-tokens", type=int, default=128,
                   help="answer length when a request sets no max_tokens (finish_reason stop)")
    p.add_argument("--eos-probability", type=float, default=0.0,
                   help="chance of EOS after each token (answers end early with finish_reason stop, unless the "
                        "request sets ignore_eos); default 0: EOS is ignored and answers run to max_tokens")
    p.add_argument("--no-prefix-caching", action="store_true", help="like vLLM's --no-enable-prefix-caching")
    for flag, typ in (("block-size", int), ("num-gpu-blocks", int), ("max-num-seqs", int),
                      ("max-num-batched-tokens", int), ("max-model-len", int)):
        p.add_argument(f"--{flag}", type=typ, default=None, help="override the profile")
    p.add_argument("--kv-events-port", type=int, default=None, metavar="P",
                   help="publish vLLM KV events (ZMQ PUB) on tcp://HOST:P+i for instance i (0: free ports)")
    p.add_argument("--kv-events-replay-port", type=int, default=None, metavar="R",
                   help="instance i serves replay (ZMQ ROUTER) on R+i (default: P+instances)")
    p.add_argument("--kv-events-buffer-steps", type=int, default=10_000,
                   help="batches kept for replay, like vLLM's buffer_steps (default 10000)")
    p.add_argument("--fault", action="append", default=[], metavar="I:MODE[:VALUE]",
                   help=f"fault at start on instance I (modes: {', '.join(FAULT_MODES)})")
    return p


async def _serve(args: argparse.Namespace) -> int:
    overrides = {k: getattr(args, k) for k in ("block_size", "num_gpu_blocks", "max_num_seqs",
                                               "max_num_batched_tokens", "max_model_len", "chat_template")}
    fleet = SimFleet(instances=args.instances, base_port=args.base_port, profile=args.profile,
                     model=args.model or ["sim-model"], time_scale=args.time_scale,
                     per_token_delay=args.per_token_delay, seed=args.seed, host=args.host,
                     tokenizer=args.tokenizer, default_max_tokens=args.default_max_tokens,
                     eos_probability=args.eos_probability,
                     enable_prefix_caching=not args.no_prefix_caching,
                     kv_events_port=args.kv_events_port, kv_events_replay_port=args.kv_events_replay_port,
                     kv_events_buffer_steps=args.kv_events_buffer_steps,
                     **{k: v for k, v in overrides.items() if v is not None})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with fleet:
        for spec in args.fault:
            parts = spec.split(":")
            await fleet.set_fault(int(parts[0]), parts[1], float(parts[2]) if len(parts) > 2 else None)
        prof = fleet.profile
        print(json.dumps({"profile": prof.name, "num_gpu_blocks": prof.kv_blocks(), "block_size": prof.block_size,
                          "max_num_seqs": prof.max_num_seqs, "max_num_batched_tokens": prof.max_num_batched_tokens,
                          "chat_template": fleet.chat.source if fleet.chat else None,
                          "time_scale": args.time_scale, "urls": fleet.urls,
                          "kv_events": {url: {"endpoint": ep, "replay_endpoint": rep}
                                        for url, (ep, rep) in fleet.kv_events_endpoints.items()}}), flush=True)
        await stop.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.instances < 1:
        print("--instances must be >= 1", file=sys.stderr)
        return 2
    try:
        import uvloop

        return uvloop.run(_serve(args))
    except ImportError:  # pragma: no cover
        return asyncio.run(_serve(args))
    except (ValueError, OSError) as e:
        print(f"kvroute sim: {e}", file=sys.stderr)
        return 2
