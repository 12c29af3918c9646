"""Load generator: an asyncio OpenAI-compatible streaming client, closed and open loop, plus summaries.

It lives in the package (not in bench/) because `kvroute demo` drives its workload with it too. Every
request is streamed with `stream_options.include_usage` so that the final chunk carries the token counts
and `usage.prompt_tokens_details.cached_tokens`; all requests of a run share one aiohttp session.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence, TextIO

import aiohttp

from kvroute.sse_lines import EventSplitter, data_payloads

Endpoint = Literal["chat", "completions"]
_PATHS: dict[str, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
BACKEND_HEADER = "x-kvroute-backend"
# Sent by kvroute with debug_headers: the decision's branch and the TTFT it predicted there.
BRANCH_HEADER = "x-kvroute-branch"
PREDICTED_TTFT_HEADER = "x-kvroute-predicted-ttft-ms"


@dataclass(frozen=True)
class RequestSpec:
    endpoint: Endpoint
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)
    # Free-form label carried into the Result (workload group, conversation id, ...).
    tag: str = ""


@dataclass
class Result:
    index: int
    tag: str = ""
    ok: bool = False
    status: int = 0
    error: str | None = None
    # Seconds from the run's start at which the request was due (open loop) or sent (closed loop).
    start_s: float = 0.0
    # Latencies count from when the request was due, so an open loop that falls behind shows it.
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    e2e_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    backend: str | None = None
    branch: str | None = None
    predicted_ttft_s: float | None = None
    # The first stream chunk's id: the engine's request id (the simulator names its instance there).
    response_id: str | None = None

    @property
    def itl_mean_s(self) -> float | None:
        return sum(self.itl_s) / len(self.itl_s) if self.itl_s else None

    def to_json(self, with_itl: bool = False) -> dict[str, Any]:
        """A flat record for JSON lines; the per-token gaps are summarised unless asked for."""
        record = asdict(self)
        if not with_itl:
            del record["itl_s"]
        record["itl_mean_s"] = self.itl_mean_s
        return record


def _error_message(payload: bytes) -> str:
    """An OpenAI-shaped error body's message, else the first bytes of whatever came back."""
    try:
        data = json.loads(payload)
        error = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(error, dict):
            return str(error.get("message") or error)
        return str(error)
    except ValueError:
        return payload[:200].decode("utf-8", "replace")


def _has_token(chunk: Mapping[str, Any]) -> bool:
    """True when a stream chunk carries generated text (vLLM's first chunk holds only the role)."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        if delta is not None:
            if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
                return True
        elif choice.get("text"):
            return True
    return False


async def send_one(
    session: aiohttp.ClientSession,
    base_url: str,
    spec: RequestSpec,
    index: int,
    due: float,
    run_start: float,
) -> Result:
    """Send one streamed request; never raises for a failed request, the Result says what went wrong.

    `due` is the perf_counter time the request should have gone out; latencies are measured from it.
    """
    result = Result(index=index, tag=spec.tag, start_s=due - run_start)
    body = dict(spec.body)
    body["stream"] = True
    options = dict(body.get("stream_options") or {})
    options["include_usage"] = True
    body["stream_options"] = options
    url = base_url.rstrip("/") + _PATHS[spec.endpoint]
    last_token: float | None = None
    try:
        async with session.post(url, json=body, headers=dict(spec.headers)) as resp:
            result.status = resp.status
            result.backend = resp.headers.get(BACKEND_HEADER)
            result.branch = resp.headers.get(BRANCH_HEADER)
            predicted = resp.headers.get(PREDICTED_TTFT_HEADER)
            result.predicted_ttft_s = float(predicted) / 1000.0 if predicted else None
            if resp.status != 200:
                result.error = f"HTTP {resp.status}: {_error_message(await resp.read())}"
                result.e2e_s = time.perf_counter() - due
                return result
            splitter = EventSplitter()
            done = False
            # iter_any hands over whatever arrived; splitting events ourselves costs one await per
            # network read instead of one per line, which matters with 64 streams on two cores.
            async for data in resp.content.iter_any():
                for event in splitter.feed(data):
                    for payload in data_payloads(event):
                        if payload == b"[DONE]":
                            done = True
                            continue
                        chunk = json.loads(payload)
                        if result.response_id is None:
                            result.response_id = chunk.get("id")
                        if "error" in chunk and not chunk.get("choices"):
                            raise _StreamError(_error_message(payload))
                        if _has_token(chunk):
                            now = time.perf_counter()
                            if last_token is None:
                                result.ttft_s = now - due
                            else:
                                result.itl_s.append(now - last_token)
                            last_token = now
                        usage = chunk.get("usage")
                        if usage:
                            result.prompt_tokens = usage.get("prompt_tokens")
                            result.completion_tokens = usage.get("completion_tokens")
                            details = usage.get("prompt_tokens_details") or {}
                            result.cached_tokens = details.get("cached_tokens")
            result.e2e_s = time.perf_counter() - due
            if not done:
                result.error = "stream ended without [DONE]"
                return result
            result.ok = True
    except _StreamError as exc:
        result.error = f"stream error: {exc}"
        result.e2e_s = time.perf_counter() - due
    # OSError: a reset socket can surface unwrapped on some paths; it is a failed request all the same.
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        result.e2e_s = time.perf_counter() - due
    return result


class _StreamError(Exception):
    pass


def _session(limit: int, timeout_s: float, keepalive: bool) -> aiohttp.ClientSession:
    # keepalive=False opens a connection per request: some servers without TCP_NODELAY hold a
    # reused connection's first stream chunks until the client's delayed ACK (about 40 ms on Linux).
    connector = aiohttp.TCPConnector(limit=limit, force_close=not keepalive)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s))


async def run_closed_loop(
    base_url: str,
    requests: Sequence[RequestSpec],
    concurrency: int,
    progress: Callable[[Result], None] | None = None,
    *,
    timeout_s: float = 600.0,
    keepalive: bool = True,
) -> list[Result]:
    """`concurrency` workers each send their next request as soon as the last one finished.

    Requests go out in list order, so a workload's order (e.g. a conversation's turns) is kept
    within the limits of concurrency. Results come back in list order.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    results: list[Result | None] = [None] * len(requests)
    next_index = 0
    run_start = time.perf_counter()

    async with _session(concurrency, timeout_s, keepalive) as session:
        async def worker() -> None:
            nonlocal next_index
            while next_index < len(requests):
                index = next_index
                next_index += 1
                result = await send_one(session, base_url, requests[index], index, time.perf_counter(), run_start)
                results[index] = result
                if progress is not None:
                    progress(result)

        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(requests)))))
    return [r for r in results if r is not None]


def poisson_arrivals(count: int, rate: float, seed: int = 0) -> list[float]:
    """Arrival offsets (seconds) of a Poisson process with `rate` requests per second."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    rng = random.Random(seed)
    now, offsets = 0.0, []
    for _ in range(count):
        now += rng.expovariate(rate)
        offsets.append(now)
    return offsets


async def run_open_loop(
    base_url: str,
    requests: Sequence[RequestSpec],
    rate_or_timestamps: float | Sequence[float],
    time_scale: float = 1.0,
    progress: Callable[[Result], None] | None = None,
    *,
    seed: int = 0,
    max_in_flight: int = 512,
    timeout_s: float = 600.0,
    keepalive: bool = True,
) -> list[Result]:
    """Send requests at given times regardless of how fast answers come back.

    `rate_or_timestamps` is a Poisson rate (requests per second) or one arrival offset per request
    (seconds from the start, e.g. a trace's timestamps). Both are in the fleet's time: with
    `time_scale` X (as in `kvroute sim --time-scale X`) arrivals come X times faster on the wall clock.
    `max_in_flight` bounds the load this process can put on a machine; a request held back by it still
    counts its latency from when it was due, so the bound shows up as latency, not as a gentler load.
    """
    if time_scale <= 0:
        raise ValueError("time_scale must be positive")
    if isinstance(rate_or_timestamps, (int, float)):
        offsets = poisson_arrivals(len(requests), float(rate_or_timestamps), seed)
    else:
        offsets = [float(t) for t in rate_or_timestamps]
        if len(offsets) != len(requests):
            raise ValueError("one timestamp per request is needed")
    gate = asyncio.Semaphore(max_in_flight)
    results: list[Result | None] = [None] * len(requests)
    run_start = time.perf_counter()

    async with _session(max_in_flight, timeout_s, keepalive) as session:
        async def one(index: int, due: float) -> None:
            async with gate:
                result = await send_one(session, base_url, requests[index], index, due, run_start)
            results[index] = result
            if progress is not None:
                progress(result)

        tasks = []
        for index, offset in sorted(enumerate(offsets), key=lambda pair: pair[1]):
            due = run_start + offset / time_scale
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index, due)))
        await asyncio.gather(*tasks)
    return [r for r in results if r is not None]


# --- summaries ---------------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(results: Sequence[Result], wall_s: float | None = None) -> dict[str, Any]:
    """Counts, latency percentiles (seconds), throughput and prompt-cache hit rate of one run.

    `wall_s` defaults to the span from the first request's start to the last one's end.
    """
    ok = [r for r in results if r.ok]
    if wall_s is None:
        ends = [r.start_s + (r.e2e_s or 0.0) for r in results]
        wall_s = (max(ends) - min(r.start_s for r in results)) if results else 0.0
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    e2e = [r.e2e_s for r in ok if r.e2e_s is not None]
    itl = [gap for r in ok for gap in r.itl_s]
    prompt = sum(r.prompt_tokens or 0 for r in ok)
    cached = sum(r.cached_tokens or 0 for r in ok)
    completion = sum(r.completion_tokens or 0 for r in ok)
    backends: dict[str, int] = {}
    for r in ok:
        if r.backend:
            backends[r.backend] = backends.get(r.backend, 0) + 1
    return {
        "requests": len(results),
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "wall_s": wall_s,
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p90_s": percentile(ttft, 90),
        "ttft_p99_s": percentile(ttft, 99),
        "ttft_mean_s": sum(ttft) / len(ttft) if ttft else None,
        "itl_p50_s": percentile(itl, 50),
        "itl_p99_s": percentile(itl, 99),
        "itl_mean_s": sum(itl) / len(itl) if itl else None,
        "e2e_p50_s": percentile(e2e, 50),
        "e2e_p99_s": percentile(e2e, 99),
        "throughput_rps": len(ok) / wall_s if wall_s > 0 else None,
        "output_tokens_per_s": completion / wall_s if wall_s > 0 else None,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "completion_tokens": completion,
        "cache_hit_rate": cached / prompt if prompt else None,
        "backends": backends,
    }


def calibration(results: Sequence[Result]) -> dict[str, Any]:
    """How the router's predicted TTFT compares with the measured one, over the requests that
    carried a prediction: the ratio measured / predicted (1 = exact, above 1 = the model was
    optimistic), overall and by decision branch. Empty when no response carried one."""
    rows = [(r.branch or "", r.ttft_s / r.predicted_ttft_s) for r in results
            if r.ok and r.ttft_s is not None and r.predicted_ttft_s]
    if not rows:
        return {}

    def spread(ratios: list[float]) -> dict[str, Any]:
        return {"requests": len(ratios), "ratio_p10": percentile(ratios, 10), "ratio_p50": percentile(ratios, 50),
                "ratio_p90": percentile(ratios, 90)}

    by_branch: dict[str, list[float]] = {}
    for branch, ratio in rows:
        by_branch.setdefault(branch, []).append(ratio)
    return {**spread([ratio for _, ratio in rows]),
            "by_branch": {branch: spread(ratios) for branch, ratios in sorted(by_branch.items())}}


class ProgressBar:
    """A one-line progress bar on a terminal (silent when not a TTY); pass it as `progress`."""

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None, width: int = 30) -> None:
        self.total, self.label, self.width = total, label, width
        self.stream = stream if stream is not None else sys.stderr
        self.done = self.errors = 0
        self._enabled = self.stream.isatty()
        self._last_draw = 0.0

    def __call__(self, result: Result) -> None:
        self.done += 1
        self.errors += not result.ok
        now = time.monotonic()
        # Redrawing on every token-heavy completion would cost more than the requests at high rates.
        if self._enabled and (now - self._last_draw > 0.1 or self.done == self.total):
            self._last_draw = now
            filled = self.width * self.done // max(self.total, 1)
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} errors {self.errors}")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()
