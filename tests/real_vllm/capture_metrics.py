"""Captures a real vLLM `/metrics` page as the parser fixture tests/fixtures/vllm-0.32-metrics.txt.

    .venv/bin/python tests/real_vllm/capture_metrics.py [--env DIR] [--url URL] [--out PATH]

Without --url it starts one vLLM server from the environment made by `make vllm-env`
(KVROUTE_VLLM_ENV or --env) with the tier's tiny model, and stops it afterwards. It first sends
a few requests so that the page carries what a busy server's page carries: non-zero prefix-cache
hits (one prompt sent twice), both endpoints, a streamed answer, filled histograms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import tiny_model
import vllm_fleet

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "fixtures" / "vllm-0.32-metrics.txt"
# Long enough to fill more than one 128-token block, so the repeat scores a prefix-cache hit.
WARM_PROMPT = " ".join(f"The gateway routes request number {i} to a warm server." for i in range(40))


def warm_up(url: str) -> None:
    model = vllm_fleet.SERVED_NAME
    for _ in range(2):
        status, body = vllm_fleet.http_post_json(
            url + "/v1/completions", {"model": model, "prompt": WARM_PROMPT, "max_tokens": 8}
        )
        assert status == 200, body
    status, body = vllm_fleet.http_post_json(
        url + "/v1/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8},
    )
    assert status == 200, body
    request = urllib.request.Request(
        url + "/v1/completions",
        data=json.dumps({"model": model, "prompt": "stream me", "max_tokens": 8, "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        assert resp.status == 200
        resp.read()  # the whole stream, up to [DONE]


def settled_page(url: str, tries: int = 50) -> str:
    """The page once no request is running, so the fixture shows an idle server's gauges."""
    for _ in range(tries):
        _, body = vllm_fleet.http_get(url + "/metrics")
        text = body.decode()
        if vllm_fleet.metric_sum(text, "vllm:num_requests_running") == 0:
            return text
        time.sleep(0.2)
    return text


def capture(url: str, out: Path) -> None:
    warm_up(url)
    text = settled_page(url)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE vllm:")}
    print(f"wrote {out}: {len(text)} bytes, {len(families)} vllm: families", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=os.environ.get(vllm_fleet.ENV_VAR), help="vLLM environment (make vllm-env)")
    parser.add_argument("--url", help="use this running vLLM server instead of starting one")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.url:
        capture(args.url.rstrip("/"), args.out)
        return 0
    problem = vllm_fleet.env_problem(args.env)
    if problem:
        parser.error(problem)
    env_dir = Path(args.env)
    model = tiny_model.ensure_model(env_dir / "bin" / "python")
    with tempfile.TemporaryDirectory(prefix="kvroute-capture-") as tmp:
        server = vllm_fleet.VllmServer(env_dir, model, Path(tmp) / "vllm.log")
        try:
            vllm_fleet.start_all([server])
            capture(server.url, args.out)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
