"""/metrics in Prometheus text format as vLLM 0.32's API server writes it (checked against the
page captured from real vLLM, tests/fixtures/vllm-0.32-metrics.txt): V1 metric names and help
texts, labels sorted by name (`engine`, `model_name`, ...), counters declared under their
`_total` name, `_created` timestamps as separate gauges, histogram `_count` before `_sum`
(prometheus_client's multiprocess collector, which vLLM's server uses)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.utils import floatToGoString as _f

if TYPE_CHECKING:
    from .engine import Engine, Histogram

FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")


def _labels(pairs: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{pairs[k]}"' for k in sorted(pairs)) + "}"


def render(engine: Engine, model_name: str, created: float) -> str:
    base = {"engine": "0", "model_name": model_name}
    lb = _labels(base)
    out: list[str] = []

    def gauge(name: str, help_: str, value: float) -> None:
        out.append(f"# HELP {name} {help_}\n# TYPE {name} gauge\n{name}{lb} {_f(value)}\n")

    def created_gauge(name: str, help_: str, label_sets: list[dict[str, str]]) -> None:
        out.append(f"# HELP {name}_created {help_}\n# TYPE {name}_created gauge\n")
        for extra in label_sets:
            out.append(f"{name}_created{_labels(base | extra)} {_f(created)}\n")

    def counter(name: str, help_: str, series: list[tuple[dict[str, str], float]]) -> None:
        out.append(f"# HELP {name}_total {help_}\n# TYPE {name}_total counter\n")
        for extra, v in series:
            out.append(f"{name}_total{_labels(base | extra)} {_f(v)}\n")
        created_gauge(name, help_, [extra for extra, _ in series])

    def histogram(name: str, help_: str, h: Histogram) -> None:
        out.append(f"# HELP {name} {help_}\n# TYPE {name} histogram\n")
        acc = 0
        for bound, c in zip(h.bounds, h.counts):
            acc += c
            out.append(f"{name}_bucket{_labels(base | {'le': _f(bound)})} {_f(acc)}\n")
        out.append(f"{name}_bucket{_labels(base | {'le': '+Inf'})} {_f(h.count)}\n")
        out.append(f"{name}_count{lb} {_f(h.count)}\n{name}_sum{lb} {_f(h.sum)}\n")
        created_gauge(name, help_, [{}])

    st = engine.stats
    kv = engine.kv
    p = engine.profile
    gauge("vllm:num_requests_running", "Number of requests in model execution batches.", len(engine.running))
    gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", len(engine.waiting))
    gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv.usage())
    counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
            [({}, st.prefix_queries)])
    counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
            [({}, st.prefix_hits)])
    counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", [({}, st.preemptions)])
    counter("vllm:prompt_tokens", "Number of prefill tokens processed.", [({}, st.prompt_tokens)])
    counter("vllm:prompt_tokens_by_source", "Number of prompt tokens by source.",
            [({"source": "local_compute"}, st.prompt_tokens - st.prompt_cached),
             ({"source": "local_cache_hit"}, st.prompt_cached),
             ({"source": "external_kv_transfer"}, 0)])
    counter("vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external).",
            [({}, st.prompt_cached)])
    counter("vllm:generation_tokens", "Number of generation tokens processed.", [({}, st.generation_tokens)])
    counter("vllm:request_success", "Count of successfully processed requests.",
            [({"finished_reason": r}, st.success.get(r, 0)) for r in FINISHED_REASONS])
    histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", st.ttft)
    histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", st.e2e)
    histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", st.queue)
    info = {
        "block_size": str(engine.block_size),
        "cache_dtype": "auto",
        "enable_prefix_caching": str(kv.enable_prefix_caching),
        "engine": "0",
        "gpu_memory_utilization": str(p.gpu_memory_utilization),
        "is_attention_free": "False",
        "kv_cache_size_tokens": str(engine.num_gpu_blocks * engine.block_size),
        "num_cpu_blocks": "None",
        "num_gpu_blocks": str(engine.num_gpu_blocks),
        "num_gpu_blocks_override": "None",
        "prefix_caching_hash_algo": "sha256",
        "sliding_window": "None",
    }
    out.append("# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
               f"# TYPE vllm:cache_config_info gauge\nvllm:cache_config_info{_labels(info)} 1.0\n")
    return "".join(out)
