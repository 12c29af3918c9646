"""Fill the directories of the `tokenizer` setting from the Hugging Face Hub, before kvroute starts.

The gateway pod's init container on Kubernetes (deploy/kubernetes/deployment.yaml, the Helm chart):

    python -m kvroute.fetch_tokenizer --config /etc/kvroute/kvroute.yaml

reads the configuration as `kvroute serve` will (the YAML file, then KVROUTE_* variables), and for
every `tokenizer` entry MODEL: DIR downloads MODEL's tokenizer.json, tokenizer_config.json and
chat_template.jinja (the last two where the repository has them) into DIR, then loads DIR with the
same reader the gateway uses, so a bad download fails here and not in a crash-looping gateway.
`kvroute serve` itself never downloads anything. A DIR that already holds tokenizer.json (a
PersistentVolumeClaim, a restarted pod) is left alone.

The served model name is the Hub repository unless `--repo MODEL=REPO` says otherwise (vLLM's
`--served-model-name` set to an alias). HF_TOKEN authenticates (gated models) and is sent to the
Hub only, not to the storage host a download is redirected to; HF_ENDPOINT names a mirror.
Files are fetched from the given `--revision` (default main: what vLLM's own download takes).
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Mapping, Sequence

from kvroute import model_tokenizers
from kvroute.config import ConfigError, Settings, from_env, from_yaml

REQUIRED = ("tokenizer.json",)
OPTIONAL = ("tokenizer_config.json", "chat_template.jinja")
DEFAULT_ENDPOINT = "https://huggingface.co"


class FetchError(RuntimeError):
    pass


def tokenizer_dirs(config_file: str | None, environ: Mapping[str, str]) -> dict[str, str]:
    """The `tokenizer` setting exactly as `kvroute serve` would see it from this file and environment
    (no validate(): that would load the directories this is about to fill)."""
    settings = from_yaml(config_file) if config_file else Settings()
    return dict(from_env(environ, settings).tokenizer)


def _get(url: str, token: str | None, timeout: float) -> bytes | None:
    """The file's bytes, or None when the repository has no such file (404)."""
    request = urllib.request.Request(url, headers={"user-agent": "kvroute-fetch-tokenizer"})
    if token:
        # Unredirected: the Hub answers LFS files with a redirect to a storage host, which must not see it.
        request.add_unredirected_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        hint = " (a gated model: give HF_TOKEN, from the hf-token Secret)" if exc.code in (401, 403) else ""
        raise FetchError(f"{url}: HTTP {exc.code}{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"{url}: {exc}") from None


def fetch(repo: str, directory: Path, revision: str, endpoint: str, token: str | None,
          timeout: float = 60.0) -> list[str]:
    """Writes repo's tokenizer files into directory; returns the names written (none if it was filled)."""
    if (directory / "tokenizer.json").is_file():
        return []
    directory.mkdir(parents=True, exist_ok=True)
    base = f"{endpoint.rstrip('/')}/{urllib.parse.quote(repo)}/resolve/{urllib.parse.quote(revision, safe='')}"
    written = []
    # tokenizer.json last: its presence is what marks the directory complete for the next start.
    for name in (*OPTIONAL, *REQUIRED):
        body = _get(f"{base}/{name}", token, timeout)
        if body is None:
            if name in REQUIRED:
                raise FetchError(f"{repo}@{revision} has no {name} (kvroute needs a fast HF tokenizer)")
            continue
        partial = directory / f".{name}.partial"
        partial.write_bytes(body)
        partial.replace(directory / name)
        written.append(name)
    return written


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvroute.fetch_tokenizer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="kvroute's YAML configuration file (as given to kvroute serve)")
    parser.add_argument("--repo", action="append", default=[], metavar="MODEL=REPO",
                        help="Hub repository of a served model name, where they differ (repeatable)")
    parser.add_argument("--revision", default="main", help="branch, tag or commit of every repository")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request")
    args = parser.parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        dirs = tokenizer_dirs(args.config, env)
    except ConfigError as exc:
        print(f"fetch_tokenizer: {exc}", file=sys.stderr)
        return 2
    repos = dict(item.split("=", 1) for item in args.repo)
    endpoint = env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    try:
        for model, directory in dirs.items():
            repo = repos.get(model, model)
            written = fetch(repo, Path(directory), args.revision, endpoint, env.get("HF_TOKEN") or None,
                            args.timeout)
            model_tokenizers.load_dir(directory)
            print(f"fetch_tokenizer: {model}: {directory} " + (f"<- {repo}@{args.revision}: {', '.join(written)}"
                                                              if written else "already there"), flush=True)
    except (FetchError, model_tokenizers.TokenizerDirError, OSError) as exc:
        print(f"fetch_tokenizer: {exc}", file=sys.stderr)
        return 1
    if not dirs:
        print("fetch_tokenizer: no tokenizer configured, nothing to fetch", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
