"""vllm-router's kv_aware contender meets the exact fleet and is given its event sources."""

from __future__ import annotations

import pytest

from bench import contenders

FLEET = {"tokenizer": "/models/sim", "profile": {"block_size": 16},
         "kv_events": {"http://a:1": {"endpoint": "tcp://a:5", "replay_endpoint": "tcp://a:6"},
                       "http://b:2": {"endpoint": "tcp://b:5", "replay_endpoint": None}}}


def test_kv_aware_needs_the_exact_fleet_and_gets_every_source():
    assert contenders.by_name("vllm-router:kv_aware").exact
    assert not contenders.by_name("vllm-router:cache_aware").exact
    flags = contenders.vllm_router_kv_flags(FLEET)
    assert flags == ["--kv-event-model", "/models/sim", "--kv-event-block-size", "16",
                     "--kv-event-source", "http://a:1=tcp://a:5", "--kv-event-replay-source", "http://a:1=tcp://a:6",
                     "--kv-event-source", "http://b:2=tcp://b:5"]
    with pytest.raises(ValueError):
        contenders.vllm_router_kv_flags({"profile": {"block_size": 16}})
