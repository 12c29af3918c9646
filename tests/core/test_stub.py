"""The hand-written stub is the contract other code types against: it must match the extension."""

import subprocess
import sys


def test_stub_matches_the_extension() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "kvroute._native"], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
