"""One simulated vLLM engine: the V1 scheduler loop over a paged, prefix-cached KV cache.

Each step: running requests first (a decoding one needs one token, a prefilling one the rest
of its prompt up to the token budget); when a running request cannot get KV blocks, the newest
running request is preempted (its blocks freed, recomputed later from the front of the waiting
queue). Then, if nobody was preempted, waiting requests are admitted in order while the budget,
`max_num_seqs` and free blocks allow, each starting from its longest cached prefix. A request's
full blocks enter the prefix cache when they are scheduled, not when the step has run (as in
vLLM), so a request admitted later in a step hits what an earlier one prefills in it. The step
lasts as long as the profile says for its new tokens and context; at its end every request
whose prompt is fully computed gets one new token.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
from collections import deque
from collections.abc import Callable
from typing import Any

from .kvcache import Block, KVCache, chain_hashes
from .profiles import Profile

WAITING, RUNNING, FINISHED = 0, 1, 2

# vLLM's bucket boundaries (vllm/v1/metrics/loggers.py) so dashboards read the same.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                           50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


class SimClock:
    """Simulated seconds since start; runs `time_scale` times faster than the event loop's."""

    def __init__(self, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.scale = time_scale
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()

    def now(self) -> float:
        return (self._loop.time() - self._t0) * self.scale

    def real(self, sim_t: float) -> float:
        return self._t0 + sim_t / self.scale


class Histogram:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.sum += v
        self.count += 1


class Stats:
    """Counters behind /metrics; replaced wholesale on restart."""

    def __init__(self) -> None:
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.prompt_tokens = 0
        self.prompt_cached = 0
        self.generation_tokens = 0
        self.preemptions = 0
        self.success: dict[str, int] = {"stop": 0, "length": 0, "abort": 0}
        self.ttft = Histogram(TTFT_BUCKETS)
        self.e2e = Histogram(REQUEST_LATENCY_BUCKETS)
        self.queue = Histogram(REQUEST_LATENCY_BUCKETS)
        self.steps = 0
        self.busy_s = 0.0
        self.lag_max_s = 0.0
        self.lag_sum_s = 0.0
        self.lag_over_5ms = 0  # steps whose tokens went out more than 5 ms (simulated) late
        self.requests = 0
        self.aborted = 0


class Request:
    __slots__ = ("id", "tokens", "num_prompt", "max_tokens", "length_reason", "out_ids", "num_out",
                 "num_computed", "blocks", "hashes", "num_cached_blocks", "cached_tokens",
                 "arrival", "scheduled_at", "first_token_at", "finished_at", "status",
                 "finish_reason", "preemptions", "event", "stream", "sink")

    def __init__(self, req_id: str, prompt: list[int], max_tokens: int, out_ids: list[int],
                 length_reason: str, arrival: float) -> None:
        self.id = req_id
        self.tokens = list(prompt)
        self.num_prompt = len(prompt)
        self.max_tokens = max_tokens
        # "length" when the client set max_tokens; "stop" when the simulator chose the length,
        # standing in for the EOS a real model would emit.
        self.length_reason = length_reason
        self.out_ids = out_ids
        self.num_out = 0
        self.num_computed = 0
        self.blocks: list[Block] = []
        self.hashes: list[int] = []
        self.num_cached_blocks = 0
        self.cached_tokens = -1
        self.arrival = arrival
        self.scheduled_at: float | None = None
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.status = WAITING
        self.finish_reason: str | None = None
        self.preemptions = 0
        self.event = asyncio.Event()
        # Streaming handlers wake per token; the rest only when the request ends.
        self.stream = False
        # Called after every step that produced output and at the end (see server._SSESink).
        self.sink: Callable[[Request], None] | None = None

    @property
    def output_ids(self) -> list[int]:
        return self.tokens[self.num_prompt :]


class Engine:
    # Real seconds a step may go out late before streamed output is held back and merged (only a
    # sustained overload, not the scheduling jitter of a busy machine: clients that count one
    # chunk per token keep seeing that), and the longest it is held.
    LATE_S = 0.05
    FLUSH_S = 0.1

    def __init__(self, profile: Profile, clock: SimClock, *, per_token_delay: float | None = None,
                 seed: int = 0, enable_prefix_caching: bool = True, index: int = 0,
                 default_max_tokens: int = 128, eos_probability: float = 0.0) -> None:
        self.profile = profile
        self.clock = clock
        self.per_token_delay = per_token_delay
        self.seed = seed
        self.index = index
        self.default_max_tokens = default_max_tokens
        if not 0.0 <= eos_probability <= 1.0:
            raise ValueError("eos_probability must be in [0, 1]")
        self.eos_probability = eos_probability
        self.block_size = profile.block_size
        self.num_gpu_blocks = profile.kv_blocks()
        self.kv = KVCache(self.num_gpu_blocks, self.block_size, enable_prefix_caching)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.stats = Stats()
        self.slow = 1.0
        self.paused = False
        self.output_vocab: list[int] = []
        self._wake = asyncio.Event()
        self._busy_until = 0.0
        self._task: asyncio.Task[None] | None = None
        self._next_id = 0
        self._admitted: list[Request] = []
        self._held = False
        self._last_flush = 0.0
        self._tape: list[int] = []
        # Set by SimInstance when KV events are published (sim/kv_events.py).
        self.kv_publisher: Any = None

    def enable_kv_events(self, publisher: Any) -> None:
        self.kv_publisher = publisher
        self.kv.events = []

    def flush_kv_events(self) -> None:
        """Publish what the cache did since the last flush as one batch, as vLLM's scheduler does
        once per step (update_from_output), and outside steps for a cache reset."""
        events = self.kv.events
        if events:
            if self.kv_publisher is not None:
                self.kv_publisher.publish(list(events))
            events.clear()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sim-engine-{self.index}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def pause(self) -> None:
        """Stop stepping after the step in flight (a hung GPU, or a crashed server)."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._wake.set()

    def reset(self) -> None:
        """A restarted vLLM: every request dropped, the cache empty, counters from zero."""
        for req in list(self.waiting) + list(self.running):
            self._finish(req, "abort", count=False)
        self.waiting.clear()
        self.running.clear()
        self.kv.reset()
        self.stats = Stats()
        self._busy_until = self.clock.now()

    # -- requests --------------------------------------------------------------------------

    def max_prompt_error(self, num_prompt: int, max_tokens: int | None) -> str | None:
        limit = self.profile.max_model_len
        total = num_prompt + (max_tokens or 0)
        if num_prompt >= limit or total > limit:
            return (f"This model's maximum context length is {limit} tokens. However, you requested "
                    f"{total} tokens ({num_prompt} in the messages, {max_tokens or 0} in the completion). "
                    "Please reduce the length of the messages or completion.")
        blocks = -(-total // self.block_size)
        if blocks > self.kv.usable_blocks:
            return (f"The request needs {total} tokens of KV cache but the engine has room for "
                    f"{self.kv.usable_blocks * self.block_size}.")
        return None

    def add_request(self, prompt: list[int], max_tokens: int | None, req_id: str | None = None,
                    stream: bool = False, ignore_eos: bool = False) -> Request:
        if not prompt:
            raise ValueError("empty prompt")
        if max_tokens is None:
            n, reason = min(self.default_max_tokens, self.profile.max_model_len - len(prompt)), "stop"
        else:
            n, reason = max_tokens, "length"
        # Same seed and prompt give the same answer, whatever else the engine is doing.
        rng = random.Random(hash((self.seed, len(prompt), tuple(prompt))))
        p = self.eos_probability
        if p > 0 and not ignore_eos:
            # EOS sampled with probability p after every token: a geometric answer length.
            eos_at = 1 if p >= 1 else 1 + int(math.log(1.0 - rng.random()) / math.log(1.0 - p))
            if eos_at < n:
                n, reason = eos_at, "stop"
        out = self._answer(rng, n)
        if req_id is None:
            req_id = f"sim-{self.index}-{self._next_id}"
        self._next_id += 1
        req = Request(req_id, prompt, n, out, reason, self.clock.now())
        req.stream = stream
        chain_hashes(None, req.tokens, self.block_size, 0, req.hashes)
        self.waiting.append(req)
        self.stats.requests += 1
        self._wake.set()
        return req

    def _answer(self, rng: random.Random, n: int) -> list[int]:
        """n output ids: a window of a seeded random tape of the output vocabulary, at an offset
        drawn from the request's own generator (a slice, not n random draws per request)."""
        tape = self._tape
        if not tape:
            vocab = self.output_vocab or [0]
            tape = self._tape = random.Random(f"{self.seed}:tape").choices(vocab, k=1 << 16)
        out: list[int] = []
        off = rng.randrange(len(tape))
        while len(out) < n:
            out += tape[off : off + n - len(out)]
            off = 0
        return out

    def abort(self, req: Request) -> None:
        """The client went away: drop the request and free its blocks, as vLLM does."""
        if req.status == FINISHED:
            return
        if req.status == WAITING:
            try:
                self.waiting.remove(req)
            except ValueError:
                pass
        else:
            try:
                self.running.remove(req)
            except ValueError:
                pass
        self.stats.aborted += 1
        self._finish(req, "abort")

    def _finish(self, req: Request, reason: str, count: bool = True, now: float | None = None) -> None:
        self.kv.release(req.blocks)
        req.status = FINISHED
        req.finish_reason = reason
        if now is None:
            now = self.clock.now()
        req.finished_at = now
        if count:
            st = self.stats
            st.success[reason] = st.success.get(reason, 0) + 1
            if reason != "abort":
                st.e2e.observe(now - req.arrival)
        if req.sink is not None:
            req.sink(req)
        req.event.set()

    # -- scheduler -------------------------------------------------------------------------

    def _schedule(self) -> list[tuple[Request, int]]:
        budget = self.profile.max_num_batched_tokens
        kv = self.kv
        out: list[tuple[Request, int]] = []
        running = self.running
        preempted = False
        i = 0
        bs = self.block_size
        while i < len(running) and budget > 0:
            req = running[i]
            n = min(len(req.tokens) - req.num_computed, budget)
            upto = req.num_computed + n
            if upto <= len(req.blocks) * bs:
                # The common decode step: the token fits in the request's last block.
                if upto // bs > req.num_cached_blocks:
                    self._cache_full_blocks(req, upto)
                out.append((req, n))
                budget -= n
                i += 1
                continue
            while not kv.allocate(req.blocks, [], upto):
                victim = running.pop()
                self._preempt(victim)
                preempted = True
                if victim is req:
                    break
            else:
                self._cache_full_blocks(req, upto)
                out.append((req, n))
                budget -= n
                i += 1
        if preempted:
            return out
        waiting = self.waiting
        max_seqs = self.profile.max_num_seqs
        st = self.stats
        while waiting and budget > 0 and len(running) < max_seqs:
            req = waiting[0]
            num_tokens = len(req.tokens)
            # A fully cached prompt still recomputes its last token to get logits.
            hits = kv.lookup(req.hashes[: (num_tokens - 1) // bs])
            computed = len(hits) * bs
            n = min(num_tokens - computed, budget)
            if not kv.allocate(req.blocks, hits, computed + n):
                break
            waiting.popleft()
            running.append(req)
            req.status = RUNNING
            req.num_computed = computed
            self._cache_full_blocks(req, computed + n)
            if req.cached_tokens < 0:
                # vLLM counts prefix queries and hits for new requests only, not re-admissions.
                req.cached_tokens = computed
                st.prefix_queries += num_tokens
                st.prefix_hits += computed
                self._admitted.append(req)
            out.append((req, n))
            budget -= n
        return out

    def _cache_full_blocks(self, req: Request, num_tokens: int) -> None:
        """Register the request's full blocks up to `num_tokens` in the prefix cache, at the moment
        they are *scheduled*, before the step computes them: vLLM's allocate_slots calls
        cache_blocks(request, num_computed + num_new) (vllm/v1/core/kv_cache_manager.py). So a
        request admitted later in the same step (running requests are scheduled first, then the
        waiting queue in order) already hits blocks another request is prefilling in that step."""
        bs = self.block_size
        full = num_tokens // bs
        if full <= req.num_cached_blocks:
            return
        hashes = req.hashes
        if len(hashes) < full:
            chain_hashes(None, req.tokens, bs, len(hashes), hashes)  # generated tokens' blocks
        self.kv.cache_blocks(req.blocks, hashes, req.num_cached_blocks, full, req.tokens)
        req.num_cached_blocks = full

    def _preempt(self, req: Request) -> None:
        self.kv.release(req.blocks)
        req.num_computed = 0
        req.num_cached_blocks = 0
        req.status = WAITING
        req.preemptions += 1
        self.stats.preemptions += 1
        self.waiting.appendleft(req)

    def step_seconds(self, sched: list[tuple[Request, int]]) -> float:
        if self.per_token_delay is not None:
            d = self.per_token_delay
        else:
            new = 0
            ctx = 0
            for req, n in sched:
                new += n
                ctx += req.num_computed + n
            d = self.profile.step_seconds(new, ctx)
        return d * self.slow

    def _complete(self, sched: list[tuple[Request, int]], now: float, hold: bool = False) -> None:
        # The per-token hot path of the whole simulator: keep it to attribute reads and appends.
        # (Full blocks were already cached when the step was scheduled: _cache_full_blocks.)
        st = self.stats
        done = False
        generated = 0
        for req, n in sched:
            if req.status != RUNNING:
                continue  # aborted while the step ran
            computed = req.num_computed + n
            req.num_computed = computed
            tokens = req.tokens
            if computed < len(tokens):
                continue  # a chunk of a longer prefill: no token yet
            k = req.num_out
            tokens.append(req.out_ids[k])
            req.num_out = k = k + 1
            generated += 1
            if req.first_token_at is None:
                req.first_token_at = now
                st.prompt_tokens += req.num_prompt
                st.prompt_cached += min(req.cached_tokens, req.num_prompt)
                st.ttft.observe(now - req.arrival)
            if k >= req.max_tokens:
                self._finish(req, req.length_reason, now=now)
                done = True
            elif hold:
                continue
            elif req.sink is not None:
                req.sink(req)
            elif req.stream:
                req.event.set()
        st.generation_tokens += generated
        if done:
            self.running = [r for r in self.running if r.status == RUNNING]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        clock = self.clock
        self._busy_until = max(self._busy_until, clock.now())
        while True:
            sched = [] if self.paused else self._schedule()
            if not sched:
                self._wake.clear()
                await self._wake.wait()
                # An idle GPU starts the next step when work arrives, not when the last one ended.
                self._busy_until = max(self._busy_until, clock.now())
                continue
            start = self._busy_until
            if self._admitted:
                # A step cannot start before the requests it admits arrived (matters only while
                # the event loop lags the simulated clock and steps are being caught up).
                start = max(start, max(r.arrival for r in self._admitted))
                for r in self._admitted:
                    r.scheduled_at = start
                    self.stats.queue.observe(start - r.arrival)
                self._admitted.clear()
            d = self.step_seconds(sched)
            end = start + d
            self._busy_until = end
            delay = clock.real(end) - loop.time()
            # Back-to-back steps are chained on the simulated clock, so late wake-ups of the event
            # loop are caught up rather than accumulated (lag is reported in /sim/state).
            await asyncio.sleep(delay if delay > 0 else 0)
            lag = clock.now() - end
            st = self.stats
            st.steps += 1
            st.busy_s += d
            if lag > 0:
                st.lag_sum_s += lag
                if lag > 0.005:
                    st.lag_over_5ms += 1
                if lag > st.lag_max_s:
                    st.lag_max_s = lag
            # While catching up, hold streamed output back and send it merged once on time (or
            # every FLUSH_S): one socket write per request instead of one per late step. vLLM's
            # API server merges a request's outputs the same way when it falls behind the engine.
            now_real = loop.time()
            defer = (now_real - clock.real(end) > self.LATE_S
                     and now_real - self._last_flush < self.FLUSH_S)
            if self.kv.events:
                self.flush_kv_events()
            self._complete(sched, end, defer)
            if defer:
                self._held = True
            elif self._held:
                self._held = False
                self._last_flush = now_real
                for req in self.running:
                    if req.sink is not None:
                        req.sink(req)
                    elif req.stream:
                        req.event.set()
            else:
                self._last_flush = now_real
            if not (self.waiting or self.running):
                self._busy_until = max(end, clock.now())

    def state(self) -> dict[str, Any]:
        st = self.stats
        kv = self.kv
        return {
            "waiting": len(self.waiting),
            "running": len(self.running),
            "kv_blocks_total": kv.usable_blocks,
            "kv_blocks_used": kv.usable_blocks - kv.num_free,
            "kv_blocks_free": kv.num_free,
            "cached_blocks": len(kv.cached),
            "kv_cache_usage_perc": kv.usage(),
            "evictions": kv.evictions,
            "prefix_cache_queries": st.prefix_queries,
            "prefix_cache_hits": st.prefix_hits,
            "prompt_tokens": st.prompt_tokens,
            "generation_tokens": st.generation_tokens,
            "preemptions": st.preemptions,
            "requests": st.requests,
            "aborted": st.aborted,
            "finished": dict(st.success),
            "steps": st.steps,
            "busy_s": st.busy_s,
            "lag_max_s": st.lag_max_s,
            "lag_mean_s": st.lag_sum_s / st.steps if st.steps else 0.0,
            "lag_over_5ms": st.lag_over_5ms,
            "sim_time_s": self.clock.now(),
            "slow": self.slow,
            "paused": self.paused,
        }
