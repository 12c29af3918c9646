"""The peer gateways kvroute is measured against, each from PyPI in its own virtual environment,
built on first use.

The environments live outside the project (~/.cache/kvroute/, or $KVROUTE_CACHE) so that they
survive clones and never mix their pins with kvroute's own environment.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Peer:
    kind: str  # the contender kind: "sglang", "smg", "vllm-router"
    package: str
    version: str
    command: tuple[str, ...]  # what starts its router, relative to the environment's bin/
    check: tuple[str, ...]  # a command (same form) that must succeed once installed

    def env_dir(self) -> Path:
        cache = Path(os.environ.get("KVROUTE_CACHE", Path.home() / ".cache" / "kvroute"))
        return cache / f"{self.package}-{self.version}"

    def argv(self, command: tuple[str, ...] | None = None) -> list[str]:
        name, *rest = command or self.command
        return [str(self.env_dir() / "bin" / name), *rest]

    def ensure(self) -> list[str]:
        """The command that starts the router, installing the package on first use; raises
        RuntimeError if it can't."""
        root = self.env_dir()
        python, stamp = root / "bin" / "python", root / ".stamp"
        if stamp.exists():
            return self.argv()
        root.parent.mkdir(parents=True, exist_ok=True)
        # Two benchmark runs starting at once must not build the same environment twice.
        with open(str(root) + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if stamp.exists():
                return self.argv()
            steps = []
            if not python.exists():
                steps.append([sys.executable, "-m", "venv", str(root)])
            steps.append([str(python), "-m", "pip", "install", "--quiet", f"{self.package}=={self.version}"])
            steps.append(self.argv(self.check))
            for argv in steps:
                done = subprocess.run(argv, capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"cannot build the {self.package} environment ({' '.join(argv)}):\n"
                                       f"{done.stderr[-2000:]}")
            stamp.write_text(self.version + "\n")
        return self.argv()


PEERS: dict[str, Peer] = {peer.kind: peer for peer in (
    # SGLang's Rust gateway as it shipped before its rename.
    Peer("sglang", "sglang-router", "0.3.2", ("python", "-m", "sglang_router.launch_router"),
         ("python", "-c", "import sglang_router.launch_router")),
    # Its successor, the Shepherd Model Gateway.
    Peer("smg", "smg", "1.13.0", ("smg", "launch"), ("smg", "launch", "--help")),
    # vLLM's own Rust router.
    Peer("vllm-router", "vllm-router", "0.1.17", ("vllm-router",), ("vllm-router", "--help")),
)}
