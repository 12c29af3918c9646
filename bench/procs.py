"""Child processes of a benchmark run: free ports, start, wait until ready, stop (only our own pids)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path
from typing import IO, Sequence

import aiohttp


def free_port() -> int:
    """A port the kernel just handed out; the child binds it a moment later (a small, accepted race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Child:
    """One child process in its own session, its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name, self.argv, self.log_path = name, list(argv), log_path
        self.env, self.cwd = env, cwd
        self.proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    async def start(self, stdin_pipe: bool = False, stdout_pipe: bool = False) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE if stdin_pipe else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout_pipe else self._log,
            stderr=self._log,
            env={**os.environ, **(self.env or {})},
            cwd=self.cwd,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, grace_s: float = 5.0) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            # The child leads its own process group: signal the group so that a launcher's own
            # children (sglang_router's Rust server) end with it.
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except asyncio.TimeoutError:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


async def wait_http(url: str, child: Child | None = None, timeout_s: float = 60.0,
                    want: int = 200, body_contains: str | None = None) -> None:
    """Poll `url` until it answers `want` (and the body contains a text, if given)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
        while time.monotonic() < deadline:
            if child is not None and not child.alive():
                raise RuntimeError(f"{child.name} exited early:\n{child.log_tail()}")
            try:
                async with session.get(url) as resp:
                    text = await resp.text()
                    if resp.status == want and (body_contains is None or body_contains in text):
                        return
                    last = f"HTTP {resp.status}: {text[:200]}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.05)
    tail = child.log_tail() if child is not None else ""
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s ({last})\n{tail}")
