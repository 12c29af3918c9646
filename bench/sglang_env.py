"""The SGLang model gateway (sglang-router from PyPI) in its own virtual environment, built on first use.

It lives outside the project (~/.cache/kvroute/, or $KVROUTE_CACHE) so that it survives clones and
never mixes its pins with kvroute's own environment.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

SGLANG_ROUTER_VERSION = "0.3.2"


def env_dir() -> Path:
    cache = Path(os.environ.get("KVROUTE_CACHE", Path.home() / ".cache" / "kvroute"))
    return cache / f"sglang-router-{SGLANG_ROUTER_VERSION}"


def ensure() -> Path:
    """The environment's python, installing sglang-router on first use; raises RuntimeError if it can't."""
    root = env_dir()
    python = root / "bin" / "python"
    stamp = root / ".stamp"
    if stamp.exists():
        return python
    root.parent.mkdir(parents=True, exist_ok=True)
    # Two benchmark runs starting at once must not build the same environment twice.
    with open(str(root) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            return python
        steps = []
        if not python.exists():
            steps.append([sys.executable, "-m", "venv", str(root)])
        steps.append([str(python), "-m", "pip", "install", "--quiet", f"sglang-router=={SGLANG_ROUTER_VERSION}"])
        steps.append([str(python), "-c", "import sglang_router.launch_router"])
        for argv in steps:
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"cannot build the sglang-router environment ({' '.join(argv)}):\n"
                                   f"{done.stderr[-2000:]}")
        stamp.write_text(SGLANG_ROUTER_VERSION + "\n")
    return python
