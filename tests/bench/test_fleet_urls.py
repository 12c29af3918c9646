"""`python -m bench.run --fleet-urls`: a suite against an already running fleet (here `kvroute sim`
instances in a process of their own, which the bench neither starts nor stops)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from bench import run

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sim_urls(tmp_path: Path) -> Iterator[list[str]]:
    # The sim's clock runs 8x: to the bench it is just a fast real-time fleet.
    argv = [sys.executable, "-m", "bench.simfleet", "--instances", "2", "--time-scale", "8"]
    with open(tmp_path / "sim.log", "w") as log:
        proc = subprocess.Popen(argv, cwd=PROJECT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, (tmp_path / "sim.log").read_text()
        yield json.loads(line)["urls"]
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()  # end of stdin stops the fleet
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_fleet_urls_runs_suite_against_running_fleet(sim_urls: list[str], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert run.main(["--suite", "quick", "--out", str(out), "--workloads", "blog", "--points", "2",
                     "--max-requests", "4", "--contenders", "kvroute:round_robin",
                     "--fleet-urls", ",".join(u + "/" for u in sim_urls)]) == 0
    assert "time scale forced to 1" in capsys.readouterr().err

    data = json.loads((out / "results.json").read_text())
    fleet = data["meta"]["fleet"]
    assert fleet["kind"] == "remote" and fleet["instances"] == 2 and fleet["time_scale"] == 1.0
    assert fleet["remote"] == {"urls": sim_urls, "model": "sim-model", "cache_reset": "yes"}
    [point] = data["points"]
    assert point["error"] is None and point["params"]["time_scale"] == 1.0
    assert point["summary"]["requests"] == 4 and point["summary"]["ok"] == 4
    # The counters were scraped from the running backends: both took requests (round robin).
    assert sum(point["backend"]["requests"]) == 4 and all(n > 0 for n in point["backend"]["requests"])
    assert point["backend"]["prefix_cache_queries"] > 0
    lines = (out / "raw" / "requests.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["ok"] for line in lines)
    assert "prefix caches reset between points" in (out / "report.md").read_text()


def test_fleet_urls_unreachable_url_named(sim_urls: list[str], tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on once it is closed
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(RuntimeError, match=re.escape(f"fleet URL {dead} does not answer GET /v1/models")):
        run.main(["--suite", "quick", "--out", str(tmp_path / "run"), "--workloads", "blog",
                  "--max-requests", "4", "--contenders", "kvroute:round_robin",
                  "--fleet-urls", f"{sim_urls[0]},{dead}"])


def test_fleet_urls_refuses_time_scale(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run.main(["--fleet-urls", "http://127.0.0.1:1", "--time-scale", "2"])
    assert "--time-scale must be 1" in capsys.readouterr().err


async def test_fleet_urls_without_cache_reset_recorded(tmp_path: Path) -> None:
    """A backend without /reset_prefix_cache (vLLM outside dev mode): said once, recorded, not fatal."""
    from aiohttp import web

    from bench.remote_fleet import RemoteFleet

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        with open(tmp_path / "log", "w") as log:
            fleet = RemoteFleet([url], log=log)
            await fleet.start()
            await fleet.reset()
            await fleet.reset()
        assert fleet.model == "m"
        assert fleet.info["remote"]["cache_reset"] == f"no: {url}/reset_prefix_cache: HTTP 404"
        assert (tmp_path / "log").read_text().count("cannot be reset") == 1
        assert "prefix caches NOT reset" in fleet.info["profile"]["name"]
    finally:
        await runner.cleanup()
