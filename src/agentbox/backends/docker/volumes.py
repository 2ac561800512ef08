"""Named volumes a sandbox mounts: created (labelled) when missing, removed only when a start failed.

A named volume is the user's data: it outlives its sandbox, unless agentbox created it for a sandbox
whose start then failed (nothing half-created is left behind).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from agentbox.backends.docker.errors import engine_errors
from agentbox.backends.labels import IDENTITY_LABELS, LABELS
from agentbox.backends.spec import ContainerSpec

__all__ = ["create_missing_volumes", "remove_volumes", "volumes_created_for"]


def create_missing_volumes(api: Any, spec: ContainerSpec) -> list[str]:
    """Create (labelled) the named volumes the spec mounts that do not exist yet; returns their names."""
    from docker.errors import NotFound

    created: list[str] = []
    labels = {k: v for k, v in spec.labels if k not in IDENTITY_LABELS}
    labels.update({LABELS.MANAGED: "1", LABELS.CREATED_FOR: spec.label_map.get(LABELS.SANDBOX, "")})
    for mount in spec.mounts:
        if mount.kind != "volume":
            continue
        try:
            with engine_errors(f"inspecting volume {mount.source}"):
                try:
                    api.inspect_volume(mount.source)
                    continue
                except NotFound:
                    pass
            with engine_errors(f"creating volume {mount.source}"):
                api.create_volume(mount.source, labels=labels)
        except BaseException:
            remove_volumes(api, created)
            raise
        created.append(mount.source)
    return created


def volumes_created_for(api: Any, sandbox_id: str) -> list[str]:
    """Names of the volumes agentbox created for ``sandbox_id``."""
    with engine_errors("listing the sandbox's volumes"):
        found = api.volumes(filters={"label": f"{LABELS.CREATED_FOR}={sandbox_id}"})
    return [str(v["Name"]) for v in (found.get("Volumes") or [])]


def remove_volumes(api: Any, names: Iterable[str]) -> None:
    """Remove volumes, ignoring those already gone or still in use."""
    from docker.errors import APIError

    for name in names:
        with contextlib.suppress(APIError):
            api.remove_volume(name)
