"""Engine timing profiles: how long one scheduler step takes on a given GPU and model.

A step's duration is its compute time (new tokens at the compute-bound prefill rate) plus its
memory time (weights plus the KV cache read once per step, at the achieved memory bandwidth),
plus a fixed per-step overhead. A pure roofline would take the larger of the two terms; the sum
is the conservative reading (small-batch GEMMs do not reach peak and attention does not overlap
the weight stream), and it stays within the H200's measured (eager, launch-bound) upper bounds.
See docs/simulator.md for where each number comes from.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

GIB = 1024**3

# Achieved/datasheet bandwidth seen on the H200 (4.3 TB/s copy vs 4.8 TB/s datasheet); applied
# to GPUs we could not measure (L4, T4).
BANDWIDTH_EFFICIENCY = 4.3 / 4.8
# Dense tensor throughput from the datasheets (TFLOP/s), used to scale the H200's measured
# compute-bound prefill rates. T4 has no bf16: vLLM runs it in fp16.
H200_DENSE_BF16_TFLOPS = 989.4
# Compute-bound prefill rates measured on an H200 (../shared/profiles, rows >= 2048 tokens).
H200_PREFILL_TPS = {"qwen2.5-1.5b": 129_000.0, "llama-3.1-8b": 33_000.0}


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    description: str
    # model shape
    params: float
    num_layers: int
    num_kv_heads: int
    head_dim: int
    bytes_per_param: float = 2.0
    max_model_len: int = 32768
    # GPU
    prefill_tokens_per_s: float = 10_000.0
    memory_bandwidth: float = 300e9  # achieved bytes/s
    step_overhead_s: float = 0.002
    gpu_memory_gib: float = 24.0
    gpu_memory_utilization: float = 0.9
    activation_reserve_gib: float = 1.5
    # vLLM engine configuration
    block_size: int = 16
    num_gpu_blocks: int | None = None  # None: derived from memory (see kv_blocks())
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    chat_template: str = "chatml"
    sources: str = ""

    @property
    def weight_bytes(self) -> float:
        return self.params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> int:
        # K and V, per layer, per KV head, bf16/fp16.
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * 2

    def kv_blocks(self) -> int:
        if self.num_gpu_blocks is not None:
            return self.num_gpu_blocks
        free = (self.gpu_memory_gib * self.gpu_memory_utilization - self.activation_reserve_gib) * GIB
        free -= self.weight_bytes
        return max(2, int(free // (self.kv_bytes_per_token * self.block_size)))

    def step_seconds(self, new_tokens: int, context_tokens: int) -> float:
        """Duration of one engine step computing `new_tokens` (prefill chunks plus one per
        decoding sequence) whose attention reads `context_tokens` cached tokens in total."""
        if new_tokens <= 0:
            return 0.0
        compute = new_tokens / self.prefill_tokens_per_s
        memory = (self.weight_bytes + self.kv_bytes_per_token * context_tokens) / self.memory_bandwidth
        return self.step_overhead_s + compute + memory


_QWEN_1_5B = dict(
    params=1_543_714_304,
    num_layers=28,
    num_kv_heads=2,
    head_dim=128,
    max_model_len=32768,
    chat_template="chatml",
)
_LLAMA_8B = dict(
    params=8_030_261_248,
    num_layers=32,
    num_kv_heads=8,
    head_dim=128,
    max_model_len=131072,
    chat_template="llama3",
)

# GPUs: dense tensor TFLOP/s (bf16; fp16 on the T4, which has no bf16) and memory bandwidth from
# the datasheets, or measured where we could (H100 bandwidth); memory as nvidia-smi reports it.
# Scheduler limits are vLLM's defaults for its OpenAI server: 256 sequences and 2,048 batched
# tokens below 70 GiB of GPU memory, 1,024 and 8,192 above.
_GPUS: dict[str, dict[str, Any]] = {
    "l4": dict(label="one NVIDIA L4 (24 GB)", tflops=121.0, memory_bandwidth=300e9 * BANDWIDTH_EFFICIENCY,
               gpu_memory_gib=22.5, activation_reserve_gib=1.5, max_num_seqs=256, max_num_batched_tokens=2048,
               decode="roofline at L4 datasheet 300 GB/s x 0.9"),
    "t4": dict(label="one NVIDIA T4 (16 GB)", tflops=65.0, memory_bandwidth=320e9 * BANDWIDTH_EFFICIENCY,
               gpu_memory_gib=15.0, activation_reserve_gib=1.5, max_num_seqs=256, max_num_batched_tokens=2048,
               decode="roofline at T4 datasheet 320 GB/s x 0.9"),
    # H100 SXM and H200 share the same compute (989.4 dense bf16 TFLOP/s): measured rate as is.
    "h100": dict(label="one NVIDIA H100 SXM (80 GB)", tflops=H200_DENSE_BF16_TFLOPS, memory_bandwidth=3.0e12,
                 step_overhead_s=0.003, gpu_memory_gib=79.6, activation_reserve_gib=4.0, max_num_seqs=1024,
                 max_num_batched_tokens=8192, decode="roofline at 3.0 TB/s measured on an H100"),
}
_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen2.5-1.5b": ("Qwen2.5-1.5B-Instruct", _QWEN_1_5B),
    "llama-3.1-8b": ("Llama-3.1-8B-Instruct", _LLAMA_8B),
}


def _builtin(model: str, gpu: str) -> Profile:
    title, shape = _MODELS[model]
    spec = dict(_GPUS[gpu])
    label, tflops, decode = spec.pop("label"), spec.pop("tflops"), spec.pop("decode")
    return Profile(
        name=f"{model}-{gpu}",
        description=f"{title}, {'fp16' if gpu == 't4' else 'bf16'}, {label}",
        **shape,
        **spec,
        # The H200's measured compute-bound prefill rate x the datasheet TFLOP/s ratio.
        prefill_tokens_per_s=H200_PREFILL_TPS[model] * tflops / H200_DENSE_BF16_TFLOPS,
        sources=f"prefill: H200 measurement x datasheet TFLOP/s ratio ({tflops:g}/{H200_DENSE_BF16_TFLOPS:g}); "
                f"decode: {decode}",
    )


BUILTIN: dict[str, Profile] = {p.name: p for p in (_builtin("qwen2.5-1.5b", "l4"), _builtin("qwen2.5-1.5b", "t4"),
                                                   _builtin("llama-3.1-8b", "h100"))}


def load_profile(spec: str | Profile | None, **overrides: Any) -> Profile:
    """A built-in profile by name, or a YAML file (optionally with `base: <builtin>`), with
    engine overrides (None values ignored) applied on top."""
    if isinstance(spec, Profile):
        prof = spec
    elif spec is None or spec in BUILTIN:
        prof = BUILTIN[spec or "qwen2.5-1.5b-l4"]
    elif spec.endswith((".yaml", ".yml")) or Path(spec).is_file():
        import yaml  # type: ignore[import-untyped]

        data = yaml.safe_load(Path(spec).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"profile {spec}: expected a mapping")
        base = BUILTIN[data.pop("base", "qwen2.5-1.5b-l4")]
        data.setdefault("name", Path(spec).stem)
        prof = _replace(base, data)
    else:
        raise ValueError(f"unknown profile {spec!r}; built-in: {', '.join(BUILTIN)}")
    return _replace(prof, {k: v for k, v in overrides.items() if v is not None})


def _replace(prof: Profile, fields: dict[str, Any]) -> Profile:
    known = {f.name for f in dataclasses.fields(Profile)}
    unknown = set(fields) - known
    if unknown:
        raise ValueError(f"unknown profile fields: {', '.join(sorted(unknown))}")
    out = dataclasses.replace(prof, **fields)
    if out.block_size <= 0 or out.max_num_seqs <= 0 or out.max_num_batched_tokens <= 0:
        raise ValueError("block_size, max_num_seqs and max_num_batched_tokens must be positive")
    if not math.isfinite(out.prefill_tokens_per_s) or out.prefill_tokens_per_s <= 0:
        raise ValueError("prefill_tokens_per_s must be positive")
    return out
