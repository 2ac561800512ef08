"""The control plane application: ``create_app(settings)`` wires thin routes to the service modules.

Routes authenticate (:class:`AuthMiddleware`, before any body is read), parse (the typed router of the
runtime server, :mod:`agentbox.server.routing`), call one :class:`~agentbox.service.sandboxes.SandboxManager`
or store method, and answer. The lifespan opens the store, makes the admin token on a first start, and
reconciles the records with the engine before the first request is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from agentbox import __version__
from agentbox.backends import get_backend
from agentbox.backends.base import Backend
from agentbox.errors import AgentboxError, RuntimeServerError
from agentbox.server.routing import TypedRouter, json_response
from agentbox.service.auth import Principal, bearer, digest, new_token
from agentbox.service.console import console_routes
from agentbox.service.console.session import cookie_token
from agentbox.service.errors import STATUS, ApiError, from_agentbox_error
from agentbox.service.metrics import CONTENT_TYPE, Metrics
from agentbox.service.models import (
    OPERATOR_ONLY,
    AuditList,
    AuditOut,
    AuditQuery,
    ErrorDetail,
    ErrorResponse,
    Health,
    LogsQuery,
    SandboxCreate,
    SandboxList,
    SandboxOut,
    SandboxSettings,
    TokenCreate,
    TokenCreated,
    TokenList,
    TokenOut,
)
from agentbox.service.openhands import openhands_router
from agentbox.service.policy import check_labels, check_lifecycle
from agentbox.service.proxy import RuntimeProxy, parse_port
from agentbox.service.sandboxes import SandboxManager, SandboxStats, Target
from agentbox.service.settings import ServiceSettings
from agentbox.service.store import SandboxRow, Store, TokenRow, utcnow

__all__ = ["ADMIN_TOKEN_FILE", "READY_PREFIX", "Service", "create_app", "create_token"]

log = logging.getLogger("agentbox.service")

ADMIN_TOKEN_FILE = "admin.token"
ADMIN_NAME = "admin"
#: Printed on stderr once the service has reconciled and is about to serve.
READY_PREFIX = "agentbox serve ready on "
_CREATED = {("POST", "/v1/sandboxes"), ("POST", "/v1/tokens"), ("POST", "/v1/sandboxes/{id}/replace")}
RUNTIME_PATH = "/v1/sandboxes/{id}/runtime/{path}"
RUNTIME_ROUTE = "/v1/sandboxes/{id}/runtime/{path:path}"
PORTS_PATH = "/v1/sandboxes/{id}/ports/{port}/{path}"
PORTS_ROUTES = ("/v1/sandboxes/{id}/ports/{port}/{path:path}", "/v1/sandboxes/{id}/ports/{port}")
PROXY_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
#: Seconds between keep-alive comments on a quiet event stream.
KEEPALIVE = 15.0


@dataclass
class Service:
    """What the routes share; built by the lifespan."""

    settings: ServiceSettings
    store: Store
    backend: Backend
    service_id: str
    manager: SandboxManager
    proxy: RuntimeProxy
    metrics: Metrics


def create_token(
    store: Store,
    name: str,
    *,
    admin: bool = False,
    max_sandboxes: int | None = None,
    max_cpus: float | None = None,
    max_memory: int | None = None,
) -> tuple[str, TokenRow]:
    """Make a token (sync: the CLI calls it directly); returns the secret, shown once, and its row."""
    secret = new_token()
    row = TokenRow(name, digest(secret), admin, max_sandboxes, max_cpus, max_memory, utcnow())
    if not store.add_token(row):
        raise ApiError("conflict", f"a token called {name!r} exists (or existed: names are never reused)")
    store.audit("service" if name == ADMIN_NAME else "cli", "token.create", name, "admin" if admin else "")
    return secret, row


def bootstrap_admin(store: Store, data_dir: Path) -> str | None:
    """On a first start, make the admin token and write it to ``<data-dir>/admin.token`` (0600).

    "First" means no admin token was ever made (tokens made with the CLI before the first start do not
    count); an operator who revoked the admin token on purpose does not get a new one on restart."""
    if store.has_admin(ever=True):
        return None
    secret, _row = create_token(store, ADMIN_NAME, admin=True)
    path = data_dir / ADMIN_TOKEN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


def _error_body(exc: ApiError) -> Response:
    body = ErrorResponse(error=ErrorDetail(code=exc.code, message=str(exc), rule=exc.rule))
    return json_response(body, status_code=exc.status)


class AuthMiddleware:
    """Every ``/v1/`` request (HTTP or WebSocket) carries a live bearer token (or the web console's cookie
    with its CSRF proof); the principal is put in ``scope["state"]["principal"]`` before any body is read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # digest -> token row, valid while the database file is unchanged (a revocation by the CLI, in
        # another process, changes it): the proxied round trip does not wait for a query.
        self._cache: dict[str, TokenRow] = {}
        self._signature: tuple[int, ...] = ()

    async def _lookup(self, store: Store, token_digest: str) -> TokenRow | None:
        signature = store.signature()
        if signature != self._signature:
            self._cache.clear()
            self._signature = signature
        row = self._cache.get(token_digest)
        if row is None:
            row = await store.run(store.token_by_digest, token_digest)
            if row is not None and len(self._cache) < 10_000:
                self._cache[token_digest] = row
        return row

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith("/v1/"):
            service: Service = scope["app"].state.service
            header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
            try:
                # The web console's cookie stands in for the header, only when CSRF-safe (see console.session).
                token = (None if header else cookie_token(scope)) or bearer(header)
                row = await self._lookup(service.store, digest(token))
                if row is None:
                    raise ApiError("unauthorized", "unknown or revoked token")
            except ApiError as exc:
                service.metrics.api_errors.labels(code=exc.code).inc()
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008, "reason": exc.message[:120]})
                    return
                return await _error_body(exc)(scope, receive, send)
            scope.setdefault("state", {})["principal"] = Principal.of(row)
        await self.app(scope, receive, send)


def _who(request: Request | WebSocket) -> Principal:
    principal: Principal = request.state.principal
    return principal


def _sandbox_out(row: SandboxRow) -> SandboxOut:
    return SandboxOut(
        id=row.id,
        owner=row.owner,
        state=row.state,
        reason=row.reason,
        config=SandboxSettings.model_validate({k: v for k, v in row.config.items() if k not in OPERATOR_ONLY}),
        labels=row.labels,
        created=row.created,
        last_activity=row.last_activity,
        idle_timeout=row.idle_timeout,
        max_lifetime=row.max_lifetime,
        keep_alive=row.keep_alive,
    )


def _token_out(row: TokenRow) -> TokenOut:
    return TokenOut(
        name=row.name, admin=row.admin, max_sandboxes=row.max_sandboxes, max_cpus=row.max_cpus,
        max_memory=row.max_memory, created=row.created,
    )


def build_router(svc: Service) -> TypedRouter:
    """Every typed endpoint, bound to ``svc``."""
    api = TypedRouter()
    route = api.route
    manager, store = svc.manager, svc.store

    @route("GET", "/healthz", response=Health)
    async def healthz(request: Request) -> Health:
        """Liveness probe (no token needed)."""
        return Health(service_id=svc.service_id, version=__version__)

    # ------------------------------------------------------------------ sandboxes

    # Per caller scope: the rows last listed and their JSON. Validating and serialising every record cost
    # ~50 us each per request; a listing is unchanged between writes, so many clients polling it share one.
    listed: dict[str | None, tuple[list[SandboxRow], bytes]] = {}

    @route("GET", "/v1/sandboxes", response=SandboxList)
    async def list_sandboxes(request: Request) -> Response:
        """The caller's sandboxes (every sandbox for an admin)."""
        who = _who(request)
        rows = await manager.list(who)
        scope = None if who.admin else who.name
        hit = listed.get(scope)
        if hit is None or hit[0] is not rows:
            if len(listed) >= 1000:
                listed.clear()
            body = SandboxList(sandboxes=[_sandbox_out(r) for r in rows]).model_dump_json().encode()
            hit = listed[scope] = (rows, body)
        return Response(hit[1], media_type="application/json")

    @route("POST", "/v1/sandboxes", body=SandboxCreate, response=SandboxOut)
    async def create_sandbox(request: Request, body: SandboxCreate) -> Response:
        """Create and start a sandbox (201 with its record once its runtime server answered).

        With ``Accept: text/event-stream`` the answer is a stream instead: ``event: progress`` lines while
        an image builds, then ``event: sandbox`` (the record) or ``event: error`` (``{"error": ...}``).
        Configurations the policy refuses are still refused up front with a plain 4xx.
        """
        who = _who(request)
        if "text/event-stream" not in request.headers.get("accept", ""):
            row = await manager.create(who, body)
            return json_response(_sandbox_out(row), status_code=201)
        check_labels(body.labels)
        manager.effective_config(body)
        check_lifecycle(body.idle_timeout, body.max_lifetime, body.keep_alive, svc.settings.policy)
        return StreamingResponse(_create_stream(manager, who, body), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @route("GET", "/v1/sandboxes/{id}", response=SandboxOut)
    async def get_sandbox(request: Request) -> SandboxOut:
        """One sandbox."""
        return _sandbox_out(await manager.get(_who(request), request.path_params["id"]))

    @route("DELETE", "/v1/sandboxes/{id}", response=SandboxOut)
    async def remove_sandbox(request: Request) -> SandboxOut:
        """Remove a sandbox and what was created for it."""
        return _sandbox_out(await manager.remove(_who(request), request.path_params["id"]))

    @route("POST", "/v1/sandboxes/{id}/replace", response=SandboxOut)
    async def replace_sandbox(request: Request) -> Response:
        """A new sandbox in place of a lost one (same owner, configuration and labels; placed anew), which
        is removed: 201 with the new record. 409 unless the sandbox is lost (a live one would lose its state)."""
        row = await manager.replace(_who(request), request.path_params["id"])
        return json_response(_sandbox_out(row), status_code=201)

    @route("POST", "/v1/sandboxes/{id}/pause", response=SandboxOut)
    async def pause_sandbox(request: Request) -> SandboxOut:
        """Freeze a running sandbox (processes and shell state survive resume)."""
        return _sandbox_out(await manager.pause(_who(request), request.path_params["id"]))

    @route("POST", "/v1/sandboxes/{id}/resume", response=SandboxOut)
    async def resume_sandbox(request: Request) -> SandboxOut:
        """Thaw a paused sandbox, or start a stopped one again."""
        return _sandbox_out(await manager.resume(_who(request), request.path_params["id"]))

    @route("POST", "/v1/sandboxes/{id}/stop", response=SandboxOut)
    async def stop_sandbox(request: Request) -> SandboxOut:
        """Stop a sandbox's container (files stay; resume starts it again)."""
        return _sandbox_out(await manager.stop(_who(request), request.path_params["id"]))

    @route("GET", "/v1/sandboxes/{id}/stats", response=SandboxStats)
    async def sandbox_stats(request: Request) -> SandboxStats:
        """CPU and memory of a running sandbox, from the engine (409 unless it is running)."""
        return await manager.stats(_who(request), request.path_params["id"])

    @route("GET", "/v1/sandboxes/{id}/logs", query=LogsQuery, content_type="text/plain")
    async def sandbox_logs(request: Request, query: LogsQuery) -> Response:
        """The sandbox's container log (its runtime server's output); with ``follow=1``, a chunked stream of
        what it gains, until the sandbox stops running or the client goes away."""
        if query.follow:
            chunks = await manager.follow_logs(_who(request), request.path_params["id"], query.tail)
            return StreamingResponse(chunks, media_type="text/plain; charset=utf-8",
                                     headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
        text = await manager.logs(_who(request), request.path_params["id"], query.tail)
        return PlainTextResponse(text)

    @route("GET", "/v1/events", content_type="text/event-stream")
    async def sandbox_events(request: Request) -> Response:
        """Server-sent events: one ``data:`` line per state change of a sandbox the caller may see."""
        who = _who(request)
        queue = manager.events.subscribe()

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b": connected\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), KEEPALIVE)
                    except asyncio.TimeoutError:
                        yield b": keep-alive\n\n"  # lets proxies and clients tell a quiet stream from a dead one
                        continue
                    if event is None:
                        return
                    if who.admin or event.owner == who.name:
                        yield b"data: " + event.model_dump_json().encode() + b"\n\n"
            finally:
                manager.events.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # ------------------------------------------------------------------ tokens and audit (admin)

    @route("POST", "/v1/tokens", body=TokenCreate, response=TokenCreated)
    async def create_token_route(request: Request, body: TokenCreate) -> Response:
        """Create a token (admin only); its secret is in this answer and nowhere else."""
        who = _who(request)
        who.require_admin()
        secret, row = await store.run(
            create_token, store, body.name, admin=body.admin, max_sandboxes=body.max_sandboxes,
            max_cpus=body.max_cpus, max_memory=body.max_memory,
        )
        created = TokenCreated(token=secret, **_token_out(row).model_dump())
        return json_response(created, status_code=201)

    @route("GET", "/v1/tokens", response=TokenList)
    async def list_tokens(request: Request) -> TokenList:
        """Every live token (admin only)."""
        _who(request).require_admin()
        return TokenList(tokens=[_token_out(r) for r in await store.run(store.tokens)])

    @route("DELETE", "/v1/tokens/{name}", response=TokenOut)
    async def revoke_token(request: Request) -> TokenOut:
        """Revoke a token (admin only); its sandboxes stay, visible to admins."""
        who = _who(request)
        who.require_admin()
        name = request.path_params["name"]
        row = await store.run(store.token, name)
        if row is None or row.revoked or not await store.run(store.revoke_token, name):
            raise ApiError("not_found", f"no live token {name!r}")
        await store.run(store.audit, who.name, "token.revoke", name, "")
        return _token_out(row)

    @route("GET", "/v1/audit", query=AuditQuery, response=AuditList)
    async def audit_log(request: Request, query: AuditQuery) -> AuditList:
        """The latest audit entries (an admin sees all, a token its own)."""
        who = _who(request)
        entries = await store.run(store.audit_log, limit=query.limit, actor=None if who.admin else who.name)
        return AuditList(entries=[AuditOut(**vars(e)) for e in entries])

    return api


def _sse(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


async def _create_stream(manager: SandboxManager, who: Principal, body: SandboxCreate) -> AsyncIterator[bytes]:
    """The event stream of one create. The create itself runs on as a task of its own: a client that goes
    away mid-build still gets its sandbox (listed), rather than a half-made one."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def progress(line: str) -> None:
        loop.call_soon_threadsafe(lines.put_nowait, line)

    task = loop.create_task(manager.create(who, body, progress))
    while True:
        getter = loop.create_task(lines.get())
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            yield _sse("progress", json.dumps({"line": getter.result()}))
            continue
        getter.cancel()
        break
    while not lines.empty():
        yield _sse("progress", json.dumps({"line": lines.get_nowait()}))
    try:
        row = task.result()
    except AgentboxError as exc:
        api = from_agentbox_error(exc)
        detail = ErrorResponse(error=ErrorDetail(code=api.code, message=str(api), rule=api.rule))
        yield _sse("error", detail.model_dump_json())
        return
    yield _sse("sandbox", _sandbox_out(row).model_dump_json())


def _openapi(api: TypedRouter) -> dict[str, Any]:
    doc = api.openapi(title="agentbox service", version=__version__, error_model=ErrorResponse)
    doc["components"]["securitySchemes"] = {"BearerToken": {"type": "http", "scheme": "bearer"}}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path.startswith("/v1/"):
                op["security"] = [{"BearerToken": []}]
            else:
                op.pop("security", None)
            if (method.upper(), path) in _CREATED:
                op["responses"]["201"] = op["responses"].pop("200")
                op["responses"]["201"]["description"] = "Created"
    # The proxy is not a typed route: any method, any body, the runtime server's own answers.
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in ("id", "path")]
    doc["paths"][RUNTIME_PATH] = {
        method: {
            "summary": "Forward to the sandbox's runtime server (its own API at {path}; SSE and WebSocket too).",
            "operationId": f"runtime_{method}",
            "parameters": params,
            "security": [{"BearerToken": []}],
            "responses": {
                "default": {"description": "The runtime server's answer, or a service error (ErrorResponse)."}
            },
        }
        for method in ("get", "post")
    }
    port_params = [
        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
        {"name": "port", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1, "maximum": 65535},
         "description": "A TCP port a process listens on inside the sandbox (on any address, loopback included)."},
        {"name": "path", "in": "path", "required": True, "schema": {"type": "string"},
         "description": "The path to request on that port (with the query string, passed on as is)."},
    ]
    doc["paths"][PORTS_PATH] = {
        method: {
            "summary": "Forward to a port inside the sandbox (HTTP, streamed bodies, WebSocket upgrades).",
            "description": (
                "Reaches http://127.0.0.1:{port}/{path} inside the sandbox through its runtime server, with no "
                "port published on the host (network=none sandboxes too). The answer is the application's own. "
                "A port nothing listens on is a 502 with code port_closed; an answer that is not HTTP a 502 "
                "port_bad_response; a port that is not 1-65535 a 422 validation_error. A WebSocket upgrade on "
                "the same path is relayed message by message. Requests count as activity for the idle timeout."
            ),
            "operationId": f"port_{method}",
            "parameters": port_params,
            "security": [{"BearerToken": []}],
            "responses": {
                "default": {"description": "The application's answer."},
                "502": {"description": "port_closed or port_bad_response",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}},
                "422": {"description": "validation_error (the port)",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}},
            },
        }
        for method in ("get", "post", "put", "patch", "delete")
    }
    return doc


async def _on_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            api = ApiError("not_found", f"no endpoint {request.method} {request.url.path}")
        elif exc.status_code == 405:
            api = ApiError("method_not_allowed", f"{request.method} is not allowed on {request.url.path}")
        else:
            api = ApiError("bad_request", str(exc.detail))
    elif isinstance(exc, RuntimeServerError) and exc.code in STATUS:  # the typed router's input errors
        api = ApiError(exc.code, exc.message)
    elif isinstance(exc, AgentboxError):
        api = from_agentbox_error(exc)
    else:
        log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        api = ApiError("internal", f"internal error ({type(exc).__name__}); the service log has the traceback")
    service: Service | None = getattr(request.app.state, "service", None)
    if service is not None:
        service.metrics.api_errors.labels(code=api.code).inc()
    return _error_body(api)


def create_app(settings: ServiceSettings, *, backend: Backend | None = None) -> Starlette:
    """The service application. Nothing is opened here: the lifespan opens the store and the engine."""
    holder: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = Store(settings.data_dir).open()
        secret = bootstrap_admin(store, settings.data_dir)
        if secret is not None:
            print(
                f"agentbox serve: first start, admin token (shown once; also in "
                f"{settings.data_dir / ADMIN_TOKEN_FILE}, mode 0600):\n{secret}",
                file=sys.stderr, flush=True,
            )
        service_id = store.meta("service_id", lambda: secrets.token_hex(8))
        engine = backend or get_backend(settings.backend)
        metrics = Metrics()
        manager = SandboxManager(settings, store, engine, service_id, metrics)
        proxy = RuntimeProxy()
        background: set[asyncio.Task[None]] = set()

        def drop_connections(sandbox_id: str) -> None:
            task = asyncio.get_running_loop().create_task(proxy.drop(sandbox_id))
            background.add(task)
            task.add_done_callback(background.discard)

        manager.drop_connections = drop_connections
        svc = Service(settings, store, engine, service_id, manager, proxy, metrics)
        app.state.service = svc
        api = build_router(svc)
        holder["openapi"] = lambda: _openapi(api)
        # The typed routes close over the service, which exists only from here on (no request is served
        # before the lifespan has finished), so they are put in front of the static routes now.
        app.router.routes[:0] = [*api.routes()]
        await manager.watch_engine()
        counts = await manager.reconcile()
        manager.pools.start()
        print(f"agentbox serve: reconciled {counts}", file=sys.stderr, flush=True)
        print(f"{READY_PREFIX}http://{settings.host}:{settings.port}", file=sys.stderr, flush=True)
        try:
            yield
        finally:
            await proxy.aclose()
            await manager.close()
            store.close()

    async def openapi(request: Request) -> Response:
        if "doc" not in holder:
            holder["doc"] = holder["openapi"]()
        return JSONResponse(holder["doc"])

    async def metrics(request: Request) -> Response:
        svc: Service = request.app.state.service
        counts = await svc.store.run(svc.store.count_by_state)
        pools = await svc.store.run(svc.store.pool_counts)
        for name, spec in svc.manager.pools.specs.items():
            svc.metrics.pool_size.labels(pool=name).set(spec.size)
            svc.metrics.pool_free.labels(pool=name).set(pools.get(name, (0, 0))[0])
        return Response(svc.metrics.render(counts), media_type=CONTENT_TYPE)

    async def forward(request: Request, path: str) -> Response:
        svc: Service = request.app.state.service
        target = await svc.manager.target(_who(request), request.path_params["id"])
        svc.metrics.proxy_requests.labels(kind="http").inc()
        lifecycle = svc.manager.lifecycle
        lifecycle.begin(target.sandbox_id)
        try:
            return await svc.proxy.forward(request, target, path, on_done=lambda: lifecycle.end(target.sandbox_id))
        except BaseException:
            lifecycle.end(target.sandbox_id)
            raise

    async def runtime_http(request: Request) -> Response:
        return await forward(request, request.path_params["path"])

    async def port_http(request: Request) -> Response:
        port = parse_port(request.path_params["port"])
        return await forward(request, f"ports/{port}/{request.path_params.get('path', '')}")

    async def websocket_target(websocket: WebSocket) -> Target | None:
        svc: Service = websocket.app.state.service
        try:
            target = await svc.manager.target(_who(websocket), websocket.path_params["id"])
        except ApiError as exc:
            await websocket.close(code=1008 if exc.status < 500 else 1011, reason=exc.message[:120])
            return None
        svc.metrics.proxy_requests.labels(kind="ws").inc()
        return target

    async def runtime_ws(websocket: WebSocket) -> None:
        svc: Service = websocket.app.state.service
        target = await websocket_target(websocket)
        if target is None:
            return
        svc.manager.lifecycle.begin(target.sandbox_id)
        try:
            await svc.proxy.forward_websocket(websocket, target, websocket.path_params["path"])
        finally:
            svc.manager.lifecycle.end(target.sandbox_id)

    async def port_ws(websocket: WebSocket) -> None:
        svc: Service = websocket.app.state.service
        try:
            port = parse_port(websocket.path_params["port"])
        except ApiError as exc:
            await websocket.close(code=1008, reason=exc.message[:120])
            return
        target = await websocket_target(websocket)
        if target is None:
            return
        svc.manager.lifecycle.begin(target.sandbox_id)
        try:
            await svc.proxy.forward_port_websocket(websocket, target, port, websocket.path_params.get("path", ""))
        finally:
            svc.manager.lifecycle.end(target.sandbox_id)

    routes: list[Any] = [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route(RUNTIME_ROUTE, runtime_http, methods=PROXY_METHODS),
        WebSocketRoute(RUNTIME_ROUTE, runtime_ws),
        *(Route(path, port_http, methods=PROXY_METHODS) for path in PORTS_ROUTES),
        *(WebSocketRoute(path, port_ws) for path in PORTS_ROUTES),
        Mount("/openhands", app=openhands_router()),  # OpenHands' remote runtime API (issue 13)
        Mount("/", routes=console_routes()),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={Exception: _on_error, HTTPException: _on_error, AgentboxError: _on_error},
    )
    app.add_middleware(AuthMiddleware)
    return app
