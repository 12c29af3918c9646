"""/metrics in Prometheus text format with vLLM V1's metric names, help texts and labels
(`model_name`, `engine`), rendered the way prometheus_client renders them (vLLM uses it), so a
parser that reads real vLLM reads the simulator unchanged."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.utils import floatToGoString as _f

if TYPE_CHECKING:
    from .engine import Engine, Histogram


def _labels(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}"


def render(engine: Engine, model_name: str, created: float) -> str:
    base = [("model_name", model_name), ("engine", "0")]
    lb = _labels(base)
    out: list[str] = []

    def gauge(name: str, help_: str, value: float) -> None:
        out.append(f"# HELP {name} {help_}\n# TYPE {name} gauge\n{name}{lb} {_f(value)}\n")

    def counter(name: str, help_: str, series: list[tuple[list[tuple[str, str]], float]]) -> None:
        out.append(f"# HELP {name}_total {help_}\n# TYPE {name} counter\n")
        for extra, v in series:
            out.append(f"{name}_total{_labels(base + extra)} {_f(v)}\n")
        for extra, _ in series:
            out.append(f"{name}_created{_labels(base + extra)} {_f(created)}\n")

    def histogram(name: str, help_: str, h: Histogram) -> None:
        out.append(f"# HELP {name} {help_}\n# TYPE {name} histogram\n")
        acc = 0
        for bound, c in zip(h.bounds, h.counts):
            acc += c
            out.append(f'{name}_bucket{_labels(base + [("le", _f(bound))])} {_f(acc)}\n')
        out.append(f'{name}_bucket{_labels(base + [("le", "+Inf")])} {_f(h.count)}\n')
        out.append(f"{name}_count{lb} {_f(h.count)}\n{name}_sum{lb} {_f(h.sum)}\n")
        out.append(f"{name}_created{lb} {_f(created)}\n")

    st = engine.stats
    kv = engine.kv
    p = engine.profile
    gauge("vllm:num_requests_running", "Number of requests in model execution batches.", len(engine.running))
    gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", len(engine.waiting))
    gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv.usage())
    counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
            [([], st.prefix_queries)])
    counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
            [([], st.prefix_hits)])
    counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", [([], st.preemptions)])
    counter("vllm:prompt_tokens", "Number of prefill tokens processed.", [([], st.prompt_tokens)])
    counter("vllm:generation_tokens", "Number of generation tokens processed.", [([], st.generation_tokens)])
    counter("vllm:request_success", "Count of successfully processed requests.",
            [([("finished_reason", r)], n) for r, n in st.success.items()])
    histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", st.ttft)
    histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", st.e2e)
    histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", st.queue)
    info = [
        ("block_size", str(engine.block_size)),
        ("cache_dtype", "auto"),
        ("calculate_kv_scales", "False"),
        ("cpu_offload_gb", "0"),
        ("enable_prefix_caching", str(kv.enable_prefix_caching)),
        ("gpu_memory_utilization", str(p.gpu_memory_utilization)),
        ("is_attention_free", "False"),
        ("num_cpu_blocks", "None"),
        ("num_gpu_blocks", str(engine.num_gpu_blocks)),
        ("num_gpu_blocks_override", "None"),
        ("prefix_caching_hash_algo", "sha256"),
        ("sliding_window", "None"),
        ("swap_space", "4"),
        ("engine", "0"),
    ]
    out.append("# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
               f"# TYPE vllm:cache_config_info gauge\nvllm:cache_config_info{_labels(info)} 1.0\n")
    return "".join(out)
