"""The work behind ``/v1/sandboxes``: create, find, pause, resume, stop, remove and reconcile sandboxes
for tokens, on any :class:`~agentbox.backends.base.Backend`. Usable without HTTP.

Crash safety comes from the order of writes. A create first *reserves* a record (state ``creating``,
with its session key) and only then asks the engine for a container labelled with the sandbox id and
this service's id; the record turns ``running`` once the server answered. A remove first marks the
record ``removing``. So after a ``kill -9`` at any moment, :meth:`SandboxManager.reconcile` finds every
half-done step: a ``creating`` or ``removing`` record (its container, if any, is removed with it), and a
container carrying this service's label with no record at all (removed). Records whose container is gone,
or exited without being asked to, are kept as ``dead`` with the reason, until their owner removes them.
A sandbox whose node went down (Swarm) is kept as ``lost``, naming the node, until its owner removes it or
asks for a replacement (:meth:`SandboxManager.replace`: a new sandbox from the same configuration).

Around that core: warm pools (:mod:`.pool`) hand out ready sandboxes, idle and lifetime timers
(:mod:`.lifecycle`) pause and remove, the backend's event stream (:mod:`.engine_events`) marks sandboxes
that die or are lost behind the service's back, and every change of state is published to ``GET /v1/events``
(:mod:`.events`).

Backend calls block (Docker SDK), so they run on a worker pool; the store runs on its own thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, ParamSpec, TypeVar

from pydantic import Field, ValidationError

from agentbox import __version__
from agentbox.backends.base import Backend, Endpoint, Progress, SandboxInfo, SandboxState
from agentbox.backends.labels import LABELS
from agentbox.backends.spec import SERVER_PORT, spec_from_config
from agentbox.config import SandboxConfig
from agentbox.errors import AgentboxError, ImageNotFoundError
from agentbox.protocol import WireModel
from agentbox.service.auth import Principal
from agentbox.service.engine_events import EngineEvent, EngineWatcher
from agentbox.service.errors import ApiError, from_agentbox_error
from agentbox.service.events import EventHub
from agentbox.service.labels import SERVICE, SERVICE_POOL
from agentbox.service.lifecycle import Lifecycle
from agentbox.service.metrics import Metrics
from agentbox.service.models import SandboxCreate, SandboxEvent
from agentbox.service.policy import Quota, check_config, check_labels, check_lifecycle, check_quota
from agentbox.service.pool import WarmPools
from agentbox.service.settings import ServiceSettings
from agentbox.service.store import SandboxRow, Store, Usage, utcnow

__all__ = ["SandboxManager", "SandboxStats", "Target"]

log = logging.getLogger("agentbox.service")

P = ParamSpec("P")
T = TypeVar("T")

#: Seconds a new sandbox's server gets to report ready.
START_TIMEOUT = 60.0
#: Seconds between two looks at a followed log. The backend interface has no log stream (only ``logs()``),
#: so a follower polls; it only runs while someone follows, and a state change ends the wait at once.
LOG_POLL = 0.5
#: States in which a followed log can still grow.
_LOG_LIVE = ("running", "paused")
#: Activity through the proxy is written to the store at most this often per sandbox.
ACTIVITY_WRITE_INTERVAL = 10.0

_ENGINE_STATES = {
    SandboxState.RUNNING: "running",
    SandboxState.PAUSED: "paused",
}


#: Who the service's own lifecycle actions are taken as (in the audit log: "service").
SERVICE_PRINCIPAL = Principal("service", True, Quota())


@dataclass(frozen=True)
class Target:
    """Where the proxy sends a sandbox's traffic."""

    sandbox_id: str
    endpoint: Endpoint
    key: str
    direct_ports: bool = False
    """Its server is its image's own (an OpenHands runtime), not agentbox's: there is no port forward in
    it, and its app ports are reached on its network address instead (never on a host address)."""


def config_json(config: SandboxConfig) -> dict[str, Any]:
    """The JSON form of a configuration (volumes as spec strings, which parse back exactly)."""
    data = config.model_dump(mode="json")
    data["volumes"] = [m.spec() for m in config.volumes]
    return data


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors(include_url=False)[:10]:
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"config.{loc}: {e['msg']}" if loc else f"config: {e['msg']}")
    return "invalid sandbox configuration: " + "; ".join(parts)


class SandboxStats(WireModel):
    """CPU and memory of a running sandbox, from the engine (GET /v1/sandboxes/{id}/stats)."""

    id: str = Field(description="The sandbox id.")
    cpu_percent: float | None = Field(description="CPU use since the previous sample, % of one core (100 = one core).")
    memory_bytes: int | None = Field(description="Memory in use, page cache excluded (as `docker stats`).")
    memory_limit_bytes: int | None = Field(description="The sandbox's memory limit (the host's memory when none).")
    pids: int | None = Field(description="Processes and threads in the sandbox.")


def _stats_of(
    sandbox_id: str, raw: dict[str, Any], previous: tuple[int, int] | None, samples: dict[str, tuple[int, int]]
) -> SandboxStats:
    """The wire form of one engine stats sample; CPU % from ``previous`` (or the engine's own pre-sample)."""
    cpu = raw.get("cpu_stats") or {}
    total = int((cpu.get("cpu_usage") or {}).get("total_usage") or 0)
    system = int(cpu.get("system_cpu_usage") or 0)
    if previous is None:
        pre = raw.get("precpu_stats") or {}
        previous = (int((pre.get("cpu_usage") or {}).get("total_usage") or 0), int(pre.get("system_cpu_usage") or 0))
    samples[sandbox_id] = (total, system)
    online = int(cpu.get("online_cpus") or 0) or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
    cpu_percent = None
    if system > previous[1] and previous[1] > 0:
        cpu_percent = round(max(0.0, (total - previous[0]) / (system - previous[1])) * online * 100.0, 2)
    mem = raw.get("memory_stats") or {}
    usage = mem.get("usage")
    extra = mem.get("stats") or {}
    cache = extra.get("inactive_file", extra.get("total_inactive_file", 0)) or 0
    return SandboxStats(
        id=sandbox_id,
        cpu_percent=cpu_percent,
        memory_bytes=max(0, int(usage) - int(cache)) if usage is not None else None,
        memory_limit_bytes=mem.get("limit"),
        pids=(raw.get("pids_stats") or {}).get("current"),
    )


class SandboxManager:
    """Sandboxes of one service: records in the store, containers on the backend."""

    def __init__(
        self, settings: ServiceSettings, store: Store, backend: Backend, service_id: str, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.store = store
        self.backend = backend
        self.service_id = service_id
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="agentbox-engine")
        self._locks: dict[str, asyncio.Lock] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._targets: dict[str, tuple[str, Target]] = {}
        # sandbox id -> (its CPU time, the host's CPU time) at the last stats call: one_shot stats lack it.
        self._cpu_samples: dict[str, tuple[int, int]] = {}
        self._activity_written: dict[str, float] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.events = EventHub()
        #: Called when a sandbox stops, is gone or dead: the proxy closes its connections to it (a restarted
        #: sandbox can be at the same address, where an old connection would meet nobody).
        self.drop_connections: Callable[[str], None] = lambda sandbox_id: None
        self.lifecycle = Lifecycle(self._expire_idle, self._expire_lifetime)
        self._oom: set[str] = set()
        self._watcher = EngineWatcher(backend, {SERVICE: service_id}, self._on_engine_event)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pools = WarmPools(self, settings.pools, settings.sandbox_defaults)

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    async def close(self) -> None:
        """Stop watching the engine and refilling pools, end event streams, wait for pending activity
        writes and let go of the worker threads."""
        await self._call(self._watcher.close)
        self.lifecycle.close()
        await self.pools.close()
        self.events.close()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- reading -------------------------------------------------------------------------------------------

    async def get(self, who: Principal, sandbox_id: str) -> SandboxRow:
        """The record, if ``who`` may see it; 404 otherwise (another token's id looks like no id)."""
        row = await self.store.run(self.store.sandbox, sandbox_id)
        if row is None or row.owner == "" or (not who.admin and row.owner != who.name):
            raise ApiError("not_found", f"no sandbox {sandbox_id!r}")
        return row

    async def list(self, who: Principal) -> list[SandboxRow]:
        """Every record ``who`` may see (all of them for an admin). Read-only: the same list object is
        returned until a record changes (callers may cache what they derive from it by identity)."""
        owner = None if who.admin else who.name
        rows = self.store.cached_listing(owner)
        if rows is None:
            rows = await self.store.run(self.store.listing, owner)
        return rows

    # -- create --------------------------------------------------------------------------------------------

    def effective_config(self, body: SandboxCreate) -> SandboxConfig:
        """The client's configuration over the operator's defaults, checked against the policy."""
        given = body.config.given()
        try:
            config = SandboxConfig.model_validate({**self.settings.sandbox_defaults, **given})
        except ValidationError as exc:
            raise ApiError("validation_error", _validation_message(exc)) from None
        except AgentboxError as exc:  # a malformed volume spec
            raise ApiError("validation_error", f"config.volumes: {exc}") from None
        if config.backend != self.backend.name:
            raise ApiError(
                "validation_error", f"config.backend: this service runs sandboxes on {self.backend.name!r}"
            )
        check_config(config, list(given.get("volumes") or []), self.settings.policy)
        return config

    def _labels(self, sandbox_id: str, user_labels: Mapping[str, str]) -> dict[str, str]:
        return {
            **user_labels,
            LABELS.SANDBOX: sandbox_id,
            LABELS.OWNER_PID: str(os.getpid()),
            LABELS.OWNER_HOST: socket.gethostname(),
            LABELS.CREATED: datetime.now(timezone.utc).isoformat(timespec="seconds"),
            LABELS.VERSION: __version__,
            # The service owns it, not a process: `agentbox reap` must spare it while the service restarts.
            LABELS.KEEP_ALIVE: "1",
            LABELS.SERVER_PORT: str(SERVER_PORT),
            SERVICE: self.service_id,
        }

    @staticmethod
    def _new_row(owner: str, config: SandboxConfig, labels: dict[str, str], pool: str | None = None) -> SandboxRow:
        now = utcnow()
        return SandboxRow(
            id=secrets.token_hex(6),
            owner=owner,
            container_id=None,
            state="creating",
            reason=None,
            config=config_json(config),
            labels=labels,
            session_key=secrets.token_urlsafe(32),
            cpus=config.cpus,
            memory=config.memory,
            created=now,
            last_activity=now,
            pool=pool,
        )

    async def create(self, who: Principal, body: SandboxCreate, progress: Progress | None = None) -> SandboxRow:
        """Check, then take a ready sandbox from a matching warm pool, or reserve, create and start one for
        ``who``; on any failure nothing is left. ``progress`` gets the steps of an image build (called from
        a worker thread)."""
        user_labels = check_labels(body.labels)
        config = self.effective_config(body)
        lifecycle = check_lifecycle(body.idle_timeout, body.max_lifetime, body.keep_alive, self.settings.policy)

        def check(usage: Usage) -> None:
            check_quota(config, who.quota, usage, who.name)

        started = time.monotonic()
        pool = self.pools.match(config, user_labels)
        if pool is not None:
            taken = await self.store.run(self.store.acquire_pooled, pool, who.name, user_labels, check, lifecycle)
            self.pools.wake(pool)
            if taken is not None:
                self.metrics.creates.labels(outcome="pooled").inc()
                self.metrics.create_seconds.observe(time.monotonic() - started)
                await self.store.run(self.store.audit, who.name, "create", taken.id, f"from pool {pool}")
                self.lifecycle.track(taken)
                self._emit(taken)
                return taken
        row = self._new_row(who.name, config, user_labels)
        row.idle_timeout, row.max_lifetime, row.keep_alive = lifecycle
        await self._make(who, row, config, check, started=started, progress=progress)
        return row

    async def _make(
        self,
        who: Principal,
        row: SandboxRow,
        config: SandboxConfig,
        check: Callable[[Usage], None],
        *,
        started: float | None = None,
        progress: Progress | None = None,
        note: str = "",
        error_id: str | None = None,
    ) -> None:
        """Reserve ``row`` (``check`` runs on the usage in the same transaction), then create and start its
        container; on any failure nothing of it is left and the error names ``error_id`` (default: the
        new sandbox). Counted (with its duration from ``started``), audited as a create by ``who``,
        tracked for its lifecycle and announced."""
        await self.store.run(self.store.reserve_sandbox, row, check)
        try:
            async with self._lock(row.id):
                await self._build(row, config, row.labels, progress=progress)
        except BaseException as exc:
            self.metrics.creates.labels(outcome="failed").inc()
            await self._discard(row)
            if isinstance(exc, AgentboxError):
                raise from_agentbox_error(exc).with_sandbox(error_id or row.id) from None
            raise
        self.metrics.creates.labels(outcome="ok").inc()
        if started is not None:
            self.metrics.create_seconds.observe(time.monotonic() - started)
        await self.store.run(self.store.audit, who.name, "create", row.id, note)
        self.lifecycle.track(row)
        self._emit(row)

    async def make_pooled(self, pool: str, config: SandboxConfig, labels: dict[str, str]) -> None:
        """Make one ready sandbox for ``pool`` (no owner yet); on failure nothing is left and it raises."""
        row = self._new_row("", config, labels, pool=pool)
        await self.store.run(self.store.reserve_sandbox, row, lambda usage: None)
        try:
            await self._build(row, config, labels, final_state="pooled", extra_labels={SERVICE_POOL: pool})
        except BaseException:
            await self._discard(row)
            raise

    async def _build(
        self,
        row: SandboxRow,
        config: SandboxConfig,
        user_labels: Mapping[str, str],
        *,
        final_state: str = "running",
        extra_labels: Mapping[str, str] | None = None,
        progress: Progress | None = None,
    ) -> None:
        backend = self.backend
        image = await self._call(backend.resolve_image, config, progress)
        labels = {**self._labels(row.id, user_labels), **(extra_labels or {})}
        spec = spec_from_config(config, image=image, sandbox_id=row.id, labels=labels)
        try:
            cid = await self._call(backend.create, spec)
        except ImageNotFoundError:
            if config.runtime_container_image:
                raise
            # The cached runtime image was removed meanwhile: make it again, once.
            image = await self._call(backend.resolve_image, config, progress, refresh=True)
            cid = await self._call(backend.create, replace(spec, image=image))
        row.container_id = cid
        await self.store.run(self.store.update_sandbox, row.id, container_id=cid)
        endpoint = await self._call(backend.start, cid, self._files(row, config), timeout=START_TIMEOUT)
        self._endpoints[row.id] = endpoint
        row.state = final_state
        await self.store.run(self.store.update_sandbox, row.id, state=final_state)

    @staticmethod
    def _files(row: SandboxRow, config: SandboxConfig) -> dict[str, tuple[bytes, int]]:
        import shlex

        files = {"session-key": (row.session_key.encode(), 0o600)}
        if config.env:
            script = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in config.env.items())
            files["env.sh"] = (script.encode(), 0o600)
        return files

    async def _discard(self, row: SandboxRow) -> None:
        """Remove whatever a failed create made (found by label too: the container id may not be known)."""
        try:
            await self._remove_containers(row.id, row.container_id, purge_volumes=True)
        finally:
            await self.store.run(self.store.delete_sandbox, row.id)
            self._forget(row.id)

    async def _remove_containers(self, sandbox_id: str, container_id: str | None, *, purge_volumes: bool) -> None:
        ids = {container_id} if container_id else set()
        infos = await self._call(self.backend.list)
        ids |= {i.container_id for i in infos if i.id == sandbox_id and i.labels.get(SERVICE) == self.service_id}
        for cid in ids:
            await self._call(self.backend.remove, cid, purge_volumes=purge_volumes)

    def _forget(self, sandbox_id: str) -> None:
        self.drop_connections(sandbox_id)
        self.lifecycle.forget(sandbox_id)
        self._targets.pop(sandbox_id, None)
        self._endpoints.pop(sandbox_id, None)
        self._cpu_samples.pop(sandbox_id, None)
        self._activity_written.pop(sandbox_id, None)
        self._locks.pop(sandbox_id, None)

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def _transition(self, who: Principal, sandbox_id: str, action: str) -> SandboxRow:
        row = await self.get(who, sandbox_id)
        async with self._lock(row.id):
            row = await self.get(who, sandbox_id)  # fresh, under the lock
            allowed = {"pause": ("running",), "resume": ("paused", "stopped"), "stop": ("running", "paused")}
            if row.state == "lost":
                raise ApiError("conflict", f"sandbox {row.id} is lost, it cannot {action}: {row.reason}")
            if row.state not in allowed[action]:
                needs = " or ".join(allowed[action])
                raise ApiError("conflict", f"sandbox {row.id} is {row.state}; {action} needs it {needs}")
            assert row.container_id is not None
            cid = row.container_id
            self._targets.pop(row.id, None)
            try:
                if action == "pause":
                    await self._call(self.backend.pause, cid)
                    new = "paused"
                elif action == "resume" and row.state == "paused":
                    await self._call(self.backend.resume, cid)
                    new = "running"
                elif action == "resume":
                    config = SandboxConfig.model_validate(row.config)
                    # The server deleted its key file when it first read it: hand the key over again.
                    endpoint = await self._call(
                        self.backend.start, cid, self._files(row, config), timeout=START_TIMEOUT, restart=True
                    )
                    self._endpoints[row.id] = endpoint
                    new = "running"
                else:
                    if row.state == "paused":
                        await self._call(self.backend.resume, cid)
                    await self._call(self.backend.stop, cid)
                    self._endpoints.pop(row.id, None)
                    self.drop_connections(row.id)
                    new = "stopped"
            except AgentboxError as exc:
                raise from_agentbox_error(exc).with_sandbox(row.id) from None
            row.state = new
            row.last_activity = utcnow()
            await self.store.run(self.store.update_sandbox, row.id, state=new, last_activity=row.last_activity)
            self._targets.pop(row.id, None)
            await self.store.run(self.store.audit, who.name, action, row.id, "")
            self.lifecycle.track(row)
        self._emit(row)
        return row

    async def pause(self, who: Principal, sandbox_id: str) -> SandboxRow:
        """Freeze a running sandbox."""
        return await self._transition(who, sandbox_id, "pause")

    async def resume(self, who: Principal, sandbox_id: str) -> SandboxRow:
        """Thaw a paused sandbox, or start a stopped one again."""
        return await self._transition(who, sandbox_id, "resume")

    async def stop(self, who: Principal, sandbox_id: str) -> SandboxRow:
        """Stop a sandbox's container (its files stay; resume starts it again)."""
        return await self._transition(who, sandbox_id, "stop")

    async def remove(self, who: Principal, sandbox_id: str) -> SandboxRow:
        """Remove the container and the record (idempotent for a sandbox half-removed before a crash)."""
        row = await self.get(who, sandbox_id)
        async with self._lock(row.id):
            row = await self.get(who, sandbox_id)
            if row.state == "creating":
                raise ApiError("conflict", f"sandbox {row.id} is still being created")
            self._targets.pop(row.id, None)
            await self.store.run(self.store.update_sandbox, row.id, state="removing")
            try:
                await self._remove_containers(row.id, row.container_id, purge_volumes=False)
            except AgentboxError as exc:
                raise from_agentbox_error(exc).with_sandbox(row.id) from None
            await self.store.run(self.store.delete_sandbox, row.id)
            await self.store.run(self.store.audit, who.name, "remove", row.id, "")
        self._forget(row.id)
        row.state = "removed"
        self._emit(row)
        return row

    async def replace(self, who: Principal, sandbox_id: str) -> SandboxRow:
        """A new sandbox in place of a lost one: the same owner, configuration, labels and lifecycle
        settings, placed anew by the backend (on a live node); then the lost one is removed. Only a lost
        sandbox can be replaced (409 otherwise: a live one would lose its processes and files). If the new
        one cannot be made, nothing of it is left and the lost one stays as it was."""
        row = await self.get(who, sandbox_id)
        async with self._lock(row.id):
            row = await self.get(who, sandbox_id)
            if row.state != "lost":
                raise ApiError(
                    "conflict",
                    f"sandbox {row.id} is {row.state}, not lost: only a sandbox whose node went down is replaced "
                    "(replacing a live one would throw away its processes and files); remove it and create "
                    "another if that is what you want",
                )
            config = SandboxConfig.model_validate(row.config)
            new = self._new_row(row.owner, config, dict(row.labels))
            new.idle_timeout, new.max_lifetime, new.keep_alive = row.idle_timeout, row.max_lifetime, row.keep_alive
            # A lost sandbox holds nothing and does not count: the owner's quota is checked as for a create
            # (an admin replacing another token's sandbox is not held to the admin's own quota).
            def check(usage: Usage) -> None:
                if who.name == row.owner:
                    check_quota(config, who.quota, usage, who.name)

            await self._make(who, new, config, check, note=f"replaces lost sandbox {row.id}", error_id=row.id)
            await self.store.run(self.store.update_sandbox, row.id, state="removing")
            try:
                await self._remove_containers(row.id, row.container_id, purge_volumes=False)
            except AgentboxError as exc:
                # The replacement stands; the lost one's remains go at the next start's reconcile.
                log.warning("removing lost sandbox %s (replaced by %s) failed: %s", row.id, new.id, exc)
            else:
                await self.store.run(self.store.delete_sandbox, row.id)
            await self.store.run(self.store.audit, who.name, "replace", row.id, f"replaced by {new.id}")
        self._forget(row.id)
        row.state = "removed"
        self._emit(row)
        return new

    async def logs(self, who: Principal, sandbox_id: str, tail: int | None) -> str:
        """The sandbox's container log (its runtime server's output)."""
        row = await self.get(who, sandbox_id)
        if row.container_id is None:
            raise ApiError("conflict", f"sandbox {row.id} has no container yet")
        try:
            return await self._call(self.backend.logs, row.container_id, tail=tail)
        except AgentboxError as exc:
            raise from_agentbox_error(exc).with_sandbox(row.id) from None

    async def follow_logs(self, who: Principal, sandbox_id: str, tail: int | None) -> AsyncIterator[bytes]:
        """The log so far (its last ``tail`` lines), then what it gains, until the sandbox stops running
        (stopped, dead or removed) or the consumer stops iterating. Checks access before returning, so a
        refusal is an error answer rather than a broken stream."""
        row = await self.get(who, sandbox_id)
        if row.container_id is None:
            raise ApiError("conflict", f"sandbox {row.id} has no container yet")
        container_id = row.container_id
        try:
            text = await self._call(self.backend.logs, container_id)
        except AgentboxError as exc:
            raise from_agentbox_error(exc).with_sandbox(row.id) from None
        return self._follow(row.id, container_id, text, tail, row.state in _LOG_LIVE)

    async def _follow(
        self, sandbox_id: str, container_id: str, text: str, tail: int | None, live: bool
    ) -> AsyncIterator[bytes]:
        queue = self.events.subscribe()
        try:
            first = text
            if tail is not None:
                first = "".join(text.splitlines(keepends=True)[-tail:]) if tail else ""
            if first:
                yield first.encode()
            seen = len(text)
            while live:
                try:
                    event = await asyncio.wait_for(queue.get(), LOG_POLL)
                except asyncio.TimeoutError:
                    event = None
                else:
                    if event is None:  # the service is shutting down
                        return
                    if event.id != sandbox_id or event.state in _LOG_LIVE:
                        continue
                    live = False  # one last look: what it wrote while stopping
                try:
                    text = await self._call(self.backend.logs, container_id)
                except AgentboxError:
                    return  # removed meanwhile: the log is gone with it
                if len(text) > seen:
                    yield text[seen:].encode()
                seen = len(text)
        finally:
            self.events.unsubscribe(queue)

    async def stats(self, who: Principal, sandbox_id: str) -> SandboxStats:
        """CPU and memory of a running sandbox, from the engine's stats (one sample, no stream)."""
        row = await self.get(who, sandbox_id)
        if row.state != "running" or row.container_id is None:
            raise ApiError("conflict", f"sandbox {row.id} is {row.state}: only a running sandbox has stats")
        engine = getattr(self.backend, "api", None)  # the Docker SDK's API client (the Backend has no stats)
        if engine is None:
            raise ApiError("conflict", f"the {self.backend.name} backend reports no engine stats")
        cid = row.container_id
        previous = self._cpu_samples.get(row.id)
        try:
            # one_shot answers at once but without the previous CPU sample: the last call's is used instead.
            # The first call waits for the engine's own second sample (about a second).
            raw = await self._call(engine.stats, cid, stream=False, one_shot=previous is not None)
        except Exception as exc:  # docker.errors.* (not imported here: the manager knows only the Backend)
            raise ApiError("conflict", f"sandbox {row.id}: no stats from the engine ({exc})") from None
        return _stats_of(row.id, raw, previous, self._cpu_samples)

    # -- the proxy's view ----------------------------------------------------------------------------------

    async def target(self, who: Principal, sandbox_id: str) -> Target:
        """Where to send ``who``'s traffic for a sandbox; 409 unless it is running.

        Answered from memory after the first request (the proxied round trip should not wait for the
        store); every state change of the sandbox goes through this manager, which forgets the entry.
        """
        known = self._targets.get(sandbox_id)
        if known is not None and (who.admin or known[0] == who.name):
            self.touch(sandbox_id)
            return known[1]
        row = await self.get(who, sandbox_id)
        if row.state == "lost":
            raise ApiError("conflict", f"sandbox {row.id} is lost: {row.reason}")
        if row.state != "running" or row.container_id is None:
            hint = "; resume it first" if row.state in ("paused", "stopped") else ""
            raise ApiError("conflict", f"sandbox {row.id} is {row.state}{hint}")
        endpoint = self._endpoints.get(row.id)
        if endpoint is None:
            try:
                endpoint = await self._call(self.backend.endpoint, row.container_id)
            except AgentboxError as exc:
                raise ApiError("sandbox_unreachable", f"sandbox {row.id}: {exc}") from None
            self._endpoints[row.id] = endpoint
        self.touch(row.id)
        # OpenHands runtimes (service/openhands) carry this label. A client that sets it on a sandbox of its
        # own reaches that sandbox's own address only: never the host's.
        direct = endpoint.via == "network" and "openhands.kind" in row.labels
        target = Target(row.id, endpoint, row.session_key, direct_ports=direct)
        if not self._lock(row.id).locked():  # a transition in flight may be about to change the state
            self._targets[row.id] = (row.owner, target)
        return target

    def touch(self, sandbox_id: str) -> None:
        """Count a request through the proxy as activity (written to the store at most every few seconds:
        the proxied round trip must not wait for the file)."""
        now = time.monotonic()
        self.lifecycle.touch(sandbox_id)
        if now - self._activity_written.get(sandbox_id, -ACTIVITY_WRITE_INTERVAL) < ACTIVITY_WRITE_INTERVAL:
            return
        self._activity_written[sandbox_id] = now
        task = asyncio.get_running_loop().create_task(
            self.store.run(self.store.update_sandbox, sandbox_id, last_activity=utcnow())
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- reconcile -----------------------------------------------------------------------------------------

    async def reconcile(self) -> dict[str, int]:
        """Make the records and the engine agree after a start (or a crash); returns counts per outcome."""
        counts = {"adopted": 0, "dead": 0, "lost": 0, "removed": 0}
        infos = await self._call(self.backend.list)
        mine: dict[str, list[SandboxInfo]] = {}
        for info in infos:
            if info.labels.get(SERVICE) == self.service_id:
                mine.setdefault(info.id, []).append(info)
        for row in await self.store.run(self.store.sandboxes, pooled=True):
            found = mine.pop(row.id, [])
            if row.state in ("creating", "removing"):
                why = "half-created" if row.state == "creating" else "removal was interrupted"
                for info in found:
                    await self._call(self.backend.remove, info.container_id, purge_volumes=row.state == "creating")
                await self.store.run(self.store.delete_sandbox, row.id)
                await self.store.run(self.store.audit, "service", "reconcile.remove", row.id, why)
                counts["removed"] += 1
                continue
            if not found:
                if row.state == "pooled":
                    await self.store.run(self.store.delete_sandbox, row.id)
                    counts["removed"] += 1
                elif row.state != "dead":
                    await self._mark_dead(row, "its container is gone (removed outside the service)")
                    counts["dead"] += 1
                continue
            info = found[0]
            if info.state is SandboxState.LOST and row.state not in ("lost", "pooled"):
                await self._mark_lost(row, info.node, action="reconcile.lost")
                counts["lost"] += 1
                continue
            actual = _ENGINE_STATES.get(info.state)
            if row.state == "pooled":
                if actual != "running":  # a pool sandbox nobody owns: not worth keeping unless ready
                    await self._call(self.backend.remove, info.container_id, purge_volumes=True)
                    await self.store.run(self.store.delete_sandbox, row.id)
                    counts["removed"] += 1
                else:
                    counts["adopted"] += 1
                continue
            if actual is None:  # exited (or lost, and recorded so)
                if row.state not in ("stopped", "dead", "lost"):
                    await self._mark_dead(row, "its container exited without being stopped (crash or out of memory)")
                    counts["dead"] += 1
                continue
            if row.state != actual:
                await self.store.run(self.store.update_sandbox, row.id, state=actual)
                await self.store.run(self.store.audit, "service", "reconcile.adopt", row.id, f"{row.state} -> {actual}")
            counts["adopted"] += 1
        for sandbox_id, orphans in mine.items():
            for info in orphans:
                await self._call(self.backend.remove, info.container_id, purge_volumes=True)
            await self.store.run(
                self.store.audit, "service", "reconcile.remove", sandbox_id, "container without a record"
            )
            counts["removed"] += 1
        for row in await self.store.run(self.store.sandboxes):
            self.lifecycle.track(row)
        log.info("reconciled: %s", counts)
        return counts

    async def _expire_idle(self, sandbox_id: str) -> None:
        try:
            await self._transition(SERVICE_PRINCIPAL, sandbox_id, "pause")
        except ApiError as exc:  # it changed state (or went away) meanwhile: nothing to do
            log.info("idle pause of %s skipped: %s", sandbox_id, exc)

    async def _expire_lifetime(self, sandbox_id: str) -> None:
        try:
            await self.remove(SERVICE_PRINCIPAL, sandbox_id)
        except ApiError as exc:
            log.info("end-of-life removal of %s skipped: %s", sandbox_id, exc)

    async def _mark_dead(self, row: SandboxRow, reason: str, action: str = "reconcile.dead") -> None:
        await self.store.run(self.store.update_sandbox, row.id, state="dead", reason=reason)
        await self.store.run(self.store.audit, "service", action, row.id, reason)
        self._forget(row.id)
        row.state, row.reason = "dead", reason
        self._emit(row)

    async def _mark_lost(self, row: SandboxRow, node: str | None, action: str = "engine.lost") -> None:
        where = f"node {node}" if node else "its node"
        reason = (
            f"{where} went down, and with it the sandbox's processes and files (it is never restarted "
            "elsewhere: a copy with a fresh filesystem would pass for it); replace it "
            f"(POST /v1/sandboxes/{row.id}/replace) or remove it"
        )
        await self.store.run(self.store.update_sandbox, row.id, state="lost", reason=reason)
        await self.store.run(self.store.audit, "service", action, row.id, f"{where} is down")
        self._forget(row.id)
        row.state, row.reason = "lost", reason
        self._emit(row)

    def _emit(self, row: SandboxRow) -> None:
        if row.owner:  # a pool's sandboxes are nobody's business until taken
            self.events.publish(
                SandboxEvent(id=row.id, owner=row.owner, state=row.state, reason=row.reason, at=utcnow())
            )

    # -- the engine's events -------------------------------------------------------------------------------

    async def watch_engine(self) -> None:
        """Follow the engine's events for this service's containers (call before :meth:`reconcile`, so
        nothing that happens after the reconcile's look is missed)."""
        self._loop = asyncio.get_running_loop()
        # Subscribing is engine I/O (and a first look at the sandboxes, for a backend that polls).
        await self._call(self._watcher.start)

    def _on_engine_event(self, event: EngineEvent) -> None:
        """From the watcher's thread: hand the event to the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def handle() -> None:
            task = loop.create_task(self._engine_event(event))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        loop.call_soon_threadsafe(handle)

    async def _engine_event(self, event: EngineEvent) -> None:
        if event.kind == "oom":
            self._oom.add(event.sandbox_id)
            return
        if event.kind == "lost":
            await self._lost_event(event)
            return
        if event.kind not in ("die", "destroy"):
            return
        if self._lock(event.sandbox_id).locked():
            return  # the service itself is stopping or removing it
        row = await self.store.run(self.store.sandbox, event.sandbox_id)
        if row is None:
            return
        if row.state == "pooled":
            await self._discard(row)
            if row.pool:
                self.pools.wake(row.pool)
            return
        if row.state not in ("running", "paused"):
            return
        if event.kind == "destroy":
            reason = "its container was removed outside the service"
        else:
            oom = " (killed for lack of memory)" if event.sandbox_id in self._oom else ""
            code = f" with code {event.exit_code}" if event.exit_code is not None else ""
            reason = f"its container exited{code}{oom} without being stopped"
        self._oom.discard(event.sandbox_id)
        await self._mark_dead(row, reason, action="engine.dead")

    async def _lost_event(self, event: EngineEvent) -> None:
        async with self._lock(event.sandbox_id):  # after a transition in flight, which would fail anyway
            row = await self.store.run(self.store.sandbox, event.sandbox_id)
            if row is None or row.state in ("lost", "removing", "creating"):
                return  # a create in flight fails on its own; a removal goes on
            if row.state == "pooled":
                await self._discard(row)
                if row.pool:
                    self.pools.wake(row.pool)
                return
            await self._mark_lost(row, event.node)
