"""Check cache-aware routing on a live fleet: send groups of requests that share a long prefix through a
kvroute gateway and compare, request by request, what routing should have gained with what the
servers report they reused.

    python -m bench.fleet_check --url http://kvroute.example:8080 --groups 4 --rounds 6

Each group is one system prompt (random words behind a nonce, so nothing is cached before the run)
asked a different short question each round. For every answer it reads the backend kvroute chose
(`x-kvroute-backend`), the branch that chose it (`x-kvroute-branch`) and
`usage.prompt_tokens_details.cached_tokens` (vLLM with `--enable-prompt-tokens-details`). A request is
*expected warm* when its backend already answered its group earlier in the run, and *warm* when the
server reused at least half of its prompt. The report says how often the two agree, how many
backends each group was spread over, and the share of prompt tokens served from cache. Sequential,
small and safe on a production fleet; it prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from bench.gpu_profile import unique_prompt


@dataclass(frozen=True)
class Answer:
    group: int
    backend: str
    branch: str
    prompt_tokens: int
    cached_tokens: int


def ask(url: str, model: str, system: str, question: str, group: int, api_key: str | None) -> Answer:
    body = {"model": model, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=300) as resp:
        usage = json.loads(resp.read())["usage"]
        backend, branch = resp.headers.get("x-kvroute-backend", "?"), resp.headers.get("x-kvroute-branch", "?")
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return Answer(group, backend, branch, usage["prompt_tokens"], cached)


def summarize(answers: list[Answer]) -> dict[str, Any]:
    """The report, from answers in the order they were received."""
    seen: set[tuple[int, str]] = set()
    agree = expected_warm = warm = 0
    later_prompt = later_cached = 0
    first_of_group: set[int] = set()
    for a in answers:
        expected = (a.group, a.backend) in seen
        actual = a.cached_tokens * 2 >= a.prompt_tokens
        agree += expected == actual
        expected_warm += expected
        warm += actual
        if a.group in first_of_group:  # the group's first request cannot hit anywhere
            later_prompt += a.prompt_tokens
            later_cached += a.cached_tokens
        first_of_group.add(a.group)
        seen.add((a.group, a.backend))
    groups = sorted({a.group for a in answers})
    return {
        "requests": len(answers),
        "expected_warm": expected_warm,
        "warm": warm,
        "agreement": round(agree / len(answers), 3) if answers else None,
        "cached_share_after_first": round(later_cached / later_prompt, 3) if later_prompt else None,
        "backends_per_group": {g: len({a.backend for a in answers if a.group == g}) for g in groups},
        "branches": dict(Counter(a.branch for a in answers)),
    }


def run(url: str, model: str, groups: int, rounds: int, prefix_words: int, api_key: str | None) -> list[Answer]:
    url = url.rstrip("/")
    systems = [unique_prompt(prefix_words) for _ in range(groups)]
    return [ask(url, model, systems[g], f"question {r}: what is {r} + {g}?", g, api_key)
            for r in range(rounds) for g in range(groups)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the kvroute gateway's base URL")
    p.add_argument("--model", help="model to ask for (default: the first /v1/models lists)")
    p.add_argument("--groups", type=int, default=4, help="distinct shared prefixes")
    p.add_argument("--rounds", type=int, default=6, help="requests per prefix")
    p.add_argument("--prefix-words", type=int, default=400, help="length of each shared system prompt")
    p.add_argument("--api-key", help="sent as a Bearer token (a key from api_key_tiers)")
    p.add_argument("--answers", action="store_true", help="also print every answer")
    args = p.parse_args(argv)
    model = args.model
    if not model:
        with urllib.request.urlopen(f"{args.url.rstrip('/')}/v1/models", timeout=30) as resp:
            model = json.loads(resp.read())["data"][0]["id"]
    answers = run(args.url, model, args.groups, args.rounds, args.prefix_words, args.api_key)
    report = summarize(answers)
    if args.answers:
        report["answers"] = [asdict(a) for a in answers]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
