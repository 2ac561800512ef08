"""Finding and removing orphans: sandboxes whose owner is gone, and what they left behind.

The owner of a sandbox is a process on this host (owner pid + host labels, or the newer owner recorded
by a reattach), or, for sandboxes started by agentbox running in a container, that container.
Keep-alive sandboxes are never reaped. A caller can restrict reaping to sandboxes carrying given labels
(a test suite reaping only what it made, never other processes' orphans).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from agentbox.backends.base import SandboxInfo
from agentbox.backends.labels import LABELS
from agentbox.errors import SandboxError

if TYPE_CHECKING:
    from agentbox.backends.docker.backend import DockerBackend

__all__ = ["is_orphan", "pid_alive", "reap"]


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists on this host (ours or someone else's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def is_orphan(
    info: SandboxInfo, *, host: str, pid_alive: Callable[[int], bool], manager_running: Callable[[str], bool]
) -> bool:
    """True when ``info``'s owner is gone (pure: the liveness checks are passed in)."""
    if info.keep_alive:
        return False
    manager = info.labels.get(LABELS.MANAGER)
    if manager:
        return not manager_running(manager)
    if info.owner_host != host or info.owner_pid is None:
        return False  # another host's process: cannot tell from here
    return not pid_alive(info.owner_pid)


def reap(backend: DockerBackend, *, dry_run: bool = False, labels: Mapping[str, str] | None = None) -> list[str]:
    """Remove orphaned sandboxes (only those carrying all of ``labels``, if given); returns their ids.

    Then forgets state files of sandboxes that no longer exist, removes control networks of managers that
    are gone and socket directories without a sandbox: leftovers that belong to no living sandbox.
    """
    host = socket.gethostname()
    managers: dict[str, bool] = {}

    def manager_running(container_id: str) -> bool:
        if container_id not in managers:
            managers[container_id] = backend.container_running(container_id)
        return managers[container_id]

    reaped = []
    for info in backend.list(labels=labels):
        if not is_orphan(info, host=host, pid_alive=pid_alive, manager_running=manager_running):
            continue
        reaped.append(info.id)
        if not dry_run:
            backend.remove(info.container_id)
            with contextlib.suppress(SandboxError):
                backend.store.delete(info.id)
    if not dry_run:
        _forget_records(backend, host)
        backend.networks.reap_control(backend.container_running)
        backend.egress.reap(backend.present_ids())
        entries = backend.sockets.candidates()
        if entries:
            backend.sockets.sweep(entries, backend.present_ids())
    return reaped


def _forget_records(backend: DockerBackend, host: str) -> None:
    """Forget this host's state files of sandboxes that no longer exist on this engine."""
    # Records first: one is written only after its container exists, so a sandbox being created right
    # now is either not listed here yet, or already present below.
    ids = backend.store.ids()
    present = backend.present_ids()
    for sandbox_id in ids:
        if sandbox_id in present:
            continue
        with contextlib.suppress(SandboxError, OSError):
            record = backend.store.load(sandbox_id)
            if record is not None and record.owner_host == host:
                backend.store.delete(sandbox_id)
