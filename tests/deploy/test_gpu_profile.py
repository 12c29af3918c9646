"""bench/gpu_profile.py: the model-shape arithmetic against the shipped profiles' published numbers,
the fit, and whole runs against real servers: the simulator here (fast, every time), and real vLLM in
the real-vLLM tier (bounded: one server, three prompt lengths, about two minutes with start-up). The
written file must load as `kvroute sim --profile FILE` loads it. Timings are never asserted."""

from __future__ import annotations

import json
import os
import sys

import pytest
import yaml

from bench import gpu_profile
from bench.vllmfleet import TIER
from kvroute.sim.profiles import BUILTIN, load_profile
from sim_process import running_sim, sim_url  # noqa: F401  (sim_url is a fixture)

QWEN_2_5_1_5B = {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                 "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                 "tie_word_embeddings": True}
LLAMA_3_1_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                "tie_word_embeddings": False, "attention_bias": False}


@pytest.mark.parametrize("config,builtin", [(QWEN_2_5_1_5B, "qwen2.5-1.5b-l4"), (LLAMA_3_1_8B, "llama-3.1-8b-h100")])
def test_model_shape_matches_the_published_parameter_counts(config, builtin):
    # The config.json values of the two models; profiles.py holds their published parameter counts.
    base = BUILTIN[builtin]
    assert gpu_profile.model_shape(config) == {"params": float(base.params), "num_layers": base.num_layers,
                                               "num_kv_heads": base.num_kv_heads, "head_dim": base.head_dim}


def test_fit_line_recovers_a_line_and_refuses_one_length():
    assert gpu_profile.fit_line([(100, 0.03), (1100, 0.13), (2100, 0.23)]) == pytest.approx((0.02, 1e-4))
    with pytest.raises(ValueError):
        gpu_profile.fit_line([(100, 0.1), (100, 0.2)])


def test_the_profile_reproduces_the_measured_decode_step():
    shape = gpu_profile.model_shape(QWEN_2_5_1_5B)
    measured = gpu_profile.Measurement(prefill=[(256, 0.05), (1024, 0.14), (2048, 0.26)], decode_step_s=0.02,
                                       decode_context=300, block_size=16, num_gpu_blocks=1000, max_model_len=8192,
                                       served_model="m")
    fields = gpu_profile.profile_fields(shape, measured, memory_bandwidth=300e9)
    profile = load_profile("qwen2.5-1.5b-l4", **{k: v for k, v in fields.items() if k != "sources"})
    # The overhead is what the decode step leaves after its compute and memory terms: one stream's step
    # in the simulator is then the measured one.
    assert profile.step_seconds(1, measured.decode_context) == pytest.approx(0.02, rel=1e-3)
    assert profile.prefill_tokens_per_s == pytest.approx(1 / gpu_profile.fit_line(
        [(float(n), t) for n, t in measured.prefill])[1], rel=1e-3)
    assert (profile.block_size, profile.kv_blocks(), profile.max_model_len) == (16, 1000, 8192)


def _run(url: str, out, *extra: str) -> dict:
    assert gpu_profile.main(["--url", url, "--out", str(out), "--lengths", "128,512,1024", "--repeats", "2",
                             "--decode-tokens", "16", *extra]) == 0
    written = yaml.safe_load(out.read_text())
    profile = load_profile(str(out))
    assert profile.name == out.stem and profile.prefill_tokens_per_s > 0 and profile.step_overhead_s >= 0
    assert "bench.gpu_profile against" in profile.sources
    return written


def test_profiles_the_simulator(sim_url, tmp_path):  # noqa: F811
    # The fixture's simulator runs the default profile, qwen2.5-1.5b-l4.
    written = _run(sim_url, tmp_path / "sim-l4.yaml", "--base", "qwen2.5-1.5b-l4")
    base = BUILTIN["qwen2.5-1.5b-l4"]
    # Read from the server, not assumed: the simulator reports its profile's cache geometry.
    assert (written["block_size"], written["num_gpu_blocks"]) == (base.block_size, base.kv_blocks())
    assert written["params"] == base.params and written["max_model_len"] == base.max_model_len
    # And the simulator itself starts from the file.
    with running_sim("--profile", str(tmp_path / "sim-l4.yaml")) as started:
        assert (started["profile"], started["block_size"], started["num_gpu_blocks"]) == (
            "sim-l4", base.block_size, base.kv_blocks())


@pytest.mark.real_vllm
@pytest.mark.timeout(600)
def test_profiles_a_real_vllm_server(tmp_path):
    if str(TIER) not in sys.path:
        sys.path.insert(0, str(TIER))
    import tiny_model  # type: ignore[import-not-found]
    import vllm_fleet  # type: ignore[import-not-found]

    problem = vllm_fleet.env_problem(os.environ.get(vllm_fleet.ENV_VAR))
    if problem:
        pytest.skip(problem)
    env = vllm_fleet.Path(os.environ[vllm_fleet.ENV_VAR])
    model = tiny_model.ensure_model(env / "bin" / "python")
    server = vllm_fleet.VllmServer(env_dir=env, model_dir=model, log_path=tmp_path / "vllm.log")
    vllm_fleet.start_all([server])
    try:
        written = _run(server.url, tmp_path / "tiny-cpu.yaml", "--model-config", str(model / "config.json"))
    finally:
        server.stop()
    config = json.loads((model / "config.json").read_text())
    assert written["num_layers"] == config["num_hidden_layers"] and written["head_dim"] == config["head_dim"]
    # vLLM's own cache geometry, from its /metrics (cache_config_info).
    assert written["block_size"] > 0 and written["num_gpu_blocks"] > 0
    assert written["max_model_len"] == vllm_fleet.MAX_MODEL_LEN
    with running_sim("--profile", str(tmp_path / "tiny-cpu.yaml")) as started:
        assert (started["block_size"], started["num_gpu_blocks"]) == (written["block_size"], written["num_gpu_blocks"])
