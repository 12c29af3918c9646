"""The gateway pod's fetch-tokenizer init container (python -m kvroute.fetch_tokenizer), run as the
rendered manifest runs it, against a stand-in Hub on 127.0.0.1 (HF_ENDPOINT): the Hub's URL layout,
its redirect of large files to a storage host, a gated repository, a repository without the file."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from deploy_support import KUBE, TINY_TOKENIZER, objects

REPO = "Qwen/Qwen2.5-1.5B-Instruct"


class Hub(http.server.ThreadingHTTPServer):
    token = "hf_secret"
    requests: list[tuple[str, str | None]]


class Handler(http.server.BaseHTTPRequestHandler):
    server: Hub

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.requests.append((self.path, self.headers.get("authorization")))
        prefix = f"/{REPO}/resolve/main/"
        if self.path.startswith("/storage/"):  # the storage host: no token needed, none must arrive
            self._send(200, (TINY_TOKENIZER / self.path.removeprefix("/storage/")).read_bytes())
        elif self.path.startswith("/gated/"):
            self._send(401 if self.headers.get("authorization") != f"Bearer {self.server.token}" else 404, b"")
        elif self.path == prefix + "tokenizer.json":
            self.send_response(302)
            self.send_header("location", "/storage/tokenizer.json")
            self.send_header("content-length", "0")
            self.end_headers()
        elif self.path.startswith(prefix) and (TINY_TOKENIZER / self.path.removeprefix(prefix)).is_file():
            self._send(200, (TINY_TOKENIZER / self.path.removeprefix(prefix)).read_bytes())
        else:
            self._send(404, b"Entry not found")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def hub() -> Iterator[Hub]:
    server = Hub(("127.0.0.1", 0), Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _init_container() -> dict:
    (fetch,) = objects(KUBE)["Deployment", "kvroute"]["spec"]["template"]["spec"]["initContainers"]
    return fetch


def _run(hub: Hub, config: dict, tmp_path: Path, *extra: str, token: str | None = None) -> subprocess.CompletedProcess:
    path = tmp_path / "kvroute.yaml"
    path.write_text(yaml.safe_dump(config))
    command = _init_container()["command"]
    assert command[:3] == ["python", "-m", "kvroute.fetch_tokenizer"]
    args = [a if a != "/etc/kvroute/kvroute.yaml" else str(path) for a in command[3:]]
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{hub.server_address[1]}", "PATH": "/usr/bin:/bin"}
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "kvroute.fetch_tokenizer", *args, *extra], env=env,
                          capture_output=True, text=True, timeout=120)


def _configmap_with_dirs_under(tmp_path: Path) -> tuple[dict, Path]:
    config = yaml.safe_load(objects(KUBE)["ConfigMap", "kvroute-config"]["data"]["kvroute.yaml"])
    ((model, directory),) = config["tokenizer"].items()
    assert model == REPO
    local = tmp_path / "volume" / directory.lstrip("/")
    return {**config, "tokenizer": {model: str(local)}}, local


def test_the_init_container_fills_the_gateways_tokenizer_directory(hub, tmp_path):
    config, directory = _configmap_with_dirs_under(tmp_path)
    done = _run(hub, config, tmp_path, token=hub.token)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in directory.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (directory / name).read_bytes() == (TINY_TOKENIZER / name).read_bytes()
    # The token went to the Hub, not to the storage host the large file was redirected to.
    by_path = dict(hub.requests)
    assert by_path[f"/{REPO}/resolve/main/tokenizer.json"] == f"Bearer {hub.token}"
    assert by_path["/storage/tokenizer.json"] is None
    assert f"/{REPO}/resolve/main/chat_template.jinja" in by_path  # asked for, absent: fine
    # What the gateway then loads: kvroute's own validate() on that configuration.
    from kvroute.config import from_mapping, validate

    assert validate(from_mapping(config, "fetched")).tokenizer == {REPO: str(directory)}
    # A restarted pod (or a PersistentVolumeClaim) that already holds the files asks nothing.
    hub.requests.clear()
    again = _run(hub, config, tmp_path)
    assert again.returncode == 0 and hub.requests == [] and "already there" in again.stdout


def test_environment_beats_the_file_as_in_the_gateway(hub, tmp_path):
    config, _ = _configmap_with_dirs_under(tmp_path)
    other = tmp_path / "other"
    path = tmp_path / "kvroute.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{hub.server_address[1]}", "KVROUTE_TOKENIZER": f"alias={other}"}
    done = subprocess.run([sys.executable, "-m", "kvroute.fetch_tokenizer", "--config", str(path), "--repo",
                           f"alias={REPO}"], env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert (other / "tokenizer.json").is_file()


def test_a_gated_repository_without_a_token_fails_with_the_reason(hub, tmp_path):
    config = {"tokenizer": {"gated/model": str(tmp_path / "gated")}}
    done = _run(hub, config, tmp_path)
    assert done.returncode == 1 and "HTTP 401" in done.stderr and "HF_TOKEN" in done.stderr
    assert not (tmp_path / "gated" / "tokenizer.json").exists()


def test_a_repository_without_tokenizer_json_fails(hub, tmp_path):
    done = _run(hub, {"tokenizer": {"someone/slow-tokenizer-only": str(tmp_path / "m")}}, tmp_path)
    assert done.returncode == 1 and "no tokenizer.json" in done.stderr
