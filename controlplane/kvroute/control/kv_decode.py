"""vLLM's KV event batches (msgpack) decoded into plain values, for the routing core.

The payload is msgspec's encoding of KVEventBatch: an array [ts, events, data_parallel_rank?].
Events are tagged structs, a map with a "type" key in vLLM 0.32 (older releases encoded them
array-like, the tag first and the fields in declaration order; both are read). A BlockStored of k
blocks becomes k `Stored` values, one per block, each with its own token ids and its parent's hash,
so a consumer never slices. Block hashes are what vLLM sent (u64 ints by default, sha256 bytes with
VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0): a consumer keys on them, never recomputes them.

Nothing here raises on bad input: the payload comes over the network from a process we do not
control. A batch that cannot be read, or an event in it, is counted in `Batch.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import msgpack

BlockHash = Union[int, bytes]


@dataclass(frozen=True, slots=True)
class Stored:
    block_hash: BlockHash
    parent_hash: BlockHash | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_name: str | None
    medium: str | None


@dataclass(frozen=True, slots=True)
class Removed:
    block_hashes: tuple[BlockHash, ...]
    medium: str | None


@dataclass(frozen=True, slots=True)
class Cleared:
    pass


Event = Union[Stored, Removed, Cleared]


@dataclass(frozen=True, slots=True)
class Batch:
    ts: float | None
    events: tuple[Event, ...]
    data_parallel_rank: int | None
    errors: int  # unreadable events (or 1 for an unreadable batch, then events is empty)


# Field order of the array-like encoding (vLLM before 0.32), after the tag.
_STORED_FIELDS = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name")
_REMOVED_FIELDS = ("block_hashes", "medium")
# No block of any real engine is this large; a bound keeps one hostile event from allocating much.
MAX_BLOCK_SIZE = 1 << 16


class _Bad(Exception):
    pass


def decode_batch(payload: bytes) -> Batch:
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except Exception:  # msgpack raises a dozen types on garbage (ValueError, ExtraData, StackError, ...)
        return Batch(None, (), None, 1)
    if not isinstance(obj, list) or len(obj) not in (2, 3) or not isinstance(obj[1], list):
        return Batch(None, (), None, 1)
    ts = obj[0] if _is_number(obj[0]) else None
    rank = obj[2] if len(obj) == 3 and _is_int(obj[2]) else None
    events: list[Event] = []
    errors = 0 if ts is not None else 1
    for raw in obj[1]:
        try:
            _decode_event(raw, events)
        except _Bad:
            errors += 1
    return Batch(float(ts) if ts is not None else None, tuple(events), rank, errors)


def _decode_event(raw: Any, out: list[Event]) -> None:
    if isinstance(raw, dict):
        tag = raw.get("type")
        fields = raw
    elif isinstance(raw, list) and raw and isinstance(raw[0], str):
        tag = raw[0]
        names = _STORED_FIELDS if tag == "BlockStored" else _REMOVED_FIELDS if tag == "BlockRemoved" else ()
        fields = dict(zip(names, raw[1:]))
    else:
        raise _Bad
    if tag == "AllBlocksCleared":
        out.append(Cleared())
    elif tag == "BlockRemoved":
        hashes = _hashes(fields.get("block_hashes"))
        out.append(Removed(hashes, _opt_str(fields.get("medium"))))
    elif tag == "BlockStored":
        hashes = _hashes(fields.get("block_hashes"))
        parent = fields.get("parent_block_hash")
        if parent is not None and not _is_hash(parent):
            raise _Bad
        tokens = fields.get("token_ids")
        size = fields.get("block_size")
        if (not isinstance(tokens, list) or not _is_int(size) or not 0 < size <= MAX_BLOCK_SIZE
                or len(tokens) != size * len(hashes) or not all(_is_int(t) and t >= 0 for t in tokens)):
            raise _Bad
        lora = _opt_str(fields.get("lora_name"))
        medium = _opt_str(fields.get("medium"))
        for i, h in enumerate(hashes):
            out.append(Stored(h, parent, tuple(tokens[i * size : (i + 1) * size]), size, lora, medium))
            parent = h
    else:
        raise _Bad


def _hashes(raw: Any) -> tuple[BlockHash, ...]:
    if not isinstance(raw, list) or not raw or not all(_is_hash(h) for h in raw):
        raise _Bad
    return tuple(raw)


def _is_hash(h: Any) -> bool:
    return isinstance(h, bytes) or _is_int(h)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def _opt_str(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    raise _Bad


__all__ = ["Batch", "BlockHash", "Cleared", "Event", "Removed", "Stored", "decode_batch"]
