"""The package's modules import one way: no circle, and no module imports one of a higher layer.

The layers, lowest first, are the ones docs/architecture.md draws. Lazy and TYPE_CHECKING imports
count: a cycle hidden behind them is still a cycle for a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "controlplane" / "kvroute"

# Lowest first. A module may import its own layer or lower ones. Prefixes match whole dotted names.
LAYERS: list[tuple[str, ...]] = [
    # leaves: the core, the knobs, logging, background loops, the worker processes' names and files
    ("kvroute._native", "kvroute.tls", "kvroute.model_tokenizers", "kvroute.config", "kvroute.logs", "kvroute.loops",
     "kvroute.workers", "kvroute.control.atomic_file"),
    # the wire: HTTP framing, the upstream client pool, SSE scanning (the proxy's and the poller's)
    ("kvroute.proxy.http", "kvroute.proxy.upstream", "kvroute.proxy.sse"),
    # the fleet as the control plane keeps it: discovery, polling, health, circuit breakers
    ("kvroute.control",),
    # what the router counts: the Observer and the workers' snapshots
    ("kvroute.admin.observe", "kvroute.admin.worker_snapshots"),
    # the data plane proper: client connections, the relay
    ("kvroute.proxy",),
    # the operator's side: admin API and status page
    ("kvroute.admin",),
    ("kvroute.gateway",),  # the composition root
    ("kvroute.cli", "kvroute.demo", "kvroute.fetch_tokenizer"),
]
TOP = len(LAYERS) - 1
# Beside the layers: the simulator, the load generator (and the clients' SSE splitter) and the
# reference model use none of the router; only the top layer (cli, demo) starts them.
APART = ("kvroute.sim", "kvroute.loadgen", "kvroute.sse_lines", "kvroute.reference", "kvroute")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, name: str) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {t for t in imported(p, name) if t in paths and t != name and not name.startswith(t + ".")}
            for name, p in paths.items()}


def layer(name: str) -> int | None:
    """The layer of the most specific entry naming the module or a package of it (proxy.http: the wire)."""
    best: tuple[int, int] | None = None  # (length of the matching prefix, layer)
    for index, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and (best is None or len(p) > best[0]):
                best = (len(p), index)
    return None if best is None else best[1]


def test_every_module_has_a_place():
    homeless = [m for m in graph() if layer(m) is None and not any(m == a or m.startswith(a + ".") for a in APART)]
    assert homeless == [], "add these modules to a layer in tests/test_layers.py and docs/architecture.md"


def test_no_upward_import():
    upward = [(m, t) for m, targets in graph().items() for t in targets
              if layer(m) is not None and layer(t) is not None and layer(t) > layer(m)]  # type: ignore[operator]
    assert upward == []


def test_only_the_top_layer_imports_the_tools_apart():
    crossing = [(m, t) for m, targets in graph().items() if layer(m) not in (None, TOP) for t in targets
                if layer(t) is None and t != "kvroute"]
    assert crossing == []


def test_no_import_circle():
    g = graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
