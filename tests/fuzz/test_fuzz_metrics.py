"""The vLLM /metrics parser on hostile pages: whatever a backend serves, the parser answers with
metrics the core accepts, or with MetricsParseError (the poller's "parse" failure), nothing else.
Seeds are the pages captured from real vLLM (tests/fixtures)."""

from __future__ import annotations

import math
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from kvroute import Router
from kvroute.control.metrics import BackendMetrics, MetricsParseError, parse_metrics
from tests.fuzz.budget import budget

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REAL_PAGES = [p.read_text() for p in sorted(FIXTURES.glob("*metrics*.txt"))]
FAMILIES = ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
            "vllm:gpu_cache_usage_perc", "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
            "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:cache_config_info"]
HOSTILE_NUMBERS = ["NaN", "+Inf", "-Inf", "-1", "-0", "1e308", "1.7976931348623157e308", "9" * 400, "1e-400",
                   "0x10", "1_000", "", "inf", "\u0661"]


def accept(metrics: BackendMetrics) -> None:
    """What the poller does with a parsed page: hand it to the core (Fleet.push)."""
    router = Router("cost")
    router.upsert_backend("b", models=["m"], healthy=True, waiting=metrics.waiting, running=metrics.running,
                          kv_usage=metrics.kv_usage, num_gpu_blocks=metrics.num_gpu_blocks,
                          block_size=metrics.block_size)
    router.route(b'{"model":"m","messages":[{"role":"user","content":"hello"}]}', "chat")


def check_page(page: str) -> None:
    try:
        metrics = parse_metrics(page)
    except MetricsParseError:
        return
    if metrics.kv_usage is not None:
        assert 0.0 <= metrics.kv_usage <= 1.0
    for value in metrics.counters():
        assert value is None or math.isfinite(value)
    accept(metrics)


def escape_label(value: str) -> str:
    """Prometheus text format: backslash, double quote and newline are escaped in label values."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


sample_line = st.builds(
    lambda name, labels, value: f"{name}{{{labels}}} {value}" if labels is not None else f"{name} {value}",
    st.sampled_from(FAMILIES),
    st.none() | st.lists(st.tuples(st.sampled_from(["engine", "model_name", "num_gpu_blocks", "block_size", "x"]),
                                   st.text(max_size=20)), max_size=4).map(
        lambda pairs: ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs)),
    st.sampled_from(HOSTILE_NUMBERS) | st.floats(allow_nan=True).map(repr) | st.integers().map(str),
)


@budget(300)
@given(st.lists(sample_line | st.text(max_size=80), max_size=30).map("\n".join))
@example("vllm:num_requests_running -3\nvllm:num_requests_waiting 1e308\nvllm:num_requests_waiting 1e308\n")
@example('vllm:cache_config_info{num_gpu_blocks="inf",block_size="-16"} 1\n')
@example('vllm:cache_config_info{num_gpu_blocks="-5",block_size="1e30"} 1\n')
@example("vllm:prompt_tokens_total 1.7e308\nvllm:prompt_tokens_total 1.7e308\n")
def test_any_page_parses_to_what_the_core_accepts_or_to_a_parse_error(page: str) -> None:
    check_page(page)


@budget(100)
@given(st.sampled_from(REAL_PAGES), st.data())
def test_real_pages_with_hostile_values(page: str, data: st.DataObject) -> None:
    """A real page with some of its sample values replaced: what a broken or hostile exporter sends."""
    lines = page.splitlines()
    for i in data.draw(st.lists(st.integers(0, len(lines) - 1), max_size=8)):
        head, sep, _ = lines[i].rpartition(" ")
        lines[i] = head + sep + data.draw(st.sampled_from(HOSTILE_NUMBERS) | st.text(max_size=10))
    check_page("\n".join(lines))


@budget(200)
@given(
    running=st.integers(0, 10**6), waiting=st.integers(0, 10**6), blocks=st.integers(1, 10**7),
    block_size=st.sampled_from([1, 16, 32, 128]), model=st.text(max_size=40), v1=st.booleans(),
)
def test_hostile_label_values_do_not_change_the_numbers(running: int, waiting: int, blocks: int, block_size: int,
                                                         model: str, v1: bool) -> None:
    """The served model name is chosen by whoever runs the server and lands in every label set; a name
    that looks like other labels, braces or numbers must not move what the router reads."""
    labels = f'engine="0",model_name="{escape_label(model)}"'
    kv = "vllm:kv_cache_usage_perc" if v1 else "vllm:gpu_cache_usage_perc"
    page = "\n".join([
        f"vllm:num_requests_running{{{labels}}} {running}.0",
        f"vllm:num_requests_waiting{{{labels}}} {waiting}.0",
        f"{kv}{{{labels}}} 0.5",
        f'vllm:cache_config_info{{block_size="{block_size}",{labels},num_gpu_blocks="{blocks}"}} 1.0',
    ])
    m = parse_metrics(page)
    assert (m.running, m.waiting, m.kv_usage, m.num_gpu_blocks, m.block_size) == (
        running, waiting, 0.5, blocks, block_size)
