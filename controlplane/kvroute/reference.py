"""Pure-Python model of the native routing core: slow and obvious, decision for decision the same.

`kvroute.reference.Router` has the same constructor and methods as `kvroute.Router` and, given the
same seed and the same calls, returns the same decisions (same backend, branch, ticket, cached
tokens, predicted TTFT, bit for bit): the differential tests in tests/core drive both with random
call sequences and compare. It is also the baseline of the micro benchmarks.

Where the core is clever (a global block map with per-backend LRU slabs, O(1) match steps), this
is plain: one OrderedDict per backend and a membership walk per backend. Where the core streams
bytes, this builds the whole canonical stream. The arithmetic of the cost model is written in the
same order as in rust/core/src/scorer.rs and router/pick.rs so floating point agrees exactly.

Backends fed by KV events (kv_apply / kv_reset / kv_engine_hashes) keep the engine's blocks in a
`KvView` (a dict of engine blocks, descendants found by walking parents) and their in-flight
claims in the same OrderedDict a guess would use; see rust/core/src/kvview.rs and router/kv.rs.

Needs the `xxhash` package (dev extra) for xxh3, the core's block hash.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

import xxhash

from kvroute._native import (
    InvalidConfig,
    MalformedRequest,
    Queued,
    Rejected,
    Routed,
    UnknownBackend,
    UnknownTicket,
    UnknownWait,
)

__all__ = ["Router", "RefRouted", "RefRejected", "RefQueued", "parse", "ParsedRequest"]

M64 = (1 << 64) - 1
FIELD_SEP = b"\x1e"
MSG_END = b"\x1d"
ROOT_SALT = 0x6B76_726F_7574_6500

PRIOR_PREFILL_RATE = 8000.0
PRIOR_DECODE_RATE = 40.0
PRIOR_TTFT_S = 0.1
PRIOR_LATENCY_S = 1.0
PRIOR_OVERHEAD_S = 0.02
PRIOR_MEAN_UNCACHED = 512.0
RATE_SAMPLE_MIN_TOKENS = 256
DEFAULT_CAPACITY_BLOCKS = 65_536

TIERS = ("high", "normal", "low")  # index = rank: lower is more important
DEFAULT_LIMITS: dict[str, tuple[int | None, float | None]] = {
    "high": (None, None),
    "normal": (128, None),
    "low": (32, None),
}

COST_WEIGHTS = {
    "queue_weight": (1.0, 0.0, 100.0),
    "prefill_weight": (1.0, 0.0, 100.0),
    "decode_weight": (0.002, 0.0, 10.0),
    "kv_weight": (0.5, 0.0, 100.0),
    "kv_knee": (0.8, 0.0, 0.999),
    "tie_tolerance": (0.05, 0.0, 10.0),
    "content_weight": (100.0, 0.0, 1000.0),
    "ewma_alpha": (0.2, 0.001, 1.0),
    "load_alpha": (0.02, 0.001, 1.0),
}
POLICY_WEIGHTS: dict[str, dict[str, tuple[float, float, float]]] = {
    "round_robin": {},
    "random": {},
    "least_inflight": {},
    "power_of_two": {},
    "least_load": {},
    "prefix_hash": {"queue_threshold": (8.0, 0.0, 1e9)},
    "session": {"load_factor": (1.25, 1.0, 100.0)},
    "pinned": {},
    "cost": COST_WEIGHTS,
    # the weight of each scorer in the sum of normalised scores, in the order it is summed
    "weighted": {
        "prefix": (1.0, 0.0, 100.0),
        "least_load": (1.5, 0.0, 100.0),
        "least_inflight": (0.0, 0.0, 100.0),
        "cost": (0.0, 0.0, 100.0),
    },
}
WEIGHTED_SCORERS = tuple(POLICY_WEIGHTS["weighted"])
# the scorers each policy's picker reads (ttft, read by admission, is computed under every policy)
POLICY_SCORERS: dict[str, tuple[str, ...]] = {
    "round_robin": (),
    "random": (),
    "least_inflight": ("least_inflight",),
    "power_of_two": ("least_inflight",),
    "session": ("least_inflight",),
    "pinned": ("least_inflight",),
    "least_load": ("least_load",),
    "prefix_hash": ("least_load",),
    "cost": ("cost",),
    "weighted": WEIGHTED_SCORERS,
}
SCORER_ORDER = ("ttft", "cost", "externality", "prefix", "least_load", "least_inflight")  # kvroute.SCORERS
ALL_DEFAULTS = {k: v[0] for spec in POLICY_WEIGHTS.values() for k, v in spec.items()}


# ---------------------------------------------------------------- hashing and request reading


def xxh3(data: bytes, seed: int = 0) -> int:
    return xxhash.xxh3_64_intdigest(data, seed=seed)


def chain_root(model: str) -> int:
    return xxh3(model.encode()) ^ ROOT_SALT


def chain_hashes(data: bytes, block: int, root: int) -> list[int]:
    out, parent = [], root
    for i in range(0, len(data) - block + 1, block):
        parent = xxh3(data[i : i + block], parent)
        out.append(parent)
    return out


def token_block_key(ids: Sequence[int], parent: int) -> int:
    """One block's key in token space: its ids (u32 little-endian) hashed with its parent's key as seed."""
    return xxh3(b"".join(t.to_bytes(4, "little") for t in ids), parent)


def token_chain(ids: Sequence[int], block: int, root: int) -> list[int]:
    out, parent = [], root
    for i in range(0, len(ids) - block + 1, block):
        parent = token_block_key(ids[i : i + block], parent)
        out.append(parent)
    return out


def raw(value: Any) -> bytes:
    """The core hashes raw JSON of opaque fields; compact re-serialisation equals it for compact bodies."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def text_block_bytes(block_tokens: int, bytes_per_token: float) -> int:
    return max(1, math.floor(block_tokens * bytes_per_token + 0.5))


def tokens_for_bytes(n: int, bytes_per_token: float) -> int:
    return math.ceil(n / bytes_per_token)


@dataclass
class ParsedRequest:
    model: str
    stream: bool
    max_tokens: int | None
    prompt_tokens: int
    blocks: list[int]
    system_hash: int


def _bad(param: str | None, message: str) -> MalformedRequest:
    e = MalformedRequest(message)
    e.param = param
    return e


def _message_bytes(m: Any) -> bytes | None:
    """Canonical bytes of one chat message, or None when it is not a message (as serde would say)."""
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        return None
    out = [m["role"].encode(), FIELD_SEP]
    name = m.get("name")
    if name is not None:
        if not isinstance(name, str):
            return None
        out += [name.encode(), FIELD_SEP]
    content = m.get("content")
    if isinstance(content, str):
        out.append(content.encode())
    elif isinstance(content, list):
        for p in content:
            if not isinstance(p, dict):
                return None
            text = p.get("text")
            if text is not None:
                if not isinstance(text, str):
                    return None
                out.append(text.encode())
            for k in ("image_url", "input_audio", "file", "video_url"):
                if p.get(k) is not None:
                    out.append(raw(p[k]))
            out.append(FIELD_SEP)
    elif content is not None:
        return None
    tcid = m.get("tool_call_id")
    if tcid is not None:
        if not isinstance(tcid, str):
            return None
        out += [FIELD_SEP, tcid.encode()]
    if m.get("tool_calls") is not None:
        out += [FIELD_SEP, raw(m["tool_calls"])]
    out.append(MSG_END)
    return b"".join(out)


def _is_u64(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= M64


MAX_DEPTH = 128  # rust/core/src/json_depth.rs


def _deeper_than(body: bytes, limit: int) -> bool:
    depth, i, n = 0, 0, len(body)
    while i < n:
        c = body[i]
        if c == 0x22:  # a string: skip to its closing quote, stepping over escapes
            i += 1
            while i < n and body[i] != 0x22:
                i += 2 if body[i] == 0x5C else 1
            if i >= n:
                return False
        elif c in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif c in (0x5D, 0x7D):
            depth = max(depth - 1, 0)
        i += 1
    return False


def parse(body: bytes, endpoint: str, block_tokens: int = 16, bytes_per_token: float = 4.0) -> ParsedRequest:
    if body.lstrip()[:1] == b"{" and _deeper_than(body, MAX_DEPTH):
        raise _bad(None, f"request body nests arrays or objects deeper than {MAX_DEPTH} levels")
    try:
        top = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(None, f"request body is not valid JSON: {e}") from None
    if not isinstance(top, dict):
        raise _bad(None, "request body must be a JSON object")
    model = top.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model", "`model` must be a string")
    for k in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if top.get(k) is not None and not _is_u64(top[k]):
            raise _bad(k, f"`{k}` must be a non-negative integer")
    if top.get("stream") is not None and not isinstance(top["stream"], bool):
        raise _bad("stream", "`stream` must be a boolean")
    instr = top.get("instructions")
    if instr is not None and not isinstance(instr, str):
        raise _bad("instructions", "`instructions` must be a string")
    msgs = top.get("messages")
    if msgs is not None and (not isinstance(msgs, list) or any(_message_bytes(m) is None for m in msgs)):
        raise _bad("messages", "`messages` must be an array of messages")
    if not model:
        raise _bad("model", "missing required field `model`")
    root = chain_root(model)
    tb = text_block_bytes(block_tokens, bytes_per_token)
    if endpoint == "chat":
        if msgs is None:
            raise _bad("messages", "missing required field `messages`")
        if not msgs:
            raise _bad("messages", "`messages` must not be empty")
        pieces = [_message_bytes(m) or b"" for m in msgs]
        n_sys = 0
        while n_sys < len(msgs) and msgs[n_sys]["role"] in ("system", "developer"):
            n_sys += 1
        stream = b"".join(pieces)
        if top.get("tools") is not None:
            stream = raw(top["tools"]) + MSG_END + stream
        system_hash = xxh3(b"".join(pieces[: max(n_sys, 1)]))
        blocks = chain_hashes(stream, tb, root)
        prompt_tokens = tokens_for_bytes(len(stream), bytes_per_token)
    elif endpoint == "completions":
        p = top.get("prompt")
        if p is None:
            raise _bad("prompt", "missing required field `prompt`")
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            p = p[0]
        if isinstance(p, str):
            data = p.encode()
            blocks = chain_hashes(data, tb, root)
            prompt_tokens = tokens_for_bytes(len(data), bytes_per_token)
        elif isinstance(p, list) and all(_is_u64(t) and t < 2**32 for t in p):
            data = b"".join(t.to_bytes(4, "little") for t in p)
            blocks = token_chain(p, block_tokens, root)
            prompt_tokens = len(p)
        else:
            raise _bad("prompt", "`prompt` must be a string, a token list, or a list of either")
        system_hash = blocks[0] if blocks else xxh3(data)
    elif endpoint in ("embeddings", "responses"):
        inp = top.get("input")
        if inp is None:
            raise _bad("input", "missing required field `input`")
        parts = []
        if instr is not None:
            parts += [b"system", FIELD_SEP, instr.encode(), MSG_END]
        if isinstance(inp, str):
            parts.append(inp.encode())
        elif isinstance(inp, list):
            for item in inp:
                mb = _message_bytes(item)
                parts.append(mb if mb is not None else raw(item) + MSG_END)
        else:
            raise _bad("input", "`input` must be a string or an array")
        stream = b"".join(parts)
        blocks = chain_hashes(stream, tb, root)
        if instr is not None:
            system_hash = xxh3(instr.encode())
        else:
            system_hash = xxh3((blocks[0] if blocks else root).to_bytes(8, "little"))
        prompt_tokens = tokens_for_bytes(len(stream), bytes_per_token)
    else:
        raise InvalidConfig(f"unknown endpoint {endpoint!r}")
    max_tokens = next(
        (top[k] for k in ("max_completion_tokens", "max_tokens", "max_output_tokens") if top.get(k) is not None), None
    )
    return ParsedRequest(model, bool(top.get("stream") or False), max_tokens, prompt_tokens, blocks, system_hash)


# ---------------------------------------------------------------- randomness and hashing helpers


class SplitMix64:
    def __init__(self, seed: int) -> None:
        self.state = seed & M64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        return mix64(self.state)

    def below(self, n: int) -> int:
        return self.next_u64() % n


def mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


# ---------------------------------------------------------------- the exact cache view (KV events)

KV_STATS = ("batches", "stored", "removed", "cleared", "resets", "orphans", "unknown_removals",
            "block_size_mismatch", "other_medium")  # fmt: skip


def engine_hash(h: int | bytes) -> int:
    """vLLM's int block hash, or a sha256 one (bytes) folded to an int as the core does."""
    return xxh3(h) if isinstance(h, bytes) else h


def is_gpu_medium(medium: str | None) -> bool:
    return medium is None or medium.encode().lower() == b"gpu"  # ASCII case only, like Rust


@dataclass
class EngineBlock:
    key: int  # ours: token_block_key along the parent chain
    parent: int | None  # the engine's hash of its parent


class KvView:
    """One engine's cache as its events say (rust/core/src/kvview.rs), as a plain dict of blocks.

    Invariant: every block's parent is in `blocks` (a block is added only on a held parent, and a
    block goes with its whole subtree), so the keys form a prefix-closed set.
    """

    def __init__(self) -> None:
        self.blocks: dict[int, EngineBlock] = {}
        self.confirmed = False
        self.stats = dict.fromkeys(KV_STATS, 0)

    def keys(self) -> set[int]:
        return {b.key for b in self.blocks.values()}

    def matched_blocks(self, chain: list[int]) -> int:
        keys, n = self.keys(), 0
        while n < len(chain) and chain[n] in keys:
            n += 1
        return n

    def reset(self) -> None:
        self.blocks.clear()
        self.confirmed = False
        self.stats["resets"] += 1

    def subtree(self, h: int) -> list[int]:
        """`h` and every block whose parent chain passes through it."""

        def under(x: int | None) -> bool:
            while x is not None:
                if x == h:
                    return True
                x = self.blocks[x].parent
            return False

        return [x for x in self.blocks if under(x)]

    def drop_subtree(self, h: int) -> None:
        for x in self.subtree(h):
            del self.blocks[x]

    def apply(self, model: str, block_tokens: int, events: list[tuple[Any, ...]], bound: int) -> None:
        st = self.stats
        st["batches"] += 1
        self.confirmed = True
        for ev in events:
            if ev[0] == "stored":
                _, raw_hashes, raw_parent, tokens, size, lora_name, medium = ev
                hashes = [engine_hash(h) for h in raw_hashes]
                parent = None if raw_parent is None else engine_hash(raw_parent)
                if not is_gpu_medium(medium):
                    st["other_medium"] += len(hashes)
                    continue
                if size != block_tokens or len(tokens) != len(hashes) * size:
                    st["block_size_mismatch"] += 1
                    continue
                if parent is None:
                    key = chain_root(lora_name if lora_name is not None else model)
                elif parent in self.blocks:
                    key = self.blocks[parent].key
                else:  # events were lost before this run: its prefix is unknown
                    st["orphans"] += len(hashes)
                    continue
                for i, h in enumerate(hashes):
                    key = token_block_key(tokens[i * size : (i + 1) * size], key)
                    old = self.blocks.get(h)
                    if old is None or old.key != key:
                        if old is not None:  # the hash now names other tokens: the old subtree goes
                            self.drop_subtree(h)
                            if parent is not None and parent not in self.blocks:
                                st["orphans"] += len(hashes) - i
                                break
                        self.blocks[h] = EngineBlock(key, parent)
                    st["stored"] += 1
                    parent = h
            elif ev[0] == "removed":
                _, raw_hashes, medium = ev
                if not is_gpu_medium(medium):
                    continue
                for h in map(engine_hash, raw_hashes):
                    if h in self.blocks:
                        st["removed"] += 1
                        self.drop_subtree(h)
                    else:
                        st["unknown_removals"] += 1
            else:
                st["cleared"] += 1
                self.blocks.clear()
        if len(self.blocks) > bound:  # more than the engine can hold: removals were lost
            self.reset()


@dataclass
class EventState:
    """An event-fed backend: the engine's view, and the claims of its in-flight tickets."""

    view: KvView = field(default_factory=KvView)
    claims: dict[int, int] = field(default_factory=dict)  # key -> in-flight tickets whose chain holds it
    claim_epoch: int = 0  # bumped when a restart drops the claims before their tickets end


# ---------------------------------------------------------------- state


def ewma(old: float, sample: float, alpha: float) -> float:
    return old + alpha * (sample - old)


@dataclass
class Backend:
    id: str
    id_hash: int
    models: list[str] = field(default_factory=list)
    healthy: bool = True
    draining: bool = False
    circuit_open: bool = False
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    num_gpu_blocks: int = 0
    block_size: int = 0
    in_flight: int = 0
    pending: int = 0
    pending_tokens: int = 0
    foreign_waiting: int = 0  # the engine's counts beyond ours when they were pushed (core: backend.rs)
    foreign_running: int = 0
    prefill_rate: float = PRIOR_PREFILL_RATE
    decode_rate: float = PRIOR_DECODE_RATE
    ttft_ewma: float = PRIOR_TTFT_S
    latency_ewma: float = PRIOR_LATENCY_S
    overhead_s: float = PRIOR_OVERHEAD_S
    mean_uncached: float = PRIOR_MEAN_UNCACHED
    mean_pending: float = 0.0  # requests waiting for a first token, averaged over decisions (PASTA)
    # The router's guess, or, once the backend is event-fed, only its in-flight claims. Most recent last.
    index: OrderedDict[int, None] = field(default_factory=OrderedDict)
    capacity: int = DEFAULT_CAPACITY_BLOCKS
    events: EventState | None = None

    def serves(self, model: str) -> bool:
        return not self.models or model in self.models

    def usable(self) -> bool:
        return self.healthy and not self.draining and not self.circuit_open

    def queue_depth(self) -> int:
        return max(self.waiting, self.pending)

    def decoding(self) -> int:
        return self.in_flight - self.pending

    def matched_blocks(self, blocks: list[int]) -> int:
        n = 0
        for b in blocks:
            if b not in self.index:
                break
            n += 1
        return n

    def cached_blocks(self, blocks: list[int]) -> int:
        """An event-fed backend is credited with the longer of its confirmed and speculative matches."""
        n = self.matched_blocks(blocks)
        return n if self.events is None else max(n, self.events.view.matched_blocks(blocks))

    def held_blocks(self) -> int:
        # Event-fed: the engine's blocks plus the in-flight chains (the index holds only those).
        return len(self.index) if self.events is None else len(self.events.view.keys()) + len(self.index)

    def insert(self, blocks: list[int]) -> None:
        for b in reversed(blocks):
            self.index[b] = None
            self.index.move_to_end(b)
        self.evict()

    def evict(self) -> None:
        while len(self.index) > self.capacity:
            self.index.popitem(last=False)


@dataclass
class Ticket:
    backend: Backend
    pending_tokens: int
    work_ahead: int
    blocks: list[int]
    pending: bool = True
    ttft_s: float | None = None
    claim_epoch: int | None = None  # the chain is a claim on an event-fed backend (None: a guess)


@dataclass
class Waiter:
    key: tuple[int, int]
    req: ParsedRequest
    session_key: str | None
    exclude: list[str]


# Plain-Python twins of the native decision classes (which cannot be constructed from Python).
@dataclass(frozen=True)
class RefRouted:
    ticket: int
    backend_id: str
    branch: str
    model: str
    stream: bool
    max_tokens: int | None
    prompt_tokens: int
    cached_tokens: int
    predicted_ttft_s: float


@dataclass(frozen=True)
class RefRejected:
    reason: str
    tier: str
    model: str
    retry_after_s: float
    message: str


@dataclass(frozen=True)
class RefQueued:
    wait_id: int
    tier: str
    model: str
    position: int


def as_tuple(d: Routed | Rejected | Queued | RefRouted | RefRejected | RefQueued) -> tuple[Any, ...]:
    """A comparable view of a native or reference decision (for the differential tests)."""
    if isinstance(d, (Routed, RefRouted)):
        return ("routed", d.ticket, d.backend_id, d.branch, d.model, d.stream, d.max_tokens,
                d.prompt_tokens, d.cached_tokens, d.predicted_ttft_s)  # fmt: skip
    if isinstance(d, (Rejected, RefRejected)):
        return ("rejected", d.reason, d.tier, d.model, d.retry_after_s)
    return ("queued", d.wait_id, d.tier, d.model, d.position)


@dataclass
class _Cand:
    b: Backend
    cached_tokens: int
    queue: int
    ttft: float = 0.0
    raw: dict[str, float] = field(default_factory=dict)  # scorer name -> value, as the core computes them


class Router:
    """Same API as kvroute.Router; decisions are RefRouted / RefRejected / RefQueued."""

    def __init__(
        self,
        policy: str = "cost",
        *,
        block_tokens: int = 16,
        bytes_per_token: float = 4.0,
        seed: int = 0,
        wait_queue_size: int = 0,
    ) -> None:
        if not 1 <= block_tokens <= 1 << 16:
            raise InvalidConfig("block_tokens must be in 1..=65536")
        if not (math.isfinite(bytes_per_token) and 0.25 <= bytes_per_token <= 64.0):
            raise InvalidConfig("bytes_per_token must be in 0.25..=64")
        self.block_tokens = block_tokens
        self.bytes_per_token = bytes_per_token
        self.set_policy(policy)
        self.backends: dict[str, Backend] = {}
        self.rng = SplitMix64(seed)
        self.rr_next = 0
        self.next_id = 1
        self.tickets: dict[int, Ticket] = {}
        self.limits = dict(DEFAULT_LIMITS)
        self.tier_stats = {t: {"admitted": 0, "shed": 0, "queued": 0, "queue_full": 0} for t in TIERS}
        self.wait_queue_size = wait_queue_size
        self.waiters: dict[int, Waiter] = {}
        self.branches: dict[str, int] = {}
        self.last: dict[str, Any] | None = None

    # -- configuration

    def set_policy(self, name: str, **weights: float) -> None:
        if name not in POLICY_WEIGHTS:
            raise InvalidConfig(f"unknown policy {name!r}")
        spec = POLICY_WEIGHTS[name]
        w = dict(ALL_DEFAULTS)
        for k, v in weights.items():
            if k not in spec:
                raise InvalidConfig(f"policy {name!r} has no weight {k!r}")
            if isinstance(v, str) or not isinstance(v, (int, float)):
                raise InvalidConfig(f"weight {k!r} must be a number, got {v!r}")
            _, lo, hi = spec[k]
            if not (math.isfinite(v) and lo <= v <= hi):
                raise InvalidConfig(f"weight {k!r} = {v} is outside {lo}..={hi}")
            w[k] = float(v)
        self.policy_name, self.w = name, w

    def policy(self) -> tuple[str, dict[str, float]]:
        return self.policy_name, {k: self.w[k] for k in POLICY_WEIGHTS[self.policy_name]}

    def set_admission(self, tier: str, *, max_queue: int | None = None, max_wait_ms: float | None = None) -> None:
        self._tier(tier)
        if max_wait_ms is not None and not (math.isfinite(max_wait_ms) and max_wait_ms >= 0):
            raise InvalidConfig("max_wait_ms must be a non-negative number")
        self.limits[tier] = (max_queue, max_wait_ms)

    @staticmethod
    def _tier(t: str) -> int:
        if t not in TIERS:
            raise InvalidConfig(f"unknown priority {t!r}")
        return TIERS.index(t)

    # -- backends

    def upsert_backend(self, backend_id: str, **fields: Any) -> None:
        if not backend_id:
            raise InvalidConfig("backend id must not be empty")
        kv = fields.get("kv_usage")
        if kv is not None and not (math.isfinite(kv) and 0.0 <= kv <= 1.0):
            raise InvalidConfig("kv_usage must be a fraction in 0..=1")
        b = self.backends.get(backend_id)
        if b is None:
            b = self.backends[backend_id] = Backend(backend_id, xxh3(backend_id.encode()))
        for k, v in fields.items():
            if v is not None:
                setattr(b, k, list(v) if k == "models" else v)
        if fields.get("waiting") is not None:
            b.foreign_waiting = max(b.waiting - b.pending, 0)
        if fields.get("running") is not None:
            b.foreign_running = max(b.running - b.decoding(), 0)
        cap = b.num_gpu_blocks * b.block_size // self.block_tokens if b.num_gpu_blocks and b.block_size else 0
        b.capacity = cap or DEFAULT_CAPACITY_BLOCKS
        b.evict()

    def _backend(self, backend_id: str) -> Backend:
        try:
            return self.backends[backend_id]
        except KeyError:
            raise UnknownBackend(f"unknown backend {backend_id!r}") from None

    def reset_backend(self, backend_id: str) -> None:
        b = self._backend(backend_id)
        if b.events is not None:  # its engine's blocks and running requests are gone
            b.events.view.blocks.clear()
            b.events.claims.clear()
            b.events.claim_epoch += 1
        b.index.clear()

    # -- KV events

    def _event_state(self, b: Backend) -> EventState:
        if b.events is None:
            b.index.clear()  # guesses made before the events started are not the engine's word
            b.events = EventState()
        return b.events

    def kv_apply(self, backend_id: str, model: str, events: Any) -> None:
        b = self._backend(backend_id)
        bound = max(b.capacity * 4, DEFAULT_CAPACITY_BLOCKS)
        self._event_state(b).view.apply(model, self.block_tokens, list(events), bound)

    def kv_reset(self, backend_id: str) -> None:
        b = self._backend(backend_id)
        if b.events is not None:
            b.events.view.reset()
        else:
            self._event_state(b)

    def kv_engine_hashes(self, backend_id: str) -> list[int]:
        b = self._backend(backend_id)
        return sorted(b.events.view.blocks) if b.events is not None else []

    def remove_backend(self, backend_id: str) -> None:
        self._backend(backend_id)
        del self.backends[backend_id]
        self.last = None  # as the core: the last decision's candidates may name it

    def backend_ids(self) -> list[str]:
        return list(self.backends)

    def in_flight(self, backend_id: str) -> int:
        return self._backend(backend_id).in_flight

    def _live(self, b: Backend) -> bool:
        return self.backends.get(b.id) is b

    # -- routing

    def route(
        self,
        body: bytes,
        endpoint: str = "chat",
        priority: str = "normal",
        session_key: str | None = None,
        exclude: Sequence[str] = (),
    ) -> RefRouted | RefRejected | RefQueued:
        if endpoint not in ("chat", "completions", "embeddings", "responses"):
            raise InvalidConfig(f"unknown endpoint {endpoint!r}")
        tier = self._tier(priority)
        req = parse(body, endpoint, self.block_tokens, self.bytes_per_token)
        return self._decide(req, tier, session_key, list(exclude), None)

    def resume(self, wait_id: int) -> RefRouted | RefRejected | RefQueued:
        w = self.waiters.pop(wait_id, None)
        if w is None:
            raise UnknownWait(f"unknown wait id {wait_id}")
        return self._decide(w.req, w.key[0], w.session_key, w.exclude, (wait_id, w.key[1]))

    def cancel_wait(self, wait_id: int) -> None:
        if self.waiters.pop(wait_id, None) is None:
            raise UnknownWait(f"unknown wait id {wait_id}")

    def _count(self, outcome: str, cands: list[_Cand], chosen: int | None) -> None:
        self.branches[outcome] = self.branches.get(outcome, 0) + 1
        self.last = {
            "outcome": outcome,
            "policy": self.policy_name,
            "candidates": [
                {"backend": c.b.id, "chosen": i == chosen, "cached_tokens": c.cached_tokens, "queue_depth": c.queue,
                 "scores": {k: c.raw[k] for k in SCORER_ORDER if k in c.raw}}
                for i, c in enumerate(cands)
            ],
        }  # fmt: skip

    def _reject(self, reason: str, tier: int, req: ParsedRequest, retry: float, message: str,
                cands: list[_Cand] | None = None) -> RefRejected:
        self._count(reason, cands or [], None)
        return RefRejected(reason, TIERS[tier], req.model, retry, message)

    @staticmethod
    def queue_s(b: Backend) -> float:
        # a waiting queue is prefill work ahead, not a full batch
        return (float(b.pending_tokens) + float(b.foreign_waiting) * b.mean_uncached) / b.prefill_rate

    def predict(self, b: Backend, uncached: int) -> float:
        w = self.w
        rate = b.prefill_rate
        queue_s = self.queue_s(b)
        decoding = float(b.decoding() + b.foreign_running)
        pressure = min(max((b.kv_usage - w["kv_knee"]) / (1.0 - w["kv_knee"]), 0.0), 1.0)
        return (
            b.overhead_s
            + w["queue_weight"] * queue_s
            + w["prefill_weight"] * (float(uncached) / rate)
            + w["decode_weight"] * decoding
            + w["kv_weight"] * pressure
        )

    def _room(self, tier: int, queue: int, ttft: float) -> bool:
        max_queue, max_wait = self.limits[TIERS[tier]]
        return (max_queue is None or queue < max_queue) and (max_wait is None or ttft * 1000.0 < max_wait)

    def _decide(
        self,
        req: ParsedRequest,
        tier: int,
        session_key: str | None,
        exclude: list[str],
        resumed: tuple[int, int] | None,
    ) -> RefRouted | RefRejected | RefQueued:
        # filter
        if not self.backends:
            return self._reject("no_backend", tier, req, 1.0, "no backends are configured")
        serving = [b for b in self.backends.values() if b.serves(req.model)]
        cands = [_Cand(b, 0, b.queue_depth()) for b in serving if b.usable() and b.id not in exclude]
        if not serving:
            return self._reject("unknown_model", tier, req, 0.0, f"no backend serves model {req.model!r}")
        if not cands:
            return self._reject("no_backend", tier, req, 1.0, f"no healthy backend for model {req.model!r}")
        # score, pick, admit
        best_cached = self._score(req, cands)
        pick, branch = self._pick(req, cands, session_key, best_cached)
        return self._admit(req, tier, cands, pick, branch, session_key, exclude, resumed)

    def _weighs(self, scorer: str) -> bool:
        if scorer not in POLICY_SCORERS[self.policy_name]:
            return False
        return self.policy_name != "weighted" or self.w[scorer] > 0.0

    def _score(self, req: ParsedRequest, cands: list[_Cand]) -> int:
        for c in cands:
            n = c.b.cached_blocks(req.blocks)
            # vLLM computes the prompt's last token (its logits) even on a full hit: see decide.rs.
            c.cached_tokens = min(n, max(req.prompt_tokens - 1, 0) // self.block_tokens) * self.block_tokens
        best_cached = max(c.cached_tokens for c in cands)
        for c in cands:  # every decision samples each candidate's prefill queue
            c.b.mean_pending = ewma(c.b.mean_pending, float(c.b.pending + c.b.foreign_waiting), self.w["load_alpha"])
        cost = self._weighs("cost")
        least_held = min(c.b.held_blocks() for c in cands) if cost and best_cached == 0 else 0
        for c in cands:
            uncached = req.prompt_tokens - c.cached_tokens
            c.ttft = c.raw["ttft"] = self.predict(c.b, uncached)
            if cost:
                b = c.b
                # the delay to later arrivals: s more seconds of prefill, times the arrivals that
                # find the queue longer for it (L / m of them per second of busy period)
                s = float(uncached) / b.prefill_rate
                externality = s * (self.queue_s(b) + s / 2.0) * b.mean_pending / (b.overhead_s + b.mean_uncached / b.prefill_rate)
                placement = 0.0
                if best_cached == 0:  # a prompt nobody holds goes where the least is held
                    excess = (b.held_blocks() - least_held) * self.block_tokens
                    placement = self.w["content_weight"] * (float(excess) / b.prefill_rate)
                c.raw["externality"] = externality
                c.raw["cost"] = c.ttft + externality + placement
            if self._weighs("prefix"):
                c.raw["prefix"] = float(c.cached_tokens) / float(req.prompt_tokens) if req.prompt_tokens else 0.0
            if self._weighs("least_load"):
                c.raw["least_load"] = float(c.b.waiting + c.b.in_flight + 1) * c.b.latency_ewma
            if self._weighs("least_inflight"):
                c.raw["least_inflight"] = float(c.b.in_flight)
        return best_cached

    def _admit(self, req: ParsedRequest, tier: int, cands: list[_Cand], pick: int, branch: str,
               session_key: str | None, exclude: list[str], resumed: tuple[int, int] | None,
               ) -> RefRouted | RefRejected | RefQueued:  # fmt: skip
        queue_ahead = self.wait_queue_size > 0 and any(
            w.key[0] <= tier and (resumed is None or w.key < (tier, resumed[1])) and w.req.model == req.model
            for w in self.waiters.values()
        )
        if not self._room(tier, cands[pick].queue, cands[pick].ttft) or queue_ahead:
            spill = None
            if not queue_ahead:
                for i, c in enumerate(cands):
                    if self._room(tier, c.queue, c.ttft) and (spill is None or c.ttft < cands[spill].ttft):
                        spill = i
            if spill is None:
                retry = min(max(min(c.ttft for c in cands), 0.5), 60.0)
                retry = math.ceil(retry * 10.0) / 10.0
                return self._hold_or_shed(req, tier, session_key, exclude, resumed, retry, cands)
            pick, branch = spill, "admission:spill"
        self.tier_stats[TIERS[tier]]["admitted"] += 1
        self._count(branch, cands, pick)
        return self._commit(req, cands[pick], branch)

    def _hold_or_shed(
        self,
        req: ParsedRequest,
        tier: int,
        session_key: str | None,
        exclude: list[str],
        resumed: tuple[int, int] | None,
        retry: float,
        cands: list[_Cand],
    ) -> RefRejected | RefQueued:
        stats = self.tier_stats[TIERS[tier]]
        if self.wait_queue_size == 0:
            stats["shed"] += 1
            msg = f"{TIERS[tier]} priority traffic is over its limit on every backend"
            return self._reject("shed", tier, req, retry, msg, cands)
        if resumed is not None:
            wid, seq = resumed
        else:
            if len(self.waiters) >= self.wait_queue_size:
                stats["queue_full"] += 1
                return self._reject("queue_full", tier, req, retry, "the router's wait queue is full", cands)
            wid = seq = self.next_id
            self.next_id += 1
            stats["queued"] += 1
        key = (tier, seq)
        position = sum(1 for w in self.waiters.values() if w.key < key)
        self.waiters[wid] = Waiter(key, req, session_key, list(exclude))
        self._count("queued", cands, None)
        return RefQueued(wid, TIERS[tier], req.model, position)

    def _commit(self, req: ParsedRequest, c: _Cand, branch: str) -> RefRouted:
        ticket = self.next_id
        self.next_id += 1
        uncached = req.prompt_tokens - c.cached_tokens
        b = c.b
        work_ahead = b.pending_tokens
        b.in_flight += 1
        b.pending += 1
        b.pending_tokens += uncached
        claim_epoch = None
        if b.events is not None:
            for k in req.blocks:
                b.events.claims[k] = b.events.claims.get(k, 0) + 1
            claim_epoch = b.events.claim_epoch
        b.insert(req.blocks)
        self.tickets[ticket] = Ticket(b, uncached, work_ahead, req.blocks, claim_epoch=claim_epoch)
        return RefRouted(ticket, b.id, branch, req.model, req.stream, req.max_tokens, req.prompt_tokens,
                         c.cached_tokens, c.ttft)  # fmt: skip

    def _argmin_tie(self, scores: list[float], tol: float) -> int:
        lo = min(scores)
        limit = lo + abs(lo) * tol
        ties = [i for i, s in enumerate(scores) if s <= limit]
        return ties[0] if len(ties) == 1 else ties[self.rng.below(len(ties))]

    def _lowest(self, cands: list[_Cand], scorer: str) -> int:
        return self._argmin_tie([c.raw[scorer] for c in cands], 0.0)

    def _weighted(self, cands: list[_Cand]) -> int:
        terms = []
        for s in WEIGHTED_SCORERS:
            if self.w[s] > 0.0:
                worst = 0.0
                for c in cands:
                    worst = max(worst, c.raw[s])
                terms.append((s, self.w[s], worst))
        totals = []
        for c in cands:
            total = 0.0
            for s, w, worst in terms:
                v = c.raw[s]
                norm = 1.0 - v if s == "prefix" else (v / worst if worst > 0.0 else 0.0)
                total += w * norm
            totals.append(total)
        return self._argmin_tie(totals, 0.0)

    def _pick(self, req: ParsedRequest, cands: list[_Cand], session_key: str | None,
              best_cached: int) -> tuple[int, str]:
        n, name = len(cands), self.policy_name
        if name == "round_robin":
            i = self.rr_next % n
            self.rr_next += 1
            return i, "round_robin"
        if name == "random":
            return self.rng.below(n), "random"
        if name == "least_inflight":
            return self._lowest(cands, "least_inflight"), "least_inflight"
        if name == "power_of_two":
            if n == 1:
                return 0, "power_of_two"
            i = self.rng.below(n)
            j = self.rng.below(n - 1)
            if j >= i:
                j += 1
            return (j if cands[j].b.in_flight < cands[i].b.in_flight else i), "power_of_two"
        if name == "least_load":
            return self._lowest(cands, "least_load"), "least_load"
        if name == "prefix_hash":
            scores = [mix64(req.system_hash ^ c.b.id_hash) for c in cands]
            i = max(range(n), key=lambda k: (scores[k], -k))  # first of the highest
            if float(cands[i].b.queue_depth()) < self.w["queue_threshold"]:
                return i, "prefix_hash:affinity"
            return self._lowest(cands, "least_load"), "prefix_hash:overflow"
        if name == "session":
            if session_key is None:
                return self._lowest(cands, "least_inflight"), "session:no_key"
            key = xxh3(session_key.encode())
            total = sum(c.b.in_flight for c in cands) + 1
            cap = math.ceil(self.w["load_factor"] * float(total) / float(n))
            ranked = sorted(((mix64(key ^ c.b.id_hash), i) for i, c in enumerate(cands)), reverse=True)
            for rank, (_, i) in enumerate(ranked):
                if cands[i].b.in_flight + 1 <= cap:
                    return i, "session:sticky" if rank == 0 else "session:spill"
            return ranked[0][1], "session:sticky"
        if name == "pinned":
            named = [i for i, c in enumerate(cands) if c.b.id == session_key]
            if named:
                return named[0], "pinned:named"
            return self._lowest(cands, "least_inflight"), "pinned:fallback"
        if name == "weighted":
            return self._weighted(cands), "weighted"
        # cost: minimum score (TTFT + externality + content placement for a cold prompt); near-ties: most cached prefix, then random
        lo = min(c.raw["cost"] for c in cands)
        limit = lo + abs(lo) * self.w["tie_tolerance"]
        near = [k for k, c in enumerate(cands) if c.raw["cost"] <= limit]
        most = max(cands[k].cached_tokens for k in near)
        ties = [k for k in near if cands[k].cached_tokens == most]
        i = ties[0] if len(ties) == 1 else ties[self.rng.below(len(ties))]
        if best_cached == 0:
            return i, "cost:cold"
        return i, "cost:cache_affinity" if cands[i].cached_tokens == best_cached else "cost:load_spread"

    # -- outcomes

    def first_token(self, ticket: int, ttft_s: float) -> None:
        t = self.tickets.get(ticket)
        if t is None:
            raise UnknownTicket(f"unknown ticket {ticket}")
        if not t.pending or not (math.isfinite(ttft_s) and ttft_s >= 0.0):
            return
        t.pending, t.ttft_s = False, ttft_s
        tokens, t.pending_tokens = t.pending_tokens, 0
        b = t.backend
        if not self._live(b):
            return
        b.pending -= 1
        b.pending_tokens -= tokens
        alpha = self.w["ewma_alpha"]
        b.ttft_ewma = ewma(b.ttft_ewma, ttft_s, alpha)
        if t.work_ahead == 0 and tokens < RATE_SAMPLE_MIN_TOKENS:
            b.overhead_s = ewma(b.overhead_s, ttft_s, alpha)

    def release(
        self,
        ticket: int,
        ok: bool,
        prompt_tokens: int = 0,
        cached_tokens: int = 0,
        completion_tokens: int = 0,
        latency_s: float = 0.0,
    ) -> list[int]:
        t = self.tickets.pop(ticket, None)
        if t is None:
            raise UnknownTicket(f"unknown ticket {ticket}")
        b = t.backend
        if self._live(b):
            b.in_flight -= 1
            if t.pending:
                b.pending -= 1
                b.pending_tokens -= t.pending_tokens
            if ok:
                alpha = self.w["ewma_alpha"]
                if math.isfinite(latency_s) and latency_s > 0.0:
                    b.latency_ewma = ewma(b.latency_ewma, latency_s, alpha)
                    if t.ttft_s is not None and completion_tokens > 1 and latency_s > t.ttft_s:
                        sample = float(completion_tokens - 1) / (latency_s - t.ttft_s)
                        b.decode_rate = ewma(b.decode_rate, sample, alpha)
                uncached = prompt_tokens - min(cached_tokens, prompt_tokens)
                if prompt_tokens > 0:
                    b.mean_uncached = ewma(b.mean_uncached, float(uncached), alpha)
                # only an unqueued request measures the prefill rate, by the engine's own count
                if t.ttft_s is not None and t.work_ahead == 0 and uncached >= RATE_SAMPLE_MIN_TOKENS:
                    prefill_s = max(t.ttft_s - b.overhead_s, t.ttft_s * 0.1)
                    if prefill_s > 0.0:
                        sample = min(max(float(uncached) / prefill_s, PRIOR_PREFILL_RATE / 100.0),
                                     PRIOR_PREFILL_RATE * 100.0)
                        b.prefill_rate = ewma(b.prefill_rate, sample, alpha)
                if t.claim_epoch is None and b.events is None:  # the engine just used them: most recent
                    b.insert(t.blocks)
            if t.claim_epoch is not None:
                self._unclaim(b, t)
        return self.wakeable(1)

    @staticmethod
    def _unclaim(b: Backend, t: Ticket) -> None:
        es = b.events
        if es is None or es.claim_epoch != t.claim_epoch:
            return
        for k in reversed(t.blocks):
            if k in es.claims:
                es.claims[k] -= 1
                if es.claims[k] == 0:
                    del es.claims[k]
                    b.index.pop(k, None)

    def wakeable(self, limit: int) -> list[int]:
        out: list[int] = []
        for wid, w in sorted(self.waiters.items(), key=lambda kv: kv[1].key):
            if len(out) >= limit:
                break
            usable = [
                b
                for b in self.backends.values()
                if b.serves(w.req.model) and b.usable() and b.id not in w.exclude
            ]
            room = any(self._room(w.key[0], b.queue_depth(), self.predict(b, w.req.prompt_tokens)) for b in usable)
            if room or not usable:
                out.append(wid)
        return out

    def snapshot(self) -> dict[str, Any]:
        """The subset of the native snapshot the reference models: branch counts and tier stats."""
        return {
            "branches": dict(sorted(self.branches.items())),
            "last_decision": self.last,
            "tiers": {t: dict(s) for t, s in self.tier_stats.items()},
            "in_flight": len(self.tickets),
            "backends": [
                {"id": b.id, "in_flight": b.in_flight, "pending": b.pending, "index_blocks": len(b.index),
                 "kv_events": self._kv_events_snap(b)}
                for b in self.backends.values()
            ],
        }  # fmt: skip

    @staticmethod
    def _kv_events_snap(b: Backend) -> dict[str, Any] | None:
        if b.events is None:
            return None
        v = b.events.view
        return {"confirmed": v.confirmed, "confirmed_blocks": len(v.keys()), "speculative_blocks": len(b.events.claims),
                "engine_blocks": len(v.blocks), **v.stats}  # fmt: skip
