"""The one pure function that turns a sandbox spec into a Swarm service (no engine calls here).

A sandbox is a one-task service: replicas 1, restart condition ``none`` (a task that ends, or whose node
goes down, is never started again elsewhere with a fresh filesystem), DNS round-robin endpoints (no
IPVS needed), ``--init``, and no published port (the relay reaches it, see :mod:`.relay`).

Its command waits for ``/run/agentbox/.delivered`` before the image's entrypoint runs: Swarm starts a
task as soon as it is placed, and the session key is handed to the running task through its node's
engine (``put_archive``, as on one host), never through the service spec, its environment or a secret.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from agentbox.backends.labels import IDENTITY_LABELS, LABELS
from agentbox.backends.spec import SERVER_DIR, ContainerSpec
from agentbox.errors import ConfigError

__all__ = ["DELIVERED", "ENTRYPOINT", "RUNTIME_REFUSED", "ServicePlan", "service_args", "workspace_volume"]

#: Why runtime="runsc" (any runtime but the node's default) is refused, before anything is built or made.
RUNTIME_REFUSED = (
    "runtime={runtime!r} cannot be used on Swarm: a Swarm service cannot choose an OCI runtime (the service "
    "spec has no runtime field, Docker API 1.41); make it the default runtime of every node's dockerd "
    '("default-runtime" in its daemon.json) and leave runtime at runc'
)

#: The image's own entrypoint, run once the key is there.
ENTRYPOINT = "/opt/agentbox/bin/agentbox-entrypoint"
#: Written after the session key (a second archive): the key file is complete when this exists.
DELIVERED = ".delivered"
# The marker stays: removing it as soon as it appears raced the engine's extraction of it (which creates
# the file, then lchowns it: "lchown /run/agentbox/.delivered: no such file or directory").
_WAIT = f'while [ ! -e /run/agentbox/{DELIVERED} ]; do sleep 0.02; done; exec {ENTRYPOINT} "$@"'


def workspace_volume(sandbox_id: str) -> str:
    """The named volume agentbox gives a sandbox's work dir when nothing is mounted there: it keeps the
    work dir's files over stop/start (a new task is a new container) on the node the sandbox is pinned to."""
    return f"agentbox-{sandbox_id}-work"


@dataclass(frozen=True)
class ServicePlan:
    """What the backend decided beside the spec: networks (real names) and placement constraints."""

    networks: tuple[str, ...]
    constraints: tuple[str, ...] = ()


def service_args(spec: ContainerSpec, plan: ServicePlan) -> dict[str, Any]:
    """Keyword arguments for ``APIClient.create_service(**args)``."""
    from docker.types import (
        ContainerSpec as SwarmContainer,
    )
    from docker.types import (
        EndpointSpec,
        Mount,
        Placement,
        Resources,
        RestartPolicy,
        ServiceMode,
        TaskTemplate,
    )

    if spec.network_mode == "host":
        raise ConfigError("use_host_network cannot be used on Swarm: a sandbox's node is not this host")
    if spec.runtime:
        raise ConfigError(RUNTIME_REFUSED.format(runtime=spec.runtime))
    sandbox_id = spec.label_map.get(LABELS.SANDBOX, "")
    # Volumes the engine creates for the task carry the caller's labels (a test's session label...).
    volume_labels = {k: v for k, v in spec.labels if k not in IDENTITY_LABELS}
    volume_labels.update({LABELS.MANAGED: "1", LABELS.CREATED_FOR: sandbox_id})
    mounts = []
    for m in spec.mounts:
        if m.kind == "bind":
            mounts.append(Mount(target=m.target, source=m.source, type="bind", read_only=m.read_only))
        elif m.target == SERVER_DIR:  # shared by every sandbox of the image on the node: not this one's
            mounts.append(Mount(target=m.target, source=m.source, type="volume", read_only=True))
        else:
            mounts.append(Mount(target=m.target, source=m.source, type="volume", read_only=m.read_only,
                                labels=volume_labels))
    work_dir = spec.working_dir or "/workspace"
    if not any(posixpath.normpath(m.target) == posixpath.normpath(work_dir) for m in spec.mounts):
        mounts.append(Mount(target=work_dir, source=workspace_volume(sandbox_id), type="volume", labels=volume_labels))
    container = SwarmContainer(
        image=spec.image,
        command=["sh", "-c", _WAIT, "agentbox-entrypoint"],
        args=list(spec.command),
        hostname=spec.hostname,
        workdir=spec.working_dir,
        user=spec.user,
        labels=spec.label_map,
        mounts=mounts,
        stop_grace_period=int(spec.stop_timeout * 1e9),
        stop_signal="SIGTERM",
        init=True,
        cap_add=list(spec.security.cap_add) or None,
        cap_drop=list(spec.security.cap_drop) or None,
    )
    resources = Resources(cpu_limit=spec.limits.nano_cpus, mem_limit=spec.limits.memory)
    if spec.limits.pids_limit is not None:
        resources.setdefault("Limits", {})["Pids"] = spec.limits.pids_limit
    template = TaskTemplate(
        container_spec=container,
        resources=resources,
        restart_policy=RestartPolicy(condition="none"),
        placement=Placement(constraints=list(plan.constraints) or None),
        networks=[{"Target": name} for name in plan.networks],
    )
    return {
        "task_template": template,
        "name": spec.name,
        "labels": spec.label_map,
        "mode": ServiceMode("replicated", replicas=1),
        "endpoint_spec": EndpointSpec(mode="dnsrr"),
    }
