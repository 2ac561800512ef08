"""Who owns a sandbox, and removing those whose owner is gone: the same rule on every engine.

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

from agentbox.backends.base import Backend, SandboxInfo
from agentbox.backends.labels import LABELS
from agentbox.errors import SandboxError

__all__ = ["is_orphan", "pid_alive", "remove_orphans"]


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


def remove_orphans(
    backend: Backend,
    *,
    dry_run: bool = False,
    labels: Mapping[str, str] | None = None,
    manager_running: Callable[[str], bool] = lambda _container: True,
) -> list[str]:
    """Remove ``backend``'s orphaned sandboxes (only those carrying all of ``labels``, if given) and forget
    their state files; returns their ids. ``manager_running``: whether a manager container still runs
    (an engine that cannot tell says yes, and spares them)."""
    host = socket.gethostname()
    reaped = []
    for info in backend.list(labels=labels):
        if not is_orphan(info, host=host, pid_alive=pid_alive, manager_running=manager_running):
            continue
        reaped.append(info.id)
        if not dry_run:
            backend.remove(info.container_id)
            with contextlib.suppress(SandboxError):
                backend.store.delete(info.id)
    return reaped
