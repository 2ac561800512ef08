"""The ``/openhands`` router: OpenHands' remote runtime API over this service's sandboxes.

OpenHands is configured with ``SANDBOX_REMOTE_RUNTIME_API_URL=<service>/openhands`` and
``SANDBOX_API_KEY=<an agentbox token>``. Two surfaces live here:

* the runtime API (``/start``, ``/sessions/{sid}``, ``/runtime/{id}``, ``/pause``...), authenticated by
  ``X-API-Key`` = an agentbox token (the same tokens, quotas and ownership as ``/v1``);
* each runtime's sandbox URL, ``<service>/openhands/<runtime_id>/...``, proxied to the server inside on its
  port 60000 over the sandbox's network. Nothing is published on the host. The path form (not a port or a
  subdomain per runtime) needs no DNS and no port range, and it keeps every route of the control plane
  reachable (runtime ids are 12 hex digits, never one of this router's own words). It is authenticated by
  the runtime's session key (``X-Session-API-Key``), which OpenHands holds, not by the token: V1 polls
  ``/health`` with no header at all. The token OpenHands also sends there is removed before forwarding.

A record's ``work_hosts`` (where OpenHands tells its agent to serve web apps) are paths of the control
plane's own port proxy, ``/v1/sandboxes/{id}/ports/{port}/`` (a token, or the console's cookie). VSCode is
not served: OpenHands 0.62 derives its URL itself, as a ``vscode-<host>`` subdomain for a sandbox URL whose
path does not start with the runtime id (V0) or always (V1), and the images built here have no
openvscode-server.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, Router, WebSocketRoute
from starlette.types import Scope
from starlette.websockets import WebSocket

from agentbox.server.routing import TypedRouter
from agentbox.service.auth import Principal, digest
from agentbox.service.errors import ApiError
from agentbox.service.openhands.models import (
    BuildStarted,
    BuildStatus,
    ImageExists,
    ImageQuery,
    RegistryPrefix,
    RuntimeAction,
    RuntimeList,
    RuntimeRecord,
    StartRequest,
)
from agentbox.service.openhands.runtimes import LABEL_SESSION, Runtimes
from agentbox.service.sandboxes import Target
from agentbox.service.store import SandboxRow

if TYPE_CHECKING:
    from agentbox.service.app import Service

__all__ = ["openhands_router"]

API_KEY = "x-api-key"
SESSION_KEY = "x-session-api-key"
#: Paths of the servers inside that answer without a session key (liveness only).
PUBLIC_PATHS = frozenset({"alive", "health", "server_info"})
#: OpenHands' runtime API answers this prefix; images are not pulled from it (see ``/image_exists``).
REGISTRY_PREFIX = "docker.openhands.dev/openhands"
BUILD_REFUSED = (
    "agentbox builds no posted build contexts: build OpenHands' images on the service's host with "
    "`agentbox build --openhands` and set SANDBOX_RUNTIME_CONTAINER_IMAGE to the image it names"
)


def _service(request: Request | WebSocket) -> Service:
    svc: Service = request.app.state.service
    return svc


def _runtimes(svc: Service) -> Runtimes:
    """The runtimes view of a service, made on first use (the service exists only after its lifespan)."""
    found: Runtimes | None = getattr(svc, "_openhands", None)
    if found is None:
        found = Runtimes(svc)
        svc._openhands = found  # type: ignore[attr-defined]
    return found


def _base_url(request: Request) -> str:
    """This router's URL as the client reached it (host header and mount point: Starlette keeps the
    mount point in ``root_path``, not in ``base_url``)."""
    base = str(request.base_url).rstrip("/")
    root = str(request.scope.get("root_path") or "").rstrip("/")
    return base if base.endswith(root) else base + root


async def _principal(request: Request) -> Principal:
    """The token in ``X-API-Key``; 401 when absent, unknown or revoked."""
    svc = _service(request)
    key = request.headers.get(API_KEY)
    if not key:
        raise ApiError("unauthorized", "missing X-API-Key header: set SANDBOX_API_KEY to an agentbox token")
    row = await svc.store.run(svc.store.token_by_digest, digest(key.strip()))
    if row is None:
        raise ApiError("unauthorized", "X-API-Key: unknown or revoked agentbox token")
    return Principal.of(row)


def _api(request: Request) -> tuple[Principal, Runtimes]:
    principal: Principal = request.state.openhands_principal
    return principal, _runtimes(_service(request))


def _service_url(request: Request) -> str:
    """The service's root URL as the client reached it (without this router's mount point)."""
    base = str(request.base_url).rstrip("/")
    root = str(request.scope.get("root_path") or "").rstrip("/")
    return base[: -len(root)] if root and base.endswith(root) else base


async def _record(runtimes: Runtimes, row: SandboxRow, request: Request) -> RuntimeRecord:
    return RuntimeRecord.model_validate(await runtimes.record(row, _base_url(request), _service_url(request)))


def _typed_routes() -> list[BaseRoute]:
    api = TypedRouter()
    route = api.route

    @route("POST", "/start", body=StartRequest, response=RuntimeRecord)
    async def start(request: Request, body: StartRequest) -> RuntimeRecord:
        """Start a runtime for ``session_id`` (or answer the live one: idempotent per session)."""
        who, runtimes = _api(request)
        row = await runtimes.start(who, body)
        return await _record(runtimes, row, request)

    @route("GET", "/sessions/batch", response=list[RuntimeRecord])
    async def sessions_batch(request: Request) -> Response:
        """The runtimes of several session ids (``?ids=a&ids=b``); unknown ids are left out."""
        who, runtimes = _api(request)
        ids = request.query_params.getlist("ids")
        if len(ids) > 1000:
            raise ApiError("validation_error", "ids: at most 1000 session ids per request")
        rows = {r.labels[LABEL_SESSION]: r for r in await runtimes.mine(who)}
        records = [await _record(runtimes, rows[i], request) for i in ids if i in rows]
        return JSONResponse([r.model_dump(mode="json") for r in records])

    @route("GET", "/sessions/{sid}", response=RuntimeRecord)
    async def session(request: Request) -> RuntimeRecord:
        """The runtime of a session id (404: none, start one)."""
        who, runtimes = _api(request)
        sid = request.path_params["sid"]
        row = await runtimes.of_session(who, sid)
        if row is None:
            raise ApiError("not_found", f"no runtime for session {sid!r}")
        return await _record(runtimes, row, request)

    @route("GET", "/list", response=RuntimeList)
    async def list_runtimes(request: Request) -> RuntimeList:
        """Every runtime of this token."""
        who, runtimes = _api(request)
        return RuntimeList(runtimes=[await _record(runtimes, r, request) for r in await runtimes.mine(who)])

    @route("GET", "/runtime/{runtime_id}", response=RuntimeRecord)
    async def runtime(request: Request) -> RuntimeRecord:
        """One runtime; ``pod_status`` is ``ready`` once the server inside answers."""
        who, runtimes = _api(request)
        return await _record(runtimes, await runtimes.get(who, request.path_params["runtime_id"]), request)

    async def transition(request: Request, body: RuntimeAction, action: str) -> RuntimeRecord | Response:
        who, runtimes = _api(request)
        if body.runtime_id is None:  # V0's close() after a failed connect: there is nothing to act on
            return JSONResponse({})
        row = await getattr(runtimes, action)(who, body.runtime_id)
        if row.state == "removed":
            return JSONResponse({"runtime_id": row.id, "status": "stopped"})
        return await _record(runtimes, row, request)

    @route("POST", "/pause", body=RuntimeAction, response=RuntimeRecord)
    async def pause(request: Request, body: RuntimeAction) -> RuntimeRecord | Response:
        """Freeze a runtime (its sandbox URL answers 503 until it is resumed)."""
        return await transition(request, body, "pause")

    @route("POST", "/resume", body=RuntimeAction, response=RuntimeRecord)
    async def resume(request: Request, body: RuntimeAction) -> RuntimeRecord | Response:
        """Thaw a runtime; its session key does not change."""
        return await transition(request, body, "resume")

    @route("POST", "/stop", body=RuntimeAction, response=RuntimeRecord)
    async def stop(request: Request, body: RuntimeAction) -> RuntimeRecord | Response:
        """End a runtime (its sandbox is removed)."""
        return await transition(request, body, "stop")

    @route("GET", "/registry_prefix", response=RegistryPrefix)
    async def registry_prefix(request: Request) -> RegistryPrefix:
        """The prefix OpenHands names its images under."""
        return RegistryPrefix(registry_prefix=REGISTRY_PREFIX)

    @route("GET", "/image_exists", query=ImageQuery, response=ImageExists)
    async def image_exists(request: Request, query: ImageQuery) -> ImageExists:
        """Whether the image is on the service's engine (nothing is pulled)."""
        svc = _service(request)
        found = await _runtimes(svc)._call(_local_image, svc, query.image)
        if found is None:
            return ImageExists(exists=False)
        return ImageExists(exists=True, image=found)

    @route("POST", "/build", response=BuildStarted)
    async def build(request: Request) -> BuildStarted:
        """Accepted, and answered FAILURE by ``/build_status``: agentbox builds no posted contexts."""
        return BuildStarted(build_id="refused-" + secrets.token_hex(6))

    @route("GET", "/build_status", response=BuildStatus)
    async def build_status(request: Request) -> BuildStatus:
        """Always FAILURE, saying how to get the images instead."""
        return BuildStatus(status="FAILURE", error=BUILD_REFUSED)

    return list(api.routes())


def _local_image(svc: Service, image: str) -> dict[str, object] | None:
    client = getattr(svc.backend, "client", None)
    if client is None:
        return None
    from docker.errors import ImageNotFound

    try:
        attrs = client.api.inspect_image(image)
    except ImageNotFound:
        return None
    return {"upload_time": attrs.get("Created"), "image_size_bytes": attrs.get("Size", 0)}


# -- the sandbox URLs ---------------------------------------------------------------------------------------


def _key_ok(given: str | None, row: SandboxRow) -> bool:
    return given is not None and secrets.compare_digest(given.encode(), row.session_key.encode())


async def _sandbox_row(svc: Service, runtime_id: str) -> SandboxRow:
    row = await svc.store.run(svc.store.sandbox, runtime_id)
    if row is None or LABEL_SESSION not in row.labels:
        raise ApiError("not_found", f"no runtime {runtime_id!r}")
    return row


def _without_token(scope: Scope) -> Scope:
    """The scope with the control-plane token OpenHands sends to sandboxes too removed."""
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != API_KEY.encode()]
    return {**scope, "headers": headers}


async def sandbox_http(request: Request) -> Response:
    """Forward to the runtime's server: 503 while paused (OpenHands resumes it), 401 without its key."""
    svc = _service(request)
    runtime_id, path = request.path_params["runtime_id"], request.path_params["path"]
    row = await _sandbox_row(svc, runtime_id)
    if path.strip("/") not in PUBLIC_PATHS and not _key_ok(request.headers.get(SESSION_KEY), row):
        raise ApiError("unauthorized", f"runtime {row.id}: missing or wrong X-Session-API-Key")
    if row.state in ("paused", "creating"):
        return JSONResponse(
            {"error": {"code": "unavailable", "message": f"runtime {row.id} is {row.state}"},
             "detail": f"runtime {row.id} is {row.state}"},
            status_code=503,
        )
    if row.state != "running" or row.container_id is None:
        raise ApiError("not_found", f"runtime {row.id} is {row.state}")
    runtimes = _runtimes(svc)
    target = Target(row.id, await runtimes.endpoint(row), row.session_key)
    svc.metrics.proxy_requests.labels(kind="http").inc()
    lifecycle = svc.manager.lifecycle
    svc.manager.touch(row.id)
    lifecycle.begin(row.id)
    forwarded = Request(_without_token(request.scope), request.receive)
    try:
        return await svc.proxy.forward(forwarded, target, path, on_done=lambda: lifecycle.end(row.id))
    except BaseException:
        lifecycle.end(row.id)
        raise


async def sandbox_ws(websocket: WebSocket) -> None:
    """Relay a WebSocket to the runtime's server (the key in the header or ``session_api_key`` query)."""
    svc = _service(websocket)
    try:
        row = await _sandbox_row(svc, websocket.path_params["runtime_id"])
        given = websocket.headers.get(SESSION_KEY) or websocket.query_params.get("session_api_key")
        if not _key_ok(given, row):
            raise ApiError("unauthorized", f"runtime {row.id}: missing or wrong session key")
        if row.state != "running" or row.container_id is None:
            raise ApiError("conflict", f"runtime {row.id} is {row.state}")
        target = Target(row.id, await _runtimes(svc).endpoint(row), row.session_key)
    except ApiError as exc:
        await websocket.close(code=1008 if exc.status < 500 else 1011, reason=exc.message[:120])
        return
    svc.metrics.proxy_requests.labels(kind="ws").inc()
    svc.manager.touch(row.id)
    svc.manager.lifecycle.begin(row.id)
    try:
        await svc.proxy.forward_websocket(websocket, target, websocket.path_params["path"])
    finally:
        svc.manager.lifecycle.end(row.id)


def openhands_router() -> Router:
    """The router mounted at ``/openhands`` of the service app."""
    typed = _typed_routes()

    def guarded(route: BaseRoute) -> BaseRoute:
        assert isinstance(route, Route)
        inner = route.endpoint

        async def endpoint(request: Request) -> Response:
            request.state.openhands_principal = await _principal(request)
            response: Response = await inner(request)
            return response

        out = Route(route.path, endpoint, methods=list(route.methods or ()), name=route.name)
        out.methods = route.methods
        return out

    sandbox_path = "/{runtime_id}/{path:path}"
    return Router(routes=[
        *(guarded(r) for r in typed),
        Route(sandbox_path, sandbox_http, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
        WebSocketRoute(sandbox_path, sandbox_ws),
    ])
