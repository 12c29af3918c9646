"""A fleet of simulated vLLM servers in one event loop (tests, demo, benchmarks, `kvroute sim`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

from .chat_template import ChatPrompt, load_chat
from .engine import SimClock
from .profiles import Profile, load_profile
from .server import SimInstance
from .tokenizer import load_tokenizer

# Engine settings that may be given as keyword arguments / flags on top of a profile.
ENGINE_OVERRIDES = ("block_size", "num_gpu_blocks", "max_num_seqs", "max_num_batched_tokens",
                    "max_model_len", "prefill_tokens_per_s", "memory_bandwidth", "step_overhead_s",
                    "chat_template")


class SimFleet:
    """`async with SimFleet(instances=2) as fleet:` serves `fleet.urls`; `fleet.instances[i]` is
    a SimInstance (its `.engine` is inspectable; `await .set_fault(mode, value)`)."""

    def __init__(self, instances: int = 1, base_port: int = 0, profile: str | Profile | None = "qwen2.5-1.5b-l4",
                 model: str | list[str] = "sim-model", time_scale: float = 1.0,
                 per_token_delay: float | None = None, seed: int = 0, host: str = "127.0.0.1",
                 tokenizer: str | None = None, default_max_tokens: int = 128, eos_probability: float = 0.0,
                 enable_prefix_caching: bool = True, kv_events_port: int | None = None,
                 kv_events_replay_port: int | None = None, kv_events_buffer_steps: int = 10_000,
                 **engine_overrides: Any) -> None:
        unknown = set(engine_overrides) - set(ENGINE_OVERRIDES)
        if unknown:
            raise TypeError(f"unknown engine settings: {', '.join(sorted(unknown))}")
        if instances < 1:
            raise ValueError("instances must be >= 1")
        self.n = instances
        self.base_port = base_port
        self.profile = load_profile(profile, **engine_overrides)
        # Named here, a template beats the tokenizer directory's own; from the profile it does not.
        self.model_template_first = engine_overrides.get("chat_template") is None
        self.models = [model] if isinstance(model, str) else list(model)
        self.time_scale = time_scale
        self.per_token_delay = per_token_delay
        self.seed = seed
        self.host = host
        self.tokenizer_path = tokenizer
        self.default_max_tokens = default_max_tokens
        self.eos_probability = eos_probability
        self.enable_prefix_caching = enable_prefix_caching
        # Instance i publishes KV events on kv_events_port + i and serves replay on
        # kv_events_replay_port + i (default: the ports right after the publishers'); 0 picks free ports.
        self.kv_events_port = kv_events_port
        if kv_events_port is not None and kv_events_replay_port is None:
            kv_events_replay_port = kv_events_port + instances if kv_events_port else 0
        self.kv_events_replay_port = kv_events_replay_port
        self.kv_events_buffer_steps = kv_events_buffer_steps
        self.instances: list[SimInstance] = []
        self.clock: SimClock | None = None
        self.chat: ChatPrompt | None = None

    @property
    def urls(self) -> list[str]:
        return [i.url for i in self.instances]

    @property
    def kv_events_endpoints(self) -> dict[str, tuple[str, str | None]]:
        """Each instance's URL -> (KV event endpoint, replay endpoint), when KV events are on."""
        return {i.url: (i.kv_events.endpoint, i.kv_events.replay_endpoint)
                for i in self.instances if i.kv_events is not None}

    async def start(self) -> SimFleet:
        self.clock = SimClock(self.time_scale)
        tok = load_tokenizer(self.tokenizer_path)
        self.chat = chat = load_chat(tok, self.tokenizer_path, self.profile.chat_template, self.model_template_first)
        try:
            for i in range(self.n):
                inst = SimInstance(
                    i, host=self.host, port=self.base_port + i if self.base_port else 0, clock=self.clock,
                    profile=self.profile, models=self.models, tokenizer=tok, chat=chat, seed=self.seed,
                    per_token_delay=self.per_token_delay, default_max_tokens=self.default_max_tokens,
                    eos_probability=self.eos_probability,
                    enable_prefix_caching=self.enable_prefix_caching,
                    kv_events_port=_nth_port(self.kv_events_port, i),
                    kv_events_replay_port=_nth_port(self.kv_events_replay_port, i),
                    kv_events_buffer_steps=self.kv_events_buffer_steps)
                await inst.start()
                self.instances.append(inst)
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        for inst in self.instances:
            await inst.stop()

    async def __aenter__(self) -> SimFleet:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def set_fault(self, index: int, mode: str, value: float | None = None) -> None:
        await self.instances[index].set_fault(mode, value)

    def start_in_thread(self) -> ThreadedFleet:
        """Run the fleet on its own event loop in a daemon thread (for synchronous callers)."""
        return ThreadedFleet(self)


def _nth_port(base: int | None, i: int) -> int | None:
    return None if base is None else base + i if base else 0


class ThreadedFleet:
    def __init__(self, fleet: SimFleet) -> None:
        self.fleet = fleet
        self._loop: asyncio.AbstractEventLoop | None = None
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, args=(started,), name="kvroute-sim", daemon=True)
        self._stopped: asyncio.Event | None = None
        self._thread.start()
        started.result()

    def _main(self, started: concurrent.futures.Future[None]) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            try:
                await self.fleet.start()
            except BaseException as e:
                started.set_exception(e)
                return
            started.set_result(None)
            try:
                await self._stopped.wait()
            finally:
                await self.fleet.stop()

        try:
            import uvloop

            uvloop.run(run())
        except ImportError:  # pragma: no cover
            asyncio.run(run())

    @property
    def urls(self) -> list[str]:
        return self.fleet.urls

    @property
    def instances(self) -> list[SimInstance]:
        return self.fleet.instances

    def call(self, coro: Any, timeout: float | None = 30) -> Any:
        """Run a coroutine on the fleet's loop, e.g. `call(fleet.instances[0].set_fault("hang"))`."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def set_fault(self, index: int, mode: str, value: float | None = None) -> None:
        self.call(self.fleet.set_fault(index, mode, value))

    def state(self, index: int) -> dict[str, Any]:
        async def get() -> dict[str, Any]:
            return self.fleet.instances[index].state()

        return self.call(get())  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(30)

    def __enter__(self) -> ThreadedFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
