"""`kvroute demo --duration` runs the whole path (simulated fleet, router, workload) and ends by itself."""

from __future__ import annotations

import subprocess
import sys

from bench.procs import free_port


def test_demo_prints_a_table_per_backend_and_a_curl_line() -> None:
    port, admin_port = free_port(), free_port()
    out = subprocess.run(
        [sys.executable, "-m", "kvroute.cli", "demo", "--duration", "1", "--port", str(port),
         "--admin-port", str(admin_port), "--requests", "40", "--concurrency", "4"],
        capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    table = out.stdout.split("cached %", 1)[1].split("\n\n", 1)[0].strip().splitlines()
    assert len(table) == 4, out.stdout  # one row per simulated backend: the workload reached all four
    assert sum(int(row.split()[1]) for row in table) == 40
    assert "40/40 requests ok" in out.stdout
    assert f"curl -N http://127.0.0.1:{port}/v1/chat/completions" in out.stdout
