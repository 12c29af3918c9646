# Hand-written stub of the native core (rust/py). Checked by `python -m mypy.stubtest kvroute._native`.
from typing import Any, Final, Iterable, Literal, Mapping, Self, Sequence, final

__all__ = [
    "__version__",
    "KvrouteError",
    "MalformedRequest",
    "InvalidConfig",
    "UnknownTicket",
    "UnknownWait",
    "UnknownBackend",
    "Router",
    "Routed",
    "Rejected",
    "Queued",
    "RateLimiter",
    "Tokenizer",
    "Endpoint",
    "Priority",
    "Decision",
    "BRANCHES",
    "REASONS",
    "POLICIES",
    "SCORERS",
    "KEY_SPACES",
]

__version__: Final[str]
# A KV event as Router.kv_apply takes it (vLLM's BlockStored / BlockRemoved / AllBlocksCleared):
# ("stored", block_hashes, parent_hash, token_ids, block_size, lora_name, medium),
# ("removed", block_hashes, medium), ("cleared",). Hashes are ints (u64) or bytes.
_Hash = int | bytes
_KvEvent = (
    tuple[Literal["stored"], Sequence[_Hash], _Hash | None, Sequence[int], int, str | None, str | None]
    | tuple[Literal["removed"], Sequence[_Hash], str | None]
    | tuple[Literal["cleared"]]
)
# Every `Routed.branch` and every `Rejected.reason` the core can return (docs/routing.md lists them).
BRANCHES: Final[tuple[str, ...]]
REASONS: Final[tuple[str, ...]]
# Every policy name `Router(policy)` and `set_policy` accept, and every scorer a decision can report.
POLICIES: Final[tuple[str, ...]]
SCORERS: Final[tuple[str, ...]]
# Every `Routed.key_space`: "tokens" (exact ids), "bytes" (no tokenizer for the model),
# "bytes:tokenize_failed" (the model has one; this prompt could not be tokenized).
KEY_SPACES: Final[tuple[str, ...]]

class KvrouteError(Exception): ...
class MalformedRequest(KvrouteError):
    """The request body is not a valid OpenAI request; `param` names the offending field (or None)."""
    param: str | None
class InvalidConfig(KvrouteError): ...
class UnknownTicket(KvrouteError): ...
class UnknownWait(KvrouteError): ...
class UnknownBackend(KvrouteError): ...

Endpoint = Literal["chat", "completions", "embeddings", "responses"]
Priority = Literal["high", "normal", "low"]

@final
class Routed:
    """The request may go to `backend_id`; report its end with Router.release(ticket, ...)."""
    ticket: int
    backend_id: str
    branch: str            # why this backend, e.g. "cost:cache_affinity", "cost:load_spread", "round_robin"
    model: str
    stream: bool
    max_tokens: int | None
    prompt_tokens: int     # exact with key_space "tokens", else estimated from the body
    cached_tokens: int     # tokens of the prompt the core believes the backend holds
    predicted_ttft_s: float
    key_space: str         # one of KEY_SPACES: what the block keys were made of

@final
class Rejected:
    """Admission said no: `reason` is "shed" (tier over its limit), "no_backend" (none healthy for the model),
    "unknown_model" (no backend serves it) or "queue_full"."""
    reason: str
    tier: str
    model: str
    retry_after_s: float
    message: str

@final
class Queued:
    """Held in the router's wait queue; wait until Router.release(...) lists `wait_id`, then call Router.resume."""
    wait_id: int
    tier: str
    model: str
    position: int

Decision = Routed | Rejected | Queued

@final
class Router:
    # A native class: construction goes through __new__ (callers write Router(...) as always).
    def __new__(
        cls,
        policy: str = "cost",
        *,
        block_tokens: int = 16,
        bytes_per_token: float = 4.0,
        seed: int = 0,
        wait_queue_size: int = 0,
    ) -> Self: ...
    def route(
        self,
        body: bytes,
        endpoint: Endpoint = "chat",
        priority: Priority = "normal",
        session_key: str | None = None,
        exclude: Sequence[str] = (),
    ) -> Routed | Rejected | Queued: ...
    def resume(self, wait_id: int) -> Routed | Rejected | Queued: ...
    def cancel_wait(self, wait_id: int) -> None: ...
    def first_token(self, ticket: int, ttft_s: float) -> None: ...
    def release(
        self,
        ticket: int,
        ok: bool,
        prompt_tokens: int = 0,
        cached_tokens: int = 0,
        completion_tokens: int = 0,
        latency_s: float = 0.0,
    ) -> list[int]: ...
    def upsert_backend(
        self,
        backend_id: str,
        *,
        models: Sequence[str] | None = None,
        healthy: bool | None = None,
        draining: bool | None = None,
        circuit_open: bool | None = None,
        waiting: int | None = None,
        running: int | None = None,
        kv_usage: float | None = None,
        num_gpu_blocks: int | None = None,
        block_size: int | None = None,
    ) -> None: ...
    def reset_backend(self, backend_id: str) -> None: ...
    def kv_apply(self, backend_id: str, model: str, events: Iterable[_KvEvent]) -> None: ...
    def kv_reset(self, backend_id: str) -> None: ...
    def kv_engine_hashes(self, backend_id: str) -> list[int]: ...
    def set_tokenizer(self, model: str, tokenizer: Tokenizer | None) -> None: ...
    def tokenizer_models(self) -> list[str]: ...
    def remove_backend(self, backend_id: str) -> None: ...
    def backend_ids(self) -> list[str]: ...
    def in_flight(self, backend_id: str) -> int: ...
    def set_policy(self, name: str, **weights: float) -> None: ...
    def policy(self) -> tuple[str, dict[str, float]]: ...
    def set_admission(self, tier: Priority, *, max_queue: int | None = None, max_wait_ms: float | None = None) -> None: ...
    def snapshot(self) -> dict[str, Any]: ...

@final
class Tokenizer:
    """A model's tokenizer.json and chat template (file contents, not paths: the core reads no files).
    Raises InvalidConfig when they do not load."""
    def __new__(
        cls,
        tokenizer_json: str,
        tokenizer_config_json: str | None = None,
        chat_template: str | None = None,
        *,
        cache_tokens: int = 4194304,
    ) -> Self: ...
    @property
    def per_message(self) -> bool: ...       # chats go through the per-message prefix cache
    @property
    def has_chat_template(self) -> bool: ...
    @property
    def cached_tokens(self) -> int: ...      # ids the prefix cache holds now
    @property
    def encoded_bytes(self) -> int: ...      # text bytes tokenized so far
    def chat_ids(self, body: bytes) -> list[int]: ...      # MalformedRequest if it cannot be tokenized
    def encode_prompt(self, text: str) -> list[int]: ...

@final
class RateLimiter:
    """Per-API-key token buckets: requests per second (a one-second burst) and tokens per minute (a
    one-minute burst); 0 is unlimited. `per_key` maps a key to (requests_per_s, tokens_per_min).
    `now` is the caller's clock in seconds."""
    def __new__(
        cls,
        *,
        requests_per_s: float = 0.0,
        tokens_per_min: float = 0.0,
        per_key: Mapping[str, tuple[float, float]] = {},
        max_keys: int = 65536,
    ) -> Self: ...
    def enabled(self) -> bool: ...
    def admit(self, key: str, prompt_tokens: int, now: float) -> tuple[str, float] | None: ...
    def charge(self, key: str, tokens: int, now: float) -> None: ...
    def tracked_keys(self) -> int: ...
