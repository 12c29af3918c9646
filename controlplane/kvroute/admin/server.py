"""The admin API (FastAPI), the status page and the router's own /metrics, on their own port.

Served by uvicorn inside the gateway's event loop (one process, one loop: the admin API reads the same
fleet and router the data plane uses, with no locks). Mutating and reading routes under /admin need
the bearer token; `/` (a static page that fetches /admin with the token) and `/metrics` (Prometheus
scrapers rarely carry tokens; it holds no secrets) do not. Without a token the server refuses to
bind anything but loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException  # also what an unknown path or method raises

from kvroute.admin import audit
from kvroute.admin.observe import CONTENT_TYPE
from kvroute.admin.worker_snapshots import summed_in_flight
from kvroute.config import U64_MAX, as_dict, check_admin_exposure, is_loopback
from kvroute.control.fleet import Backend, Fleet, backend_id_for
from kvroute.control.operator import Conflict, NotFound, OperatorError
from kvroute.proxy.http import error_object

if TYPE_CHECKING:
    from kvroute._native import Router
    from kvroute.admin.observe import Observer
    from kvroute.config import Settings
    from kvroute.control.plane import ControlPlane

log = logging.getLogger("kvroute.admin")

STATUS_PAGE = Path(__file__).with_name("static") / "status.html"


def _error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    """OpenAI's error shape, like every other error the router returns."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_object(message, kind, code),
                        status_code=status, headers=headers)


class _ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorAnswer(BaseModel):
    """OpenAI's error shape (error_object), in which every admin error is answered."""

    error: _ErrorDetail


# Documented on every route, so the OpenAPI document lists the answers clients really get
# (schemathesis checks it in tests/fuzz); a malformed request is a 400 here, not FastAPI's 422.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorAnswer, "description": what} for status, what in (
        (400, "Invalid request"), (401, "Missing or wrong admin token"), (404, "No such backend"),
        (409, "Conflicts with the fleet's state"))
}


class AdminError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class BackendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="base URL of a vLLM server, e.g. http://10.0.0.5:8000")


class PolicyUpdate(BaseModel):
    """Every field optional; fields carry the same names as the settings (YAML/env/CLI)."""

    model_config = ConfigDict(extra="forbid")
    policy: str | None = None
    weights: dict[str, float] | None = None
    queue_threshold_high: int | None = Field(None, ge=0, le=U64_MAX)
    queue_threshold_normal: int | None = Field(None, ge=0, le=U64_MAX)
    queue_threshold_low: int | None = Field(None, ge=0, le=U64_MAX)
    max_wait_ms_high: float | None = Field(None, ge=0)
    max_wait_ms_normal: float | None = Field(None, ge=0)
    max_wait_ms_low: float | None = Field(None, ge=0)


def create_app(settings: Settings, router: Router, fleet: Fleet, observer: Observer, control: ControlPlane) -> FastAPI:
    # The operator applies every change; each is then recorded for the other workers and for
    # restarts (control/shared_state.py).
    operator, shared = control.operator, control.shared

    def require_token(request: Request) -> None:
        token = settings.admin_token
        if not token:
            return  # only reachable on loopback: start() refuses anything else
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            audit.refused(request, "missing or wrong admin token")
            raise AdminError(401, "missing or wrong admin token", "authentication_error")

    app = FastAPI(title="kvroute admin", version="1", docs_url="/docs", openapi_url="/openapi.json",
                  responses=ERROR_RESPONSES)
    guarded = [Depends(require_token)]

    @app.exception_handler(AdminError)
    async def _admin_error(request: Request, exc: AdminError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.kind)

    @app.exception_handler(OperatorError)
    async def _refused(request: Request, exc: OperatorError) -> JSONResponse:
        if isinstance(exc, NotFound):
            return _error(404, str(exc), "not_found_error")
        if isinstance(exc, Conflict):
            return _error(409, str(exc), "conflict_error")
        return _error(400, str(exc), "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(400, f"{where}: {first.get('msg', 'invalid request')}", "invalid_request_error")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), "invalid_request_error")

    def backend_states(backends: list[Backend]) -> list[dict[str, Any]]:
        core = _core_backends(router)
        events = control.kv_feed.states()
        others_in_flight = summed_in_flight(observer.others())  # the other workers' requests there
        states = []
        for backend in backends:
            state = fleet.state(backend)
            state["in_flight"] += others_in_flight.get(backend.id, 0)
            if backend.id in core:
                state["core"] = core[backend.id]  # learned rates, estimated cache hits: whatever the core reports
            # The KV event subscription (sequence, lag, gaps recovered); the view itself is in core.kv_events.
            state["kv_events"] = events.get(backend.id)
            states.append(state)
        return states

    def backend_state(backend_id: str) -> dict[str, Any]:
        return backend_states([operator.backend(backend_id)])[0]

    def placement(backend_id: str) -> dict[str, Any] | None:
        """What an operator's change to a backend alters, for the audit line."""
        backend = fleet.get(backend_id)
        if backend is None:
            return None
        return {"url": backend.url, "drained": backend.drained, "retiring": backend.retiring}

    def changed(request: Request, action: str, target: str, before: Any, after: Any) -> None:
        audit.changed(request, bool(settings.admin_token), action, target, before, after)

    @app.get("/admin/backends", dependencies=guarded, summary="Every backend with its full state")
    async def list_backends() -> dict[str, Any]:
        return {"backends": backend_states(fleet.all())}

    @app.get("/admin/backends/{backend_id}", dependencies=guarded, summary="One backend's full state")
    async def get_backend(backend_id: str) -> dict[str, Any]:
        return backend_state(backend_id)

    @app.post("/admin/backends", dependencies=guarded, status_code=201, summary="Add a backend")
    async def add_backend(body: BackendIn, request: Request) -> dict[str, Any]:
        try:
            before = placement(backend_id_for(body.url))  # a retiring backend revived
        except ValueError:
            before = None  # a bad URL: the operator refuses it just below
        backend_id = await operator.add(body.url)
        shared.added(body.url)
        changed(request, "add_backend", backend_id, before, placement(backend_id))
        return backend_state(backend_id)

    @app.delete("/admin/backends/{backend_id}", dependencies=guarded,
                summary="Remove a backend: drained now, removed when nothing is in flight on it")
    async def remove_backend(backend_id: str, request: Request) -> dict[str, Any]:
        before = placement(backend_id)
        operator.remove(backend_id)
        shared.removed(backend_id)
        changed(request, "remove_backend", backend_id, before, placement(backend_id))
        return {"id": backend_id, "removed": fleet.get(backend_id) is None}

    @app.post("/admin/backends/{backend_id}/drain", dependencies=guarded,
              summary="Finish in-flight requests, take no new ones")
    async def drain(backend_id: str, request: Request) -> dict[str, Any]:
        before = placement(backend_id)
        operator.drain(backend_id, True)
        shared.drained(backend_id, True)
        changed(request, "drain", backend_id, before, placement(backend_id))
        return backend_state(backend_id)

    @app.post("/admin/backends/{backend_id}/undrain", dependencies=guarded, summary="Take new requests again")
    async def undrain(backend_id: str, request: Request) -> dict[str, Any]:
        before = placement(backend_id)
        operator.drain(backend_id, False)
        shared.drained(backend_id, False)
        changed(request, "undrain", backend_id, before, placement(backend_id))
        return backend_state(backend_id)

    @app.get("/admin/policy", dependencies=guarded, summary="Routing policy, its weights, admission limits")
    async def get_policy() -> dict[str, Any]:
        return operator.policy()

    @app.put("/admin/policy", dependencies=guarded, summary="Change policy, weights and/or admission limits")
    async def put_policy(body: PolicyUpdate, request: Request) -> dict[str, Any]:
        limits = body.model_dump(exclude_none=True, exclude={"policy", "weights"})
        before = operator.policy()
        operator.set_policy(body.policy, body.weights, limits)
        state = operator.policy()
        shared.policy(state["policy"], state["weights"], limits)
        changed(request, "set_policy", "policy", before, state)
        return state

    @app.get("/admin/stats", dependencies=guarded, summary="Router-wide counters and fleet summary")
    async def stats() -> dict[str, Any]:
        backends = fleet.all()
        snapshot = _snapshot(router)
        snapshot.pop("backends", None)
        others = observer.others()
        return {
            **observer.router_totals(others),
            "backends": {
                "total": len(backends),
                "routable": sum(b.routable() for b in backends),
                "healthy": sum(b.healthy for b in backends),
                "stale": sum(b.stale for b in backends),
                "draining": sum(b.draining for b in backends),
                "circuit_open": sum(b.breaker.is_open for b in backends),
            },
            "in_flight": sum(router.in_flight(b.id) for b in backends) + sum(summed_in_flight(others).values()),
            "policy": router.policy()[0],
            "core": snapshot,
            # This worker's event-loop tasks: flat under steady load, growing with a leak (bench/soak.py).
            "process": {"tasks": len(asyncio.all_tasks())},
        }

    @app.get("/admin/config", dependencies=guarded, summary="Effective settings (token masked)")
    async def config() -> dict[str, Any]:
        return as_dict(settings)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(observer.render(), media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def status_page() -> HTMLResponse:
        return HTMLResponse(STATUS_PAGE.read_text())

    return app


def _snapshot(router: Any) -> dict[str, Any]:
    try:
        snapshot = router.snapshot()
    except Exception:  # the status page must not die with a core that cannot describe itself
        log.exception("router.snapshot() failed")
        return {}
    return snapshot


def _core_backends(router: Any) -> dict[str, Any]:
    """The core's per-backend view (a list in its snapshot), keyed by id."""
    return {item["id"]: item for item in _snapshot(router).get("backends", [])}


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the gateway owns SIGINT/SIGTERM; uvicorn must not take them over


class AdminServer:
    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None], host: str, port: int) -> None:
        self.server = server
        self.task = task
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        self.server.should_exit = True
        await self.task


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


async def start(settings: Settings, app: FastAPI) -> AdminServer:
    check_admin_exposure(settings)  # again here: a Gateway may be built from Settings without load()
    # Binding ourselves gives the real port before serving (admin_port 0 in tests) and fails loudly here.
    sock = _bind(settings.admin_host, settings.admin_port)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=5, ssl_certfile=settings.tls_certfile or None,
                            ssl_keyfile=settings.tls_keyfile or None)
    server = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name="admin server")
    while not server.started:
        if task.done():
            await task  # raises what went wrong
            raise RuntimeError("admin server stopped during start-up")
        await asyncio.sleep(0.01)
    port = sock.getsockname()[1]
    log.info("admin API on %s:%s", settings.admin_host, port)
    return AdminServer(server, task, settings.admin_host, port)


__all__ = ["AdminServer", "create_app", "is_loopback", "start"]  # is_loopback: deploy tests use it here
