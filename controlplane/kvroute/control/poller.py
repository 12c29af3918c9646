"""Polls every backend's /metrics, /health and (when needed) /v1/models, and pushes the result into the core.

All backends are polled concurrently, each bounded by `poll_timeout`, so one hung backend delays
nothing but its own data. One poll round is a pass/fail per backend for `Liveness`: the metrics page
must parse and /health must answer 2xx.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import TYPE_CHECKING, Any, Protocol

from kvroute.control.fleet import Backend, Fleet
from kvroute.control.health import CircuitState, ProbeVerdict, probe_verdict
from kvroute.control.metrics import MetricsParseError, counters_reset, parse_metrics
from kvroute.loops import every
from kvroute.proxy.upstream import UpstreamError, UpstreamPool

if TYPE_CHECKING:
    from kvroute.config import Settings

log = logging.getLogger("kvroute.control.poller")

# Served models rarely change; re-read them now and then, and whenever a backend comes back.
MODELS_REFRESH_ROUNDS = 30


class PollErrorSink(Protocol):
    def poll_error(self, backend: str, kind: str) -> None: ...


class PollFailed(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def parse_models(payload: Any) -> list[str]:
    """OpenAI's model list, `{"data": [{"id": ...}, ...]}`, to the model names."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ValueError("not an OpenAI model list")
    return [item["id"] for item in payload["data"] if isinstance(item, dict) and isinstance(item.get("id"), str)]


class Poller:
    def __init__(self, fleet: Fleet, client: UpstreamPool, settings: Settings,
                 errors: PollErrorSink | None = None) -> None:
        self.fleet = fleet
        self.client = client
        self.interval = settings.poll_interval
        self.timeout = settings.poll_timeout
        self.errors = errors
        self.rounds = 0
        # The half-open trial is a real (one-token) completion: give it the data plane's patience.
        self.probe_timeout = settings.first_byte_timeout
        self._probes: dict[str, asyncio.Task[ProbeVerdict]] = {}
        self._busy: dict[str, asyncio.Future[bool]] = {}

    async def _get(self, backend: Backend, path: bytes) -> bytes:
        """The body of a 2xx answer to GET `path`; anything else is a PollFailed."""
        try:
            status, body = await self.client.fetch(backend.url, path, self.timeout)
        except UpstreamError as exc:
            raise PollFailed(exc.kind if exc.kind in ("timeout", "too_large") else "connect", str(exc)) from None
        if status >= 400:
            raise PollFailed("http_status", f"{backend.url}{path.decode()} answered {status}")
        return body

    async def _refresh_models(self, backend: Backend) -> None:
        body = await self._get(backend, b"/v1/models")
        try:
            models = parse_models(json.loads(body))
        except ValueError as exc:
            raise PollFailed("parse", f"/v1/models: {exc}") from None
        backend.models = models
        backend.models_known = True

    async def _poll(self, backend: Backend) -> None:
        # /health and /metrics in parallel: together they cost one round trip, not two.
        _, raw = await asyncio.gather(self._get(backend, b"/health"), self._get(backend, b"/metrics"))
        page = raw.decode("utf-8", "replace")
        try:
            metrics = parse_metrics(page)
        except MetricsParseError as exc:
            raise PollFailed("parse", str(exc)) from None
        # A page that answers but no longer moves (a wedged exporter, a caching proxy in front, an
        # engine that stopped stepping) is as useless as no page. An idle server's page may stand
        # still, so it only counts while the page itself says requests are running: a working engine
        # changes its token counters and histograms every step.
        digest = hash(page)
        frozen = digest == backend.page_digest and bool(metrics.running)
        backend.page_digest = digest
        if frozen:
            raise PollFailed("stale", "metrics page unchanged while it shows running requests")
        if counters_reset(backend.metrics, metrics):
            log.info("backend %s restarted (counters went back); clearing its prefix index", backend.id)
            self.fleet.router.reset_backend(backend.id)
        backend.metrics = metrics
        if not backend.models_known or not backend.healthy or self.rounds % MODELS_REFRESH_ROUNDS == 0:
            await self._refresh_models(backend)

    async def poll_backend(self, backend: Backend) -> bool:
        """Poll one backend, record the outcome, push on change; True when the poll succeeded.

        A caller that finds the backend already being polled (a discovery-triggered poll meeting the
        round's) shares that poll, so one moment of the backend never counts twice towards
        `healthy_after` / `unhealthy_after`.
        """
        running = self._busy.get(backend.id)
        if running is None:
            running = asyncio.ensure_future(self._poll_and_record(backend))
            self._busy[backend.id] = running
            running.add_done_callback(lambda _: self._busy.pop(backend.id, None))
        return await asyncio.shield(running)

    async def _poll_and_record(self, backend: Backend) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                await self._poll(backend)
        except (PollFailed, TimeoutError) as exc:
            kind = exc.kind if isinstance(exc, PollFailed) else "timeout"
            backend.last_error = str(exc) or kind
            if self.errors is not None:
                self.errors.poll_error(backend.id, kind)
            if backend.liveness.record(False):
                log.warning("backend %s unhealthy after %d failed polls: %s",
                            backend.id, backend.liveness.failures, backend.last_error)
            ok = False
        else:
            backend.last_error = ""
            backend.last_poll_ok = self.fleet.clock()
            if backend.liveness.record(True):
                log.info("backend %s healthy again", backend.id)
            ok = True
        if self.fleet.get(backend.id) is backend:  # removed while we were waiting on it: nothing to push
            self.fleet.push(backend)
        return ok

    async def poll_once(self) -> None:
        backends = self.fleet.all()
        if backends:
            await asyncio.gather(*(self.poll_backend(backend) for backend in backends))
        self.rounds += 1
        self.fleet.tick()
        self._start_probes()

    def _start_probes(self) -> None:
        for backend in self.fleet.all():
            if backend.breaker.state is CircuitState.HALF_OPEN and backend.id not in self._probes:
                task = asyncio.get_running_loop().create_task(self.probe(backend), name=f"probe {backend.id}")
                self._probes[backend.id] = task
                task.add_done_callback(functools.partial(self._probe_done, backend.id))

    def _probe_done(self, key: str, _: asyncio.Task[ProbeVerdict]) -> None:
        self._probes.pop(key, None)

    async def _trial(self, backend: Backend) -> tuple[ProbeVerdict, int | None]:
        """One small request of the kind clients send, and its verdict with the status (None: no
        answer). Without known models, /health has to do."""
        try:
            if backend.models:
                ping = json.dumps({"model": backend.models[0], "prompt": "ping", "max_tokens": 1}).encode()
                status, _ = await self.client.fetch(backend.url, b"/v1/completions", self.probe_timeout, ping)
            else:
                status, _ = await self.client.fetch(backend.url, b"/health", self.probe_timeout)
        except UpstreamError:
            return ProbeVerdict.FAILED, None
        return probe_verdict(status), status

    async def probe(self, backend: Backend) -> ProbeVerdict:
        """The half-open trial: only a recovered verdict closes the circuit (health.probe_verdict)."""
        verdict, status = await self._trial(backend)
        if verdict is ProbeVerdict.REJECTED:
            # Most often the model was unloaded or renamed: re-read /v1/models at the next poll so
            # the next probe (and routing) use what the backend serves now.
            backend.models_known = False
        if self.fleet.get(backend.id) is not backend or backend.breaker.state is not CircuitState.HALF_OPEN:
            return verdict  # removed, or a client request's outcome decided first
        backend.breaker.record(verdict is ProbeVerdict.RECOVERED)
        log.info("backend %s: half-open probe %s (status %s), circuit %s", backend.id, verdict.value,
                 status, backend.breaker.state.value)
        self.fleet.push(backend)
        return verdict

    async def close(self) -> None:
        """Cancel the probes and the polls still running (shielded from their callers' cancellation)."""
        pending: list[asyncio.Future[Any]] = [*self._probes.values(), *self._busy.values()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def run(self) -> None:
        await every(self.interval, self.poll_once, log, "poll round", sleep_first=True)


__all__ = ["Poller", "PollErrorSink", "PollFailed", "parse_models"]
