"""Reaping on a Docker engine: the orphans (the engine-neutral rule is
:mod:`agentbox.backends.ownership`), then what no living sandbox uses any more: state files, control
networks of managers that are gone, egress leftovers and socket directories.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING

from agentbox.backends.ownership import remove_orphans
from agentbox.errors import SandboxError

if TYPE_CHECKING:
    from agentbox.backends.docker.backend import DockerBackend

__all__ = ["reap"]


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

    reaped = remove_orphans(backend, dry_run=dry_run, labels=labels, manager_running=manager_running)
    if not dry_run:
        _forget_records(backend, host)
        backend.networks.reap_control(backend.container_running)
        backend.egress.reap(backend.present_ids())
        backend.sweep_dirs()
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
