"""OpenHands runtimes as agentbox sandboxes: start one from OpenHands' image and argv with the operator's
seed knobs, find it by session id, and say whether the server inside answers.

A runtime *is* a service sandbox (one record in the store, the same owner, quota, idle and lifetime
policy, reconcile and ``/v1/sandboxes`` view); it differs in what runs inside. Its container runs the image's
own server through :data:`LAUNCHER`, which reads the per-sandbox session key from ``/run/agentbox`` (put
there before start, like agentbox's own server's key) into ``SESSION_API_KEY`` and deletes the file: the
key is in the server's environment but not in the container's configuration (``docker inspect``). The
key is made once per runtime and kept in the record, so a resume never changes it.

Pause, resume and stop are the manager's own transitions; OpenHands' ``/stop`` ends a runtime for good, so
it removes the sandbox.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx

from agentbox.backends.base import Endpoint
from agentbox.backends.spec import foreign_server_spec, spec_from_config
from agentbox.config import SandboxConfig
from agentbox.errors import AgentboxError, ImageNotFoundError
from agentbox.service.auth import Principal
from agentbox.service.errors import ApiError, from_agentbox_error
from agentbox.service.models import SandboxCreate, SandboxEvent
from agentbox.service.openhands.models import Launch, StartRequest
from agentbox.service.policy import check_lifecycle, check_quota
from agentbox.service.sandboxes import config_json
from agentbox.service.store import SandboxRow, Usage, utcnow

if TYPE_CHECKING:
    from agentbox.service.app import Service
    from agentbox.service.sandboxes import SandboxManager

__all__ = [
    "LABEL_KIND", "LABEL_SESSION", "LAUNCHER", "OPENHANDS_PORT", "Runtimes", "discard", "launch_container", "probe",
    "work_hosts",
]

T = TypeVar("T")

#: The port OpenHands' servers listen on (``RemoteRuntime.port``; the agent server's ``--port``).
OPENHANDS_PORT = 60000
#: Record labels: OpenHands' session id, and which server runs inside (V0 action server or V1 agent server).
LABEL_SESSION = "openhands.session-id"
LABEL_KIND = "openhands.kind"
#: The container's entrypoint: the session key from its file into the server's environment, the file gone,
#: then OpenHands' argv. The text holds no secret (it is visible in ``docker inspect``; the key is not).
LAUNCHER: tuple[str, ...] = (
    "/bin/sh",
    "-c",
    'k=/run/agentbox/session-key; [ -r "$k" ] || { echo "agentbox: no session key" >&2; exit 70; }; '
    'SESSION_API_KEY=$(cat "$k"); export SESSION_API_KEY; rm -f "$k"; exec "$@"',
    "agentbox-launch",
)
#: The ports OpenHands' agent is told to run web applications on (``work_hosts``; OpenHands' own remote
#: runtimes use these two).
WORK_PORTS = (12000, 12001)
#: Seconds a start may take until the container runs (readiness is polled by OpenHands afterwards).
START_TIMEOUT = 60.0
#: Seconds one readiness probe of the server inside may take.
PROBE_TIMEOUT = 3.0

Kind = Literal["v0", "v1"]
_STATUS = {"running": "running", "paused": "paused", "stopped": "stopped", "creating": "starting", "pooled": "starting"}


def kind_of(command: list[str]) -> Kind:
    """V1 runs the agent server (``/health``); V0 the action execution server (``/alive``)."""
    return "v1" if any("agent-server" in arg or "agent_server" in arg for arg in command) else "v0"


@dataclass(frozen=True)
class Probe:
    """What the last readiness probe of a runtime found."""

    container_id: str
    endpoint: Endpoint
    ready: bool


class Runtimes:
    """The OpenHands view of one service's sandboxes."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        # sandbox id -> the endpoint and whether the server answered (a ready server stays ready while the
        # container is the same and running: the record's state says when that changes).
        self._probes: dict[str, Probe] = {}
        self._starts: dict[tuple[str, str], asyncio.Lock] = {}

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))

    # -- finding -------------------------------------------------------------------------------------------

    async def of_session(self, who: Principal, session_id: str) -> SandboxRow | None:
        """``who``'s newest runtime for an OpenHands session id."""
        rows = await self.svc.store.run(self.svc.store.sandboxes, who.name)
        found = [r for r in rows if r.labels.get(LABEL_SESSION) == session_id]
        return found[-1] if found else None

    async def mine(self, who: Principal) -> list[SandboxRow]:
        """Every runtime of ``who`` (sandboxes made through this API only)."""
        rows = await self.svc.store.run(self.svc.store.sandboxes, who.name)
        return [r for r in rows if LABEL_SESSION in r.labels]

    async def get(self, who: Principal, runtime_id: str) -> SandboxRow:
        """One runtime of ``who``; 404 for anything else (another token's runtime looks like none)."""
        row = await self.svc.store.run(self.svc.store.sandbox, runtime_id)
        if row is None or row.owner != who.name or LABEL_SESSION not in row.labels:
            raise ApiError("not_found", f"no runtime {runtime_id!r}")
        return row

    # -- the record ----------------------------------------------------------------------------------------

    async def endpoint(self, row: SandboxRow) -> Endpoint:
        """How to reach the server inside (cached per container)."""
        assert row.container_id is not None
        known = self._probes.get(row.id)
        if known is not None and known.container_id == row.container_id:
            return known.endpoint
        try:
            endpoint = await self._call(self.svc.backend.endpoint, row.container_id)
        except AgentboxError as exc:
            raise ApiError("sandbox_unreachable", f"runtime {row.id}: {exc}") from None
        self._probes[row.id] = Probe(row.container_id, endpoint, False)
        return endpoint

    async def ready(self, row: SandboxRow) -> bool:
        """True once the server inside answers its liveness path (V0 ``/alive``, V1 ``/health``)."""
        if row.state != "running" or row.container_id is None:
            self._probes.pop(row.id, None)
            return False
        endpoint = await self.endpoint(row)
        known = self._probes[row.id]
        if known.ready:
            return True
        # Probed until the first answer only.
        ready = await probe(endpoint, row.labels.get(LABEL_KIND, "v0"))
        if ready:
            self._probes[row.id] = Probe(known.container_id, endpoint, True)
        return ready

    def forget(self, runtime_id: str) -> None:
        """Drop what is known of a runtime that changed state."""
        self._probes.pop(runtime_id, None)

    async def record(self, row: SandboxRow, base_url: str, service_url: str) -> dict[str, Any]:
        """The fields of the runtime record of ``row`` (``base_url``: this API's URL as the client sees it,
        ``service_url``: the service's)."""
        ready = await self.ready(row)
        status = _STATUS.get(row.state, "error")
        if row.state == "dead":
            pod_status = "failed"
        elif ready:
            pod_status = "ready"
        else:
            pod_status = "pending"
        return {
            "runtime_id": row.id,
            "session_id": row.labels.get(LABEL_SESSION, ""),
            "url": f"{base_url.rstrip('/')}/{row.id}",
            "session_api_key": row.session_key,
            "status": status,
            "pod_status": pod_status,
            "work_hosts": work_hosts(service_url, row.id),
            "restart_count": 0,
            "restart_reasons": [row.reason] if row.reason else [],
            "image": row.config.get("runtime_container_image") or "",
        }

    # -- start ---------------------------------------------------------------------------------------------

    async def start(self, who: Principal, body: StartRequest) -> SandboxRow:
        """The live runtime of the session (idempotent), else one from a matching OpenHands pool, else a
        new one running the posted image and command."""
        lock = self._starts.setdefault((who.name, body.session_id), asyncio.Lock())
        async with lock:
            existing = await self.of_session(who, body.session_id)
            if existing is not None and existing.state in ("running", "paused", "creating"):
                return existing
            config = self._config(body.image, body.resource_factor)
            launch = body.launch()
            labels = {LABEL_SESSION: body.session_id, LABEL_KIND: kind_of(body.command)}
            lifecycle = check_lifecycle(None, None, False, self.svc.settings.policy)

            def check(usage: Usage) -> None:
                check_quota(config, who.quota, usage, who.name)

            started = time.monotonic()
            pools = self.svc.manager.pools
            pool = pools.match_launch(config, launch)
            if pool is not None:
                store = self.svc.store
                taken = await store.run(store.acquire_pooled, pool, who.name, labels, check, lifecycle)
                pools.wake(pool)
                if taken is not None:
                    note = f"openhands session {body.session_id} from pool {pool}"
                    await self._adopted(who, taken, started, "pooled", note)
                    return taken
            return await self._create(who, config, launch, labels, lifecycle, check, started)

    def _config(self, image: str, resource_factor: int) -> SandboxConfig:
        """The operator's seed configuration (``[sandbox]``), scaled by ``resource_factor``."""
        manager = self.svc.manager
        config = manager.effective_config(SandboxCreate())
        scaled: dict[str, Any] = {"runtime_container_image": image}
        if resource_factor != 1:
            if config.cpus is not None:
                scaled["cpus"] = config.cpus * resource_factor
            if config.memory is not None:
                scaled["memory"] = config.memory * resource_factor
        return config.model_copy(update=scaled)

    async def _create(
        self,
        who: Principal,
        config: SandboxConfig,
        launch: Launch,
        labels: dict[str, str],
        lifecycle: tuple[float | None, float | None, bool],
        check: Callable[[Usage], None],
        started: float,
    ) -> SandboxRow:
        svc, store = self.svc, self.svc.store
        now = utcnow()
        idle, lifetime, keep = lifecycle
        row = SandboxRow(
            id=secrets.token_hex(6), owner=who.name, container_id=None, state="creating", reason=None,
            config=config_json(config), labels=labels, session_key=secrets.token_urlsafe(32),
            cpus=config.cpus, memory=config.memory, created=now, last_activity=now,
            idle_timeout=idle, max_lifetime=lifetime, keep_alive=keep,
        )
        await store.run(store.reserve_sandbox, row, check)
        try:
            await launch_container(svc.manager, row, config, launch, labels)
            row.state = "running"
            await store.run(store.update_sandbox, row.id, state="running")
        except BaseException as exc:
            svc.metrics.creates.labels(outcome="failed").inc()
            await discard(svc.manager, row)
            self.forget(row.id)
            if isinstance(exc, AgentboxError):
                raise from_agentbox_error(exc).with_sandbox(row.id) from None
            raise
        await self._adopted(who, row, started, "ok", f"openhands session {labels[LABEL_SESSION]}")
        return row

    async def _adopted(self, who: Principal, row: SandboxRow, started: float, outcome: str, note: str) -> None:
        """Count, audit and announce a runtime that is ``who``'s from now on."""
        svc = self.svc
        svc.metrics.creates.labels(outcome=outcome).inc()
        svc.metrics.create_seconds.observe(time.monotonic() - started)
        await svc.store.run(svc.store.audit, who.name, "create", row.id, note)
        svc.manager.lifecycle.track(row)
        svc.manager.events.publish(SandboxEvent(id=row.id, owner=row.owner, state="running", at=utcnow()))

    # -- transitions ---------------------------------------------------------------------------------------

    async def pause(self, who: Principal, runtime_id: str) -> SandboxRow:
        """Freeze it (already paused: nothing to do)."""
        row = await self.get(who, runtime_id)
        self.forget(row.id)
        return row if row.state == "paused" else await self.svc.manager.pause(who, row.id)

    async def resume(self, who: Principal, runtime_id: str) -> SandboxRow:
        """Thaw it, or start a stopped one again; the session key stays the same."""
        row = await self.get(who, runtime_id)
        self.forget(row.id)
        return row if row.state == "running" else await self.svc.manager.resume(who, row.id)

    async def stop(self, who: Principal, runtime_id: str) -> SandboxRow:
        """End it for good: OpenHands starts a new runtime for the session afterwards."""
        row = await self.get(who, runtime_id)
        self.forget(row.id)
        return await self.svc.manager.remove(who, row.id)


def work_hosts(service_url: str, runtime_id: str) -> dict[str, int]:
    """``work_hosts`` of a runtime: URL -> port, each a path of the control plane's port proxy
    (``/v1/sandboxes/{id}/ports/{port}/``, authenticated like all of ``/v1``), so nothing is published on
    the host. An application answers there when it listens on the port on all addresses (0.0.0.0), as
    OpenHands tells its agent to: the service reaches it on the sandbox's network address."""
    base = service_url.rstrip("/")
    return {f"{base}/v1/sandboxes/{runtime_id}/ports/{port}/": port for port in WORK_PORTS}


async def launch_container(
    manager: SandboxManager,
    row: SandboxRow,
    config: SandboxConfig,
    launch: Launch,
    labels: Mapping[str, str],
    extra_labels: Mapping[str, str] | None = None,
) -> Endpoint:
    """Create and start ``row``'s container: ``launch`` (OpenHands' image, argv, environment) with the seed
    knobs of ``config`` and the session key handed over as a file (read by :data:`LAUNCHER`). The
    container id is recorded as soon as it exists, so a failure can be cleaned up by :func:`discard`."""
    store, backend = manager.store, manager.backend
    # The manager's identity labels (service id, keep-alive...): reconcile treats it like any sandbox.
    container_labels = {**manager._labels(row.id, labels), **(extra_labels or {})}
    spec = foreign_server_spec(
        spec_from_config(config, image=launch.image, sandbox_id=row.id, labels=container_labels),
        image=launch.image, command=launch.command, entrypoint=LAUNCHER, port=OPENHANDS_PORT,
        environment=launch.environment, working_dir=launch.working_dir,
    )
    try:
        cid = await _call(backend.create, spec)
    except ImageNotFoundError as exc:
        raise ImageNotFoundError(
            f"{exc}; for OpenHands' images run `agentbox build --openhands` on the service's host"
        ) from None
    row.container_id = cid
    await store.run(store.update_sandbox, row.id, container_id=cid)
    files = {"session-key": (row.session_key.encode(), 0o600)}
    endpoint: Endpoint = await _call(backend.start, cid, files, timeout=START_TIMEOUT)
    return endpoint


async def discard(manager: SandboxManager, row: SandboxRow) -> None:
    """Remove whatever a failed start made (found by label too: the container id may not be known)."""
    backend, store = manager.backend, manager.store
    try:
        ids = {row.container_id} if row.container_id else set()
        infos = await _call(backend.list, labels={"agentbox.sandbox": row.id})
        ids |= {i.container_id for i in infos}
        for cid in ids:
            await _call(backend.remove, cid, purge_volumes=True)
    finally:
        await store.run(store.delete_sandbox, row.id)


async def probe(endpoint: Endpoint, kind: str) -> bool:
    """Whether the server inside answers its liveness path (V0 ``/alive``, V1 ``/health``)."""
    path = "/health" if kind == "v1" else "/alive"
    try:
        # verify=False: plain HTTP, and no CA bundle to load.
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT, verify=False) as client:
            answer = await client.get(endpoint.url.rstrip("/") + path)
    except httpx.HTTPError:
        return False
    return answer.is_success


async def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))
