"""The /metrics parser on small inline pages (both vLLM naming generations) and on captured fixtures."""

from pathlib import Path

import pytest

from kvroute.control.metrics import BackendMetrics, MetricsParseError, counters_reset, parse_metrics

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

V1_PAGE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 2.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="tiny"} 1000.0
vllm:prefix_cache_queries_created{engine="0",model_name="tiny"} 1.7e9
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="tiny"} 400.0
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 1234.0
vllm:generation_tokens_total{engine="0",model_name="tiny"} 99.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="tiny"} 0.0
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="128",cache_dtype="auto",enable_prefix_caching="True",engine="0",num_gpu_blocks="16384",sliding_window="None"} 1.0
python_gc_objects_collected_total{generation="0"} 12.0
"""

OLD_PAGE = """\
vllm:num_requests_running{model_name="m"} 1.0
vllm:num_requests_waiting{model_name="m"} 0.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
vllm:gpu_prefix_cache_queries_total{model_name="m"} 10.0
vllm:gpu_prefix_cache_hits_total{model_name="m"} 5.0
vllm:cache_config_info{block_size="16",num_gpu_blocks="2048"} 1.0
"""

TWO_ENGINES = """\
vllm:num_requests_running{engine="0",model_name="m"} 1.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
vllm:num_requests_waiting{engine="1",model_name="m"} 1.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.4
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 10.0
vllm:prefix_cache_queries_total{engine="1",model_name="m"} 30.0
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="100"} 1.0
vllm:cache_config_info{block_size="16",engine="1",num_gpu_blocks="100"} 1.0
"""


def test_v1_names():
    m = parse_metrics(V1_PAGE)
    assert (m.running, m.waiting, m.kv_usage) == (3, 2, 0.25)
    assert (m.prefix_queries, m.prefix_hits, m.prefix_hit_rate) == (1000.0, 400.0, 0.4)
    assert (m.prompt_tokens, m.generation_tokens) == (1234.0, 99.0)
    assert (m.num_gpu_blocks, m.block_size) == (16384, 128)


def test_older_names():
    m = parse_metrics(OLD_PAGE)
    assert (m.running, m.waiting, m.kv_usage) == (1, 0, 0.5)
    assert (m.prefix_queries, m.prefix_hits) == (10.0, 5.0)
    assert (m.num_gpu_blocks, m.block_size) == (2048, 16)


def test_label_sets_are_combined():
    m = parse_metrics(TWO_ENGINES)
    assert (m.running, m.waiting) == (3, 5)
    assert m.kv_usage == pytest.approx(0.3)  # a fraction: averaged, not summed
    assert m.prefix_queries == 40.0
    assert m.prefix_hits is None and m.prefix_hit_rate is None
    assert (m.num_gpu_blocks, m.block_size) == (200, 16)


def test_missing_families_are_none_and_foreign_pages_fail():
    assert parse_metrics("vllm:num_requests_waiting 7\n") == BackendMetrics(waiting=7)
    with pytest.raises(MetricsParseError):
        parse_metrics("<html>502 Bad Gateway</html>")
    with pytest.raises(MetricsParseError):
        parse_metrics("")


def test_garbage_lines_are_skipped():
    m = parse_metrics('vllm:num_requests_running{engine="0" 1\nvllm:num_requests_running NaN\n'
                      'vllm:num_requests_running{a="b"} x\nvllm:num_requests_running 2 1700000000000\n')
    assert m.running == 2


def test_cache_config_labels_in_any_order():
    m = parse_metrics('vllm:cache_config_info{cpu_offload_num_gpu_blocks="5",block_size="32",'
                      'note="a \\"quoted\\", value",num_gpu_blocks="7"} 1.0\n')
    assert (m.num_gpu_blocks, m.block_size) == (7, 32)


def test_counter_reset():
    before = parse_metrics(V1_PAGE)
    after = BackendMetrics(prefix_queries=5.0, prefix_hits=0.0, prompt_tokens=5.0, generation_tokens=1.0)
    assert counters_reset(before, after)
    assert not counters_reset(before, before)
    assert not counters_reset(None, after)
    assert not counters_reset(after, BackendMetrics(waiting=1))  # a family missing is not a reset


@pytest.mark.parametrize("name", ["vllm-0.32-metrics.txt", "vllm-old-metrics.txt"])
def test_captured_pages(name):
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"{path} not captured yet")
    m = parse_metrics(path.read_text())
    assert m.running is not None and m.waiting is not None
    assert m.kv_usage is not None and 0.0 <= m.kv_usage <= 1.0
    assert m.prefix_queries is not None and m.prefix_hits is not None
    assert m.num_gpu_blocks and m.block_size
