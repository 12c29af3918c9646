"""The abi3 wheel from `make wheel` is self-contained: it installs into a new virtual environment and
`kvroute --help` and `kvroute sim` run from there, far from the source tree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench.procs import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheels = sorted((ROOT / "dist").glob("kvroute-*-abi3-*.whl"), key=lambda p: p.stat().st_mtime)
    assert wheels, "no abi3 wheel in dist/: run `make wheel` (make test does)"
    venv = tmp_path_factory.mktemp("wheel-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(wheels[-1])],
        check=True,
    )
    return venv


def test_wheel_cli_help_runs_outside_the_source_tree(wheel_venv: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [str(wheel_venv / "bin" / "kvroute"), "--help"], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert "serve" in out.stdout and "sim" in out.stdout and "demo" in out.stdout
    where = subprocess.run(
        [str(wheel_venv / "bin" / "python"), "-c", "import kvroute._native as n; print(n.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]},
    ).stdout.strip()
    assert where.startswith(str(wheel_venv)), where


def test_wheel_sim_serves_openai_models(wheel_venv: Path, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "sim.log").open("w")
    proc = subprocess.Popen(
        [str(wheel_venv / "bin" / "kvroute"), "sim", "--instances", "1", "--base-port", str(port)],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        models = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as resp:
                    models = json.load(resp)
                break
            except OSError:
                time.sleep(0.2)
        assert models is not None, f"sim never answered; exit={proc.poll()}: {(tmp_path / 'sim.log').read_text()}"
        assert models["object"] == "list" and models["data"], models
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
