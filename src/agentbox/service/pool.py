"""Warm pools: ready sandboxes of a known profile, handed out instantly to a matching create.

A pool's sandboxes are ordinary records with no owner (state ``pooled``, container labelled
``agentbox.service-pool=<name>``). A create whose effective configuration *and* labels equal a profile's
takes one in a single store transaction (quota checked in it), so two creates never get the same. Each
pool has one refill task that sleeps until woken (at start, after every take) and then makes sandboxes,
one at a time, until the pool is full again: no polling. A failing refill backs off before trying again.

An OpenHands pool (``[pool.openhands]``) holds runtimes of OpenHands' own image and server instead; only
OpenHands' ``/start`` takes them, when it posts exactly the pool's launch (:mod:`agentbox.service.openhands.pooling`).

A pooled sandbox cannot receive its owner's workspace: bind mounts are fixed when a container is created,
before the owner is known (see the closing note of the report: a propagating mount point would need a
mount made on the host after start, which the Backend interface cannot express and which needs root).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agentbox.config import SandboxConfig
from agentbox.service.settings import PoolSpec

if TYPE_CHECKING:
    from agentbox.service.openhands.models import Launch
    from agentbox.service.sandboxes import SandboxManager

__all__ = ["WarmPools"]

log = logging.getLogger("agentbox.service")

#: Seconds a pool waits after a failed refill before trying again.
REFILL_BACKOFF = 30.0


class WarmPools:
    """Every ``[[pool]]`` of the service and its refill task."""

    def __init__(self, manager: SandboxManager, specs: tuple[PoolSpec, ...], defaults: Mapping[str, Any]) -> None:
        from agentbox.service.sandboxes import config_json

        self._manager = manager
        self._specs = {p.name: p for p in specs}
        self._configs = {p.name: SandboxConfig.model_validate({**defaults, **p.config}) for p in specs}
        self._keys = {name: config_json(c) for name, c in self._configs.items()}
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def specs(self) -> dict[str, PoolSpec]:
        """The pools by name."""
        return self._specs

    def match(self, config: SandboxConfig, labels: Mapping[str, str]) -> str | None:
        """The pool whose sandboxes are exactly what this create asks for, if any."""
        from agentbox.service.sandboxes import config_json

        key = None
        for name, spec in self._specs.items():
            if spec.size == 0 or spec.openhands is not None or dict(labels) != spec.labels:
                continue
            key = key or config_json(config)
            if key == self._keys[name]:
                return name
        return None

    def match_launch(self, config: SandboxConfig, launch: Launch) -> str | None:
        """The OpenHands pool whose runtimes are exactly what this ``/start`` asks for, if any."""
        from agentbox.service.sandboxes import config_json

        key = None
        for name, spec in self._specs.items():
            if spec.size == 0 or spec.openhands != launch:
                continue
            key = key or config_json(config)
            if key == self._keys[name]:
                return name
        return None

    def start(self) -> None:
        """Start one refill task per pool (call once the store and engine are reconciled)."""
        for name in self._specs:
            event = self._wake[name] = asyncio.Event()
            event.set()
            self._tasks.append(asyncio.create_task(self._refill(name), name=f"agentbox-pool-{name}"))

    def wake(self, name: str) -> None:
        """Tell a pool's refill task to look again (a sandbox was taken)."""
        event = self._wake.get(name)
        if event is not None:
            event.set()

    async def close(self) -> None:
        """Stop refilling (sandboxes being made are finished by the next start's reconcile)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _refill(self, name: str) -> None:
        spec, config = self._specs[name], self._configs[name]
        manager = self._manager
        event = self._wake[name]
        while True:
            await event.wait()
            event.clear()
            while True:
                ready, making = (await manager.store.run(manager.store.pool_counts)).get(name, (0, 0))
                if ready + making >= spec.size:
                    break
                try:
                    if spec.openhands is not None:
                        from agentbox.service.openhands.pooling import make_pooled_runtime

                        await make_pooled_runtime(manager, name, config, spec.openhands)
                    else:
                        await manager.make_pooled(name, config, dict(spec.labels))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # an engine hiccup must not end the pool
                    log.warning("pool %s: making a sandbox failed (retrying in %.0f s): %s", name, REFILL_BACKOFF, exc)
                    await asyncio.sleep(REFILL_BACKOFF)
