"""Checks that need only real vLLM: the fixture page is current, kvroute's parser reads a live
page, and the ZMQ KV-event stream carries BlockStored events in the format pinned here."""

from __future__ import annotations

import time
from pathlib import Path

import msgpack
import pytest
import zmq
from tokenizers import Tokenizer

import capture_metrics
import vllm_fleet
from kvroute.control.metrics import parse_metrics

BLOCK_SIZE = 128  # vLLM CPU's default block size, which the tier does not override
NUM_GPU_BLOCKS = 16384  # VLLM_CPU_KVCACHE_SPACE=1 GiB / (2 layers * K,V * 1 head * 64 * 2 bytes * 128)


def vllm_families(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE vllm:")}


def test_metrics_fixture_is_current(vllm_pair: list[vllm_fleet.VllmServer]) -> None:
    """The parser fixture must describe the pinned vLLM: same metric families as a live page."""
    fixture = capture_metrics.DEFAULT_OUT.read_text()
    live = vllm_pair[0].metrics_text()
    missing, extra = vllm_families(live) - vllm_families(fixture), vllm_families(fixture) - vllm_families(live)
    assert not missing and not extra, (
        f"tests/fixtures/vllm-0.32-metrics.txt is stale (refresh with `make refresh-vllm-fixture`): "
        f"live only {sorted(missing)}, fixture only {sorted(extra)}"
    )


def test_parser_reads_live_page(vllm_pair: list[vllm_fleet.VllmServer]) -> None:
    server = vllm_pair[0]
    before = parse_metrics(server.metrics_text())
    # A prompt of several full blocks, sent twice: the second pass hits the prefix cache.
    prompt = " ".join(f"parser check sentence {i} about routing." for i in range(25))
    for _ in range(2):
        status, body = vllm_fleet.http_post_json(
            server.url + "/v1/completions", {"model": vllm_fleet.SERVED_NAME, "prompt": prompt, "max_tokens": 4}
        )
        assert status == 200, body
    after = parse_metrics(server.metrics_text())

    assert after.block_size == BLOCK_SIZE
    assert after.num_gpu_blocks == NUM_GPU_BLOCKS
    assert after.running == 0 and after.waiting == 0
    assert after.kv_usage is not None and 0.0 <= after.kv_usage <= 1.0
    assert before.prefix_queries is not None and after.prefix_queries is not None
    assert before.prefix_hits is not None and after.prefix_hits is not None
    prompt_tokens = body["usage"]["prompt_tokens"]
    assert after.prefix_queries - before.prefix_queries == 2 * prompt_tokens
    # vLLM always computes the prompt's last token, so the cached part is the full blocks before it.
    assert after.prefix_hits - before.prefix_hits == (prompt_tokens - 1) // BLOCK_SIZE * BLOCK_SIZE


def test_parser_reads_both_fixture_generations() -> None:
    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    new = parse_metrics((fixtures / "vllm-0.32-metrics.txt").read_text())
    old = parse_metrics((fixtures / "vllm-old-metrics.txt").read_text())
    assert (new.block_size, new.num_gpu_blocks) == (BLOCK_SIZE, NUM_GPU_BLOCKS)
    assert new.prefix_hits and new.prefix_queries and new.prefix_hits < new.prefix_queries
    assert (old.running, old.waiting, old.kv_usage, old.block_size, old.num_gpu_blocks) == (3, 2, 0.25, 16, 2048)
    # The old page is the new one renamed: same counters under the old names.
    assert (old.prefix_hits, old.prefix_queries) == (new.prefix_hits, new.prefix_queries)


def decode_kv_message(frames: list[bytes]) -> tuple[int, float, list[dict]]:
    """One ZMQ message of vLLM's KV-event publisher (vllm/distributed/kv_events.py, 0.32).

    Pinned format: multipart [topic, 8-byte big-endian sequence number, msgpack KVEventBatch].
    KVEventBatch is msgspec array_like: [ts, events] plus data_parallel_rank when set. Each event
    is a msgspec tagged struct, i.e. a map whose "type" names the class: "BlockStored" (block_hashes,
    parent_block_hash, token_ids, block_size, ...), "BlockRemoved" (block_hashes, ...) or
    "AllBlocksCleared". Fields left at their defaults are omitted.
    """
    assert len(frames) == 3, f"expected [topic, seq, payload], got {len(frames)} frames"
    topic, seq_bytes, payload = frames
    assert topic == b""
    assert len(seq_bytes) == 8
    batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    assert isinstance(batch, list) and len(batch) in (2, 3), batch
    ts, events = batch[0], batch[1]
    assert isinstance(ts, float) and isinstance(events, list)
    for event in events:
        assert isinstance(event, dict) and event.get("type") in ("BlockStored", "BlockRemoved", "AllBlocksCleared"), event
    return int.from_bytes(seq_bytes, "big"), ts, events


def test_kv_events_block_stored(
    vllm_pair: list[vllm_fleet.VllmServer], kv_events: list[zmq.Socket], tokenizer_json: Path
) -> None:
    server, sub = vllm_pair[1], kv_events[1]
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    prompt = " ".join(f"kv event sentence {i} for the publisher." for i in range(20))
    ids = tokenizer.encode(prompt).ids
    assert len(ids) > 2 * BLOCK_SIZE
    status, body = vllm_fleet.http_post_json(
        server.url + "/v1/completions", {"model": vllm_fleet.SERVED_NAME, "prompt": prompt, "max_tokens": 2}
    )
    assert status == 200, body
    # vLLM's own count of prompt tokens agrees with the tokenizer file the simulator uses.
    assert body["usage"]["prompt_tokens"] == len(ids)

    seqs: list[int] = []
    stored: list[dict] = []
    found = None
    # The events were published before the response was sent; the bound is only for slow delivery.
    deadline = time.monotonic() + 30
    while found is None and time.monotonic() < deadline:
        if not sub.poll(timeout=200):
            continue
        seq, _, events = decode_kv_message(sub.recv_multipart())
        seqs.append(seq)
        for event in events:
            if event["type"] != "BlockStored":
                continue
            stored.append(event)
            tokens = event["token_ids"]
            if event.get("parent_block_hash") is None and tokens and tokens == ids[: len(tokens)]:
                found = event
    assert found is not None, f"no BlockStored for the prompt; got {len(stored)} BlockStored events"
    assert found["block_size"] == BLOCK_SIZE
    # Only full blocks are stored, and vLLM stores every full block of the prompt.
    assert len(found["token_ids"]) == len(ids) // BLOCK_SIZE * BLOCK_SIZE
    assert len(found["block_hashes"]) == len(ids) // BLOCK_SIZE
    assert all(isinstance(h, (bytes, int)) for h in found["block_hashes"])
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "sequence numbers must increase"


@pytest.mark.parametrize("endpoint", ["/health", "/v1/models"])
def test_servers_answer(vllm_pair: list[vllm_fleet.VllmServer], endpoint: str) -> None:
    for server in vllm_pair:
        status, body = vllm_fleet.http_get(server.url + endpoint)
        assert status == 200, body[:200]
