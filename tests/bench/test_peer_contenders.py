"""The peer contenders added for issue 14 start in front of a simulated fleet and answer through it.

Each peer runs from its own environment (bench/peer_env.py, built from PyPI on first use); the
test skips only when that environment can't be built here.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from bench import contenders, peer_env, run
from bench.harness import FleetProc

NEW = ("smg:cache_aware", "smg:least_load", "vllm-router:cache_aware", "vllm-router:power_of_two")


def test_every_contender_records_its_package_version_and_flags() -> None:
    assert set(NEW) <= set(run.ALL_CONTENDERS)
    for name in run.ALL_CONTENDERS:
        record = contenders.by_name(name).describe()
        assert record["name"] == name and isinstance(record["flags"], list)
        if record["kind"] in peer_env.PEERS:
            peer = peer_env.PEERS[record["kind"]]
            assert (record["package"], record["version"]) == (peer.package, peer.version)
            assert record["flags"] == list(contenders.PEER_FLAGS[record["kind"]])
        else:
            assert record["kind"] in ("kvroute", "direct")
    assert contenders.by_name("kvroute:cost").describe()["package"] == "kvroute"


async def test_new_peer_contenders_answer_through_the_fleet(tmp_path: Path) -> None:
    for kind in {name.partition(":")[0] for name in NEW}:
        try:
            peer_env.PEERS[kind].ensure()
        except RuntimeError as exc:
            pytest.skip(f"the {kind} environment cannot be built here: {exc}")
    fleet = FleetProc(2, "qwen2.5-1.5b-l4", 4.0, 0, tmp_path)
    await fleet.start()
    try:
        async with aiohttp.ClientSession() as session:
            for name in NEW:
                running = await contenders.start(contenders.by_name(name), fleet.urls, tmp_path, fleet.model)
                try:
                    assert f"--policy {name.partition(':')[2]} " in " ".join(running.argv) + " "
                    for i in range(3):
                        body = {"model": fleet.model, "max_tokens": 4, "stream": False,
                                "messages": [{"role": "user", "content": f"hello {name} {i}"}]}
                        async with session.post(running.base_url + "/v1/chat/completions", json=body) as resp:
                            text = await resp.text()
                            assert resp.status == 200, (name, text)
                            assert "choices" in text
                finally:
                    await running.stop()
    finally:
        await fleet.stop()
