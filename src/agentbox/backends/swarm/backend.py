"""SwarmBackend: each sandbox a one-task service placed by a Docker Swarm (docker SDK, API 1.41+).

Who is talked to, for what:

* the **manager** (``swarm_manager``, else DOCKER_HOST as the docker CLI finds its engine): services,
  tasks, nodes, overlay networks, and the relay container (:mod:`.relay`) through which this process
  reaches every runtime server;
* the **node** that runs a sandbox's task (``swarm_nodes``: hostname -> engine URL): the session key is
  handed to the running task there (``put_archive``; never in the service spec, its environment, or a
  Swarm secret), and pause, resume, logs and image loads go there;
* the **local engine** (DOCKER_HOST): builds the runtime image, which is then loaded into the nodes that
  lack it when there is no registry.

A sandbox's container id, as the Backend interface calls it, is its service id. Stop scales the service
to 0 and pins it to its node; start scales it back to 1: a new container, so only the work dir (a named
volume agentbox adds when nothing is mounted there) and other volumes survive a stop, not the rest of the
container's filesystem. A sandbox whose node is down is ``lost``: Swarm does not restart it elsewhere
(restart condition none), and its stale copy is removed when the node is back and the sandbox removed.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from agentbox.backends.base import Backend, Endpoint, Progress, SandboxInfo, SandboxState
from agentbox.backends.docker import lifecycle
from agentbox.backends.docker.errors import engine_errors
from agentbox.backends.docker.networks import NetworkRef, resolve_network_name
from agentbox.backends.docker.once import OnceByKey
from agentbox.backends.events import POLL_INTERVAL, EventStream, PolledEvents
from agentbox.backends.labels import IDENTITY_LABELS, LABELS
from agentbox.backends.ownership import remove_orphans
from agentbox.backends.spec import DEFAULT_NETWORK, NONE_NETWORK, SERVER_PORT, ContainerSpec, with_server_volume
from agentbox.backends.state import StateStore
from agentbox.backends.swarm.placement import PATHS_LABEL, Node, choose, pinned_node
from agentbox.backends.swarm.relay import Relay, sandbox_path
from agentbox.backends.swarm.service import DELIVERED, RUNTIME_REFUSED, ServicePlan, service_args, workspace_volume
from agentbox.errors import (
    AgentboxError,
    ConfigError,
    EngineUnavailableError,
    NetworkNotFoundError,
    SandboxError,
    SandboxNotFoundError,
    SandboxStartError,
)
from agentbox.images.server_volume import ensure_server_volume

if TYPE_CHECKING:
    import docker
    from agentbox.config import SandboxConfig

__all__ = ["PATHS_LABEL", "SwarmBackend"]

log = logging.getLogger("agentbox.backends.swarm")

ROLE_SANDBOX_NET = "sandbox"
#: Service label set when agentbox first sees a sandbox's node down (value: the node's hostname). The
#: service is scaled to 0 at the same time, so no later reconcile of the swarm starts it again, fresh,
#: on that node; the sandbox stays ``lost`` until it is removed (or replaced by a new one).
LOST_LABEL = "agentbox.lost-on"
#: Service label of a sandbox removed while its node was down (value: "purge" to remove all its volumes,
#: else "1"): what it left on that node (a stale container, its volumes, the overlay they share) can only
#: be removed once the node is back, so the service stays as a marker, hidden from list and find, until a
#: look at the sandboxes finds the node ready and finishes the removal.
REMOVED_LABEL = "agentbox.removed"

_STARTING = {"new", "pending", "assigned", "accepted", "preparing", "ready", "starting"}


@dataclass(frozen=True)
class Task:
    node_id: str
    state: str
    desired: str
    container_id: str | None
    error: str


def _parse_created(value: str | None) -> datetime | None:
    if value:
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value)
    return None


def _lost_message(hostname: str) -> str:
    return (
        f"the sandbox is lost: its node {hostname} went down, and with it the sandbox's processes and files "
        "(Swarm does not move a sandbox: a copy elsewhere would start with a fresh filesystem); remove it, "
        "or create a new one in its place"
    )


def _client(url: str | None) -> docker.DockerClient:
    from docker.errors import DockerException

    import docker

    try:
        client = docker.DockerClient(base_url=url, timeout=120, max_pool_size=64) if url else docker.from_env(
            timeout=120, max_pool_size=64
        )
    except DockerException as exc:
        raise EngineUnavailableError(f"no Docker engine answers at {url or 'DOCKER_HOST'}: {exc}") from exc
    try:
        client.ping()
    except DockerException as exc:
        client.close()  # its pool's sockets, else left to the collector (a node that is down is retried)
        raise EngineUnavailableError(f"no Docker engine answers at {url or 'DOCKER_HOST'}: {exc}") from exc
    return client


class SwarmBackend(Backend):
    """Sandboxes as one-task services on a Docker Swarm; one instance serves every sandbox of a process."""

    name = "swarm"

    def __init__(self, config: SandboxConfig | None = None, *, store: StateStore | None = None) -> None:
        if config is None:
            from agentbox.config import resolve_config

            config = resolve_config().config
        self.settings = config
        self._store = store or StateStore()
        self._facts: OnceByKey[str, Any] = OnceByKey()
        self._nodes: dict[str, docker.DockerClient] = {}
        self._images: OnceByKey[str, str] = OnceByKey()
        # Placement in this process, one at a time: a node chosen but not yet holding its service
        # counts in _reserved, so two creates at once do not both take a node's last free place.
        self._placing = threading.Lock()
        self._reserved: dict[str, int] = {}

    # -- plumbing ------------------------------------------------------------------------------------------

    @property
    def store(self) -> StateStore:
        return self._store

    @property
    def api(self) -> Any:
        """The manager's low-level API client."""
        client = self._facts.get("manager", lambda: _client(self.settings.swarm_manager))
        return client.api

    @property
    def relay(self) -> Relay:
        def make() -> Relay:
            address = self.settings.swarm_relay_address
            if not address:
                with engine_errors("asking the manager for its swarm address"):
                    info = self.api.info().get("Swarm") or {}
                if info.get("LocalNodeState") != "active" or not info.get("ControlAvailable"):
                    raise ConfigError(
                        f"the engine at {self.settings.swarm_manager or 'DOCKER_HOST'} is not a Swarm manager "
                        "(backend=swarm needs one: `docker swarm init`, or point swarm_manager at a manager)"
                    )
                address = str(info.get("NodeAddr"))
            return Relay(self.api, address)

        return self._facts.get("relay", make)

    def node_api(self, hostname: str) -> Any:
        """The engine of the node called ``hostname`` (from ``swarm_nodes``)."""
        url = self.settings.swarm_nodes.get(hostname)
        if url is None:
            raise ConfigError(
                f"no engine URL for Swarm node {hostname!r}: agentbox hands the session key to a sandbox, and "
                f"pauses it and reads its log, on its node; add it to swarm_nodes (SANDBOX_SWARM_NODES="
                f'\'{{"{hostname}": "tcp://ADDRESS:2376"}}\')'
            )
        if hostname not in self._nodes:
            self._nodes[hostname] = _client(url)
        return self._nodes[hostname].api

    def close(self) -> None:
        for client in self._nodes.values():
            with contextlib.suppress(Exception):
                client.close()
        self._nodes.clear()
        with contextlib.suppress(Exception):
            self._facts.get("manager", lambda: None).close()
        self._facts = OnceByKey()

    # -- nodes and tasks -----------------------------------------------------------------------------------

    def nodes(self) -> dict[str, Node]:
        with engine_errors("listing the swarm's nodes"):
            found = self.api.nodes()
        return {
            n["ID"]: Node(
                id=n["ID"], hostname=n["Description"]["Hostname"], state=n["Status"].get("State", ""),
                addr=n["Status"].get("Addr", ""), labels=(n.get("Spec") or {}).get("Labels") or {},
                role=(n.get("Spec") or {}).get("Role", ""),
                os=(n["Description"].get("Platform") or {}).get("OS", ""),
                arch=(n["Description"].get("Platform") or {}).get("Architecture", ""),
                engine_labels=(n["Description"].get("Engine") or {}).get("Labels") or {},
            )
            for n in found
        }

    def _tasks(self, service_id: str | None = None, *, desired: str | None = None) -> dict[str, Task]:
        """The newest task of each service (or of one); ``desired="running"``: not one on its way out."""
        filters = {"service": service_id} if service_id else {}
        if desired:
            filters["desired-state"] = desired
        with engine_errors("listing the swarm's tasks"):
            found = self.api.tasks(filters=filters)
        newest: dict[str, dict[str, Any]] = {}
        for t in found:
            sid = t["ServiceID"]
            if sid not in newest or t["CreatedAt"] > newest[sid]["CreatedAt"]:
                newest[sid] = t
        return {
            sid: Task(
                node_id=t.get("NodeID", ""), state=t["Status"]["State"], desired=t.get("DesiredState", ""),
                container_id=((t["Status"].get("ContainerStatus") or {}).get("ContainerID")),
                error=t["Status"].get("Err", "") or t["Status"].get("Message", ""),
            )
            for sid, t in newest.items()
        }

    def _service(self, service_id: str) -> dict[str, Any]:
        from docker.errors import NotFound

        try:
            with engine_errors("inspecting the sandbox service"):
                return dict(self.api.inspect_service(service_id))
        except NotFound:
            raise SandboxNotFoundError(f"the sandbox service {service_id[:12]} no longer exists") from None
        except SandboxNotFoundError:
            raise

    def _running_task(self, service_id: str) -> tuple[Node, Task]:
        """The node and task of a sandbox that should be running; a clear error when its node is down."""
        lost_on = (self._service(service_id)["Spec"].get("Labels") or {}).get(LOST_LABEL)
        if lost_on is not None:
            raise SandboxError(_lost_message(lost_on))
        task = self._tasks(service_id).get(service_id)
        if task is None or task.container_id is None:
            raise SandboxError(f"the sandbox service {service_id[:12]} has no running task")
        node = self.nodes().get(task.node_id)
        if node is None or node.state != "ready":
            where = node.hostname if node else task.node_id
            raise SandboxError(_lost_message(where))
        return node, task

    # -- images --------------------------------------------------------------------------------------------

    def resolve_image(self, config: SandboxConfig, progress: Progress | None = None, *, refresh: bool = False) -> str:
        """The runtime image, built on the local engine if needed and loaded into every node lacking it."""
        if config.runtime != "runc":
            raise ConfigError(RUNTIME_REFUSED.format(runtime=config.runtime))
        if config.runtime_container_image:
            image = config.runtime_container_image
        else:
            from agentbox.backends import get_backend

            image = get_backend("docker").resolve_image(config, progress, refresh=refresh)
        if refresh:
            self._images.forget(image)
        return self._images.get(image, lambda: self._distribute(image, progress))

    def _distribute(self, image: str, progress: Progress | None) -> str:
        """Load ``image`` (saved from the local engine) into each node that lacks it, and say so."""
        from docker.errors import ImageNotFound

        targets = [n.hostname for n in self.nodes().values() if n.state == "ready"]
        lacking = []
        for hostname in targets:
            if hostname not in self.settings.swarm_nodes:
                continue  # a registry (or the operator) serves it; the task's error says so otherwise
            try:
                self.node_api(hostname).inspect_image(image)
            except ImageNotFound:
                lacking.append(hostname)
        if not lacking:
            return image
        message = f"loading {image} into swarm node(s) {', '.join(lacking)} (no registry: docker save | load)"
        log.warning(message)
        if progress is not None:
            progress(message)
        with tempfile.TemporaryDirectory(prefix="agentbox-image-") as tmp:
            tar = os.path.join(tmp, "image.tar")
            subprocess.run(["docker", "save", "-o", tar, image], check=True, capture_output=True, timeout=600)
            for hostname in lacking:
                with open(tar, "rb") as data, engine_errors(f"loading {image} into node {hostname}"):
                    list(self.node_api(hostname).load_image(data))
        return image

    # -- placement -----------------------------------------------------------------------------------------

    def load(self) -> dict[str, int]:
        """Sandboxes placed on each node (node id -> count): every sandbox service not scaled to 0, by the
        node it is pinned to (else by where its task is). Read from the manager's store, so a service
        just created counts at once, before its task exists."""
        with engine_errors("listing sandbox services"):
            services = self.api.services(filters={"label": LABELS.SANDBOX})
        tasks: dict[str, Task] | None = None
        load: dict[str, int] = {}
        for service in services:
            spec = service["Spec"]
            if ((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas", 1) == 0:
                continue
            node_id = pinned_node(((spec["TaskTemplate"].get("Placement") or {}).get("Constraints")) or [])
            if node_id is None:
                tasks = self._tasks() if tasks is None else tasks
                task = tasks.get(service["ID"])
                node_id = task.node_id if task is not None and task.desired == "running" else None
            if node_id:
                load[node_id] = load.get(node_id, 0) + 1
        return load

    def _place(self, spec: ContainerSpec) -> tuple[tuple[str, ...], str]:
        """The service's constraints (the configured ones and a pin to the node chosen for it) and that
        node's id; the caller holds ``_placing`` and counts the node in ``_reserved`` until it is made."""
        load = self.load()
        for node_id, count in self._reserved.items():
            load[node_id] = load.get(node_id, 0) + count
        node = choose(
            self.nodes().values(), load, constraints=self.settings.placement,
            bind_paths=[m.source for m in spec.mounts if m.kind == "bind"],
            max_per_node=self.settings.swarm_max_per_node,
        )
        return (*self.settings.placement, f"node.id=={node.id}"), node.id

    def _overlays(self) -> builtins.list[NetworkRef]:
        with engine_errors("listing networks"):
            found = self.api.networks(filters={"driver": "overlay"})
        return [NetworkRef(name=n["Name"], id=n["Id"], labels=n.get("Labels") or {}) for n in found]

    def _create_overlay(self, name: str, labels: Mapping[str, str], *, internal: bool = False) -> str:
        with engine_errors(f"creating overlay network {name}"):
            return str(self.api.create_network(
                name, driver="overlay", attachable=True, internal=internal, labels=dict(labels), check_duplicate=True
            )["Id"])

    def _networks(self, spec: ContainerSpec, created: builtins.list[str]) -> tuple[str, ...]:
        """Real overlay names: the sandbox's own (always, for the relay), its named one, additional ones."""
        sandbox_id = spec.label_map[LABELS.SANDBOX]
        propagate = {k: v for k, v in spec.labels if k not in IDENTITY_LABELS}
        propagate[LABELS.MANAGED] = "1"
        propagate[LABELS.CREATED_FOR] = sandbox_id
        primary, *extra = spec.networks or (DEFAULT_NETWORK,)
        if (spec.network_mode == "none" or primary == NONE_NETWORK) and extra:
            raise ConfigError(
                'network="none" runs the sandbox without a network, so additional_networks '
                f"({', '.join(extra)}) cannot be joined; drop them or choose a network"
            )
        own = f"agentbox-{sandbox_id}-net"
        networks: list[str] = []
        listed = self._overlays() if (extra or primary not in (DEFAULT_NETWORK, NONE_NETWORK)) else []
        resolved_extra = []
        for name in extra:
            found, warning = resolve_network_name(name, listed)
            if found is None:
                raise NetworkNotFoundError(
                    f"additional_networks: no overlay network {name!r} on the swarm (Swarm sandboxes join "
                    "attachable overlays: docker network create -d overlay --attachable NAME)"
                )
            if warning:
                log.warning(warning)
            resolved_extra.append(found.name)
        # network="none": an internal overlay only the relay shares (the server has no other way in or out).
        self._create_overlay(own, {**propagate, LABELS.ROLE: ROLE_SANDBOX_NET}, internal=primary == NONE_NETWORK)
        created.append(own)
        networks.append(own)
        if primary not in (DEFAULT_NETWORK, NONE_NETWORK):
            found, warning = resolve_network_name(primary, listed)
            if warning:
                log.warning(warning)
            if found is None:
                self._create_overlay(primary, {**propagate, LABELS.ROLE: "named"})
                created.append(primary)
                networks.append(primary)
            else:
                networks.append(found.name)
        networks += resolved_extra
        return tuple(dict.fromkeys(networks))

    # -- lifecycle -----------------------------------------------------------------------------------------

    def create(self, spec: ContainerSpec) -> str:
        """Place the sandbox on a node, give it the server volume there, create its overlay, let the relay
        join it, and create the one-task service pinned to that node; nothing is left on failure."""
        service_args(spec, ServicePlan(networks=()))  # refuse what Swarm cannot do before making anything
        created: list[str] = []
        relay = self.relay
        with self._placing:
            constraints, node_id = self._place(spec)
            self._reserved[node_id] = self._reserved.get(node_id, 0) + 1
        try:
            hostname = self.nodes()[node_id].hostname
            # The runtime server's own code, read-only (as on Docker): the volume is filled on that node.
            spec = with_server_volume(spec, self._server_volume(hostname, spec.image))
            networks = self._networks(spec, created)
            relay.url(spec.image)
            relay.join(networks[0])
            args = service_args(spec, ServicePlan(networks=networks, constraints=constraints))
            with engine_errors("creating the sandbox service"):
                return str(self.api.create_service(**args)["ID"])
        except BaseException:
            for name in created:
                relay.leave(name)
                self._remove_network(name)
            raise
        finally:
            with self._placing:
                self._reserved[node_id] -= 1

    def _server_volume(self, hostname: str, image: str) -> str | None:
        """The image's server volume on node ``hostname`` (:mod:`agentbox.images.server_volume`), filled
        there on first use; None for an image without an agentbox server."""
        self.node_api(hostname)
        return ensure_server_volume(self._nodes[hostname], image)

    def start(
        self, container_id: str, files: Mapping[str, tuple[bytes, int]], *, timeout: float, restart: bool = False
    ) -> Endpoint:
        """Wait for the task to run, hand it ``files`` on its node, and follow its log to the ready line."""
        deadline = time.monotonic() + timeout
        if restart:
            lost_on = (self._service(container_id)["Spec"].get("Labels") or {}).get(LOST_LABEL)
            if lost_on is not None:
                raise SandboxError(_lost_message(lost_on))
            self._scale(container_id, 1)
        node, task = self._wait_task(container_id, deadline)
        assert task.container_id is not None
        api = self.node_api(node.hostname)
        with engine_errors("following the sandbox's log"):
            watcher = lifecycle.ReadyWatcher(api, task.container_id)
        try:
            with engine_errors("handing the session key to the sandbox"):
                api.put_archive(task.container_id, lifecycle.RUN_DIR, lifecycle.secrets_tar(files))
                api.put_archive(task.container_id, lifecycle.RUN_DIR, lifecycle.secrets_tar({DELIVERED: (b"", 0o600)}))
            kind, _line = watcher.wait(deadline - time.monotonic())
        finally:
            watcher.close()
        if kind == "ready":
            endpoint = self.endpoint(container_id)
            self._wait_reachable(endpoint, deadline)
            return endpoint
        tail = self._node_logs(api, task.container_id, tail=lifecycle.LOG_TAIL)
        raise lifecycle.start_failure(api, task.container_id, tail, timed_out=kind == "timeout", timeout=timeout)

    def _wait_reachable(self, endpoint: Endpoint, deadline: float) -> None:
        """Until the relay reaches the server: the manager learns a new task's address by gossip."""
        import httpx

        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(endpoint.url + "/alive", timeout=5).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise SandboxStartError(f"the runtime server is ready, but the relay cannot reach it at {endpoint.url}")
            time.sleep(0.05)

    def _wait_task(self, service_id: str, deadline: float) -> tuple[Node, Task]:
        """The service's task once it runs (container id known); a start error when it fails or times out."""
        task: Task | None = None
        while time.monotonic() < deadline:
            task = self._tasks(service_id, desired="running").get(service_id)
            if task is not None and task.container_id and task.state == "running":
                node = self.nodes().get(task.node_id)
                if node is not None:
                    return node, task
            if task is not None and task.state in ("failed", "rejected", "orphaned") and task.desired != "shutdown":
                raise SandboxStartError(f"the swarm could not start the sandbox: {task.state}: {task.error}")
            time.sleep(0.05)
        detail = f"{task.state}: {task.error}" if task else "no task yet"
        raise SandboxStartError(f"the swarm did not start the sandbox's task in time ({detail})")

    def _scale(self, service_id: str, replicas: int) -> None:
        """Scale to ``replicas``; going to 0 also pins the service to its node, where its volumes are."""
        service = self._service(service_id)
        spec = service["Spec"]
        template = spec["TaskTemplate"]
        if replicas == 0:
            task = self._tasks(service_id).get(service_id)
            placement = template.setdefault("Placement", {})
            constraints = [c for c in placement.get("Constraints") or [] if not c.startswith("node.id==")]
            if task is not None and task.node_id:
                constraints.append(f"node.id=={task.node_id}")
            placement["Constraints"] = constraints
        with engine_errors("scaling the sandbox service"):
            self.api.update_service(
                service_id, service["Version"]["Index"], task_template=template,
                mode={"Replicated": {"Replicas": replicas}}, fetch_current_spec=True,
            )

    def endpoint(self, container_id: str) -> Endpoint:
        """The relay URL of the sandbox's server."""
        labels = self._service(container_id)["Spec"].get("Labels") or {}
        port = int(labels.get(LABELS.SERVER_PORT, SERVER_PORT))
        return Endpoint(url=self.relay.url() + sandbox_path(labels[LABELS.SANDBOX], port), via="published")

    def pause(self, container_id: str) -> None:
        node, task = self._running_task(container_id)
        with engine_errors(f"pausing the sandbox on node {node.hostname}"):
            self.node_api(node.hostname).pause(task.container_id)

    def resume(self, container_id: str) -> None:
        node, task = self._running_task(container_id)
        with engine_errors(f"resuming the sandbox on node {node.hostname}"):
            self.node_api(node.hostname).unpause(task.container_id)

    def stop(self, container_id: str, *, timeout: float = 5) -> None:
        """Scale to 0 (its task's container ends; volumes stay on its node, where it is pinned now)."""
        self._scale(container_id, 0)
        self._wait_gone(container_id, timeout=timeout + 30, keep_shutdown=True)

    def _containers_of(self, service_id: str) -> builtins.list[tuple[str, str]]:
        """(node hostname, container id) of every container of the service on a reachable node."""
        found = []
        for node in self.nodes().values():
            if node.state != "ready" or node.hostname not in self.settings.swarm_nodes:
                continue
            with contextlib.suppress(Exception):
                for c in self.node_api(node.hostname).containers(
                    all=True, filters={"label": f"com.docker.swarm.service.id={service_id}"}
                ):
                    found.append((node.hostname, str(c["Id"])))
        return found

    def _wait_gone(self, service_id: str, *, timeout: float, keep_shutdown: bool = False) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = self._containers_of(service_id)
            if keep_shutdown:
                left = [
                    (h, c) for h, c in left
                    if self.node_api(h).inspect_container(c)["State"].get("Running")
                ]
            if not left:
                return
            time.sleep(0.1)

    def remove(self, container_id: str, *, purge_volumes: bool = False) -> None:
        """Remove the service, its containers (stale copies on a node that came back too), its overlay and
        the networks and volumes agentbox created for it."""
        from docker.errors import APIError, NotFound

        try:
            spec = self._service(container_id)["Spec"]
        except SandboxNotFoundError:
            return
        labels = spec.get("Labels") or {}
        sandbox_id = labels.get(LABELS.SANDBOX, "")
        pinned = pinned_node((spec["TaskTemplate"].get("Placement") or {}).get("Constraints") or [])
        nodes = self.nodes()
        if pinned in nodes and nodes[pinned].state != "ready":
            self._mark_removed(container_id, labels, nodes[pinned].hostname, purge_volumes=purge_volumes)
            return
        containers = self._containers_of(container_id)
        with engine_errors("removing the sandbox service"), contextlib.suppress(NotFound):
            self.api.remove_service(container_id)
        # Not waiting for the swarm agent to stop them: their overlays can go only once they are gone.
        for hostname, cid in containers:
            with contextlib.suppress(APIError):
                self.node_api(hostname).remove_container(cid, force=True)
        self._wait_gone(container_id, timeout=30)
        with engine_errors("listing networks"):
            nets = self.api.networks(filters={"label": f"{LABELS.CREATED_FOR}={sandbox_id}"})
        for net in nets:
            self.relay.leave(net["Name"])
            self._remove_network(net["Name"])
        # Its volumes are where its containers were, and on the node it is pinned to (a lost sandbox's
        # stale copy may be gone already, its work dir volume not).
        volumes = {hostname for hostname, _ in containers}
        if pinned in nodes and nodes[pinned].state == "ready" and nodes[pinned].hostname in self.settings.swarm_nodes:
            volumes.add(nodes[pinned].hostname)
        for hostname in volumes:
            api = self.node_api(hostname)
            with contextlib.suppress(APIError):
                found = api.volumes(filters={"label": f"{LABELS.CREATED_FOR}={sandbox_id}"}).get("Volumes") or []
                for vol in found:
                    if purge_volumes or vol["Name"] == workspace_volume(sandbox_id):
                        with contextlib.suppress(APIError):
                            api.remove_volume(vol["Name"])

    def _mark_removed(self, service_id: str, labels: Mapping[str, str], hostname: str, *, purge_volumes: bool) -> None:
        """Remove a sandbox whose node is down, as far as can be now (see :data:`REMOVED_LABEL`)."""
        from docker.errors import APIError

        log.warning("sandbox %s is removed; what it left on node %s (down) goes once that node is back",
                    labels.get(LABELS.SANDBOX), hostname)
        mark = "purge" if purge_volumes else "1"
        for attempt in range(3):  # another process may update it at the same moment: read its version again
            service = self._service(service_id)
            try:
                self.api.update_service(
                    service_id, service["Version"]["Index"], mode={"Replicated": {"Replicas": 0}},
                    labels={**(service["Spec"].get("Labels") or {}), REMOVED_LABEL: mark}, fetch_current_spec=True,
                )
                return
            except APIError as exc:
                if attempt == 2:
                    with engine_errors("marking the sandbox service removed"):
                        raise exc

    def _finish_removal(self, service: Mapping[str, Any], nodes: Mapping[str, Node]) -> None:
        """A sandbox removed while its node was down: once that node is ready, remove what is left."""
        spec = service["Spec"]
        pinned = pinned_node((spec["TaskTemplate"].get("Placement") or {}).get("Constraints") or [])
        if pinned is not None and pinned in nodes and nodes[pinned].state != "ready":
            return
        labels = spec.get("Labels") or {}
        log.warning("node of removed sandbox %s is back: removing what it left there", labels.get(LABELS.SANDBOX))
        try:
            self.remove(str(service["ID"]), purge_volumes=labels.get(REMOVED_LABEL) == "purge")
        except AgentboxError as exc:  # the next look tries again
            log.warning("finishing the removal of sandbox %s failed: %s", labels.get(LABELS.SANDBOX), exc)

    def _remove_network(self, name: str) -> None:
        """Remove an overlay; its last task may still be detaching on its node for a few seconds."""
        from docker.errors import APIError, NotFound

        deadline = time.monotonic() + 30
        while True:
            try:
                self.api.remove_network(name)
                # The manager forgets a removed overlay a moment later: until then it is still listed.
                while time.monotonic() < deadline:
                    self.api.inspect_network(name)
                    time.sleep(0.05)
                return
            except NotFound:
                return
            except APIError:
                if time.monotonic() > deadline:
                    log.warning("could not remove network %s: still in use", name)
                    return
                time.sleep(0.1)

    def _node_logs(self, api: Any, container_id: str, *, tail: int | None) -> str:
        with engine_errors("reading the sandbox's log"):
            data = api.logs(container_id, stdout=True, stderr=True, tail="all" if tail is None else tail)
        return bytes(data).decode("utf-8", errors="replace")

    def logs(self, container_id: str, *, tail: int | None = None) -> str:
        node, task = self._running_task(container_id)
        assert task.container_id is not None
        return self._node_logs(self.node_api(node.hostname), task.container_id, tail=tail)

    # -- finding -------------------------------------------------------------------------------------------

    def _state(self, service: Mapping[str, Any], task: Task | None, nodes: Mapping[str, Node]) -> SandboxState:
        replicas = ((service["Spec"].get("Mode") or {}).get("Replicated") or {}).get("Replicas", 1)
        if LOST_LABEL in (service["Spec"].get("Labels") or {}):
            return SandboxState.LOST
        if task is None:
            return SandboxState.STOPPED if replicas == 0 else SandboxState.STARTING
        node = nodes.get(task.node_id)
        # The orchestrator marks a down node's task for shutdown at once; it still runs there, unreachable.
        if replicas != 0 and node is not None and node.state != "ready":
            return SandboxState.LOST
        if replicas == 0 or task.desired != "running":
            return SandboxState.STOPPED
        if task.state in _STARTING:
            return SandboxState.STARTING
        if task.state != "running":
            return SandboxState.STOPPED
        if node is not None and node.hostname in self.settings.swarm_nodes and task.container_id:
            with contextlib.suppress(Exception):
                status = self.node_api(node.hostname).inspect_container(task.container_id)["State"]["Status"]
                if status == "paused":
                    return SandboxState.PAUSED
        return SandboxState.RUNNING

    def _infos(self, services: builtins.list[dict[str, Any]]) -> builtins.list[SandboxInfo]:
        if not services:
            return []
        nodes, tasks = self.nodes(), self._tasks()
        infos = []
        for service in services:
            labels = service["Spec"].get("Labels") or {}
            if REMOVED_LABEL in labels:
                self._finish_removal(service, nodes)
                continue
            sandbox_id = labels.get(LABELS.SANDBOX, "")
            task = tasks.get(service["ID"])
            state = self._state(service, task, nodes)
            node = nodes.get(task.node_id) if task is not None else None
            hostname = labels.get(LOST_LABEL) or (node.hostname if node is not None else None)
            if state is SandboxState.LOST:
                self._settle_lost(service, task, nodes)
            record = None
            with contextlib.suppress(SandboxError):
                record = self.store.load(sandbox_id) if sandbox_id else None
            url = None
            if state in (SandboxState.RUNNING, SandboxState.PAUSED):
                with contextlib.suppress(SandboxError):
                    port = int(labels.get(LABELS.SERVER_PORT, SERVER_PORT))
                    url = self.relay.url() + sandbox_path(sandbox_id, port)
            pid = labels.get(LABELS.OWNER_PID)
            infos.append(SandboxInfo(
                id=sandbox_id, container_id=str(service["ID"]), container_name=str(service["Spec"]["Name"]),
                image=str(service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]), state=state,
                created=_parse_created(labels.get(LABELS.CREATED)),
                owner_pid=record.owner_pid if record else (int(pid) if pid and pid.isdigit() else None),
                owner_host=labels.get(LABELS.OWNER_HOST, ""), url=url,
                keep_alive=labels.get(LABELS.KEEP_ALIVE) == "1", labels=dict(labels), node=hostname,
                reason=_lost_message(hostname or "?") if state is SandboxState.LOST else None,
            ))
        return sorted(infos, key=lambda i: (i.created or datetime.min.replace(tzinfo=timezone.utc), i.id))

    def _settle_lost(self, service: Mapping[str, Any], task: Task | None, nodes: Mapping[str, Node]) -> None:
        """First sight of a lost sandbox: scale it to 0 and label it with its node (never started again);
        later, once that node is back: remove the stale copy of it that the node still holds."""
        from docker.errors import APIError

        labels = service["Spec"].get("Labels") or {}
        lost_on = labels.get(LOST_LABEL)
        if lost_on is None:
            node = nodes.get(task.node_id) if task is not None else None
            hostname = node.hostname if node is not None else (task.node_id if task is not None else "?")
            log.warning("sandbox %s is lost: its node %s is down", labels.get(LABELS.SANDBOX), hostname)
            with contextlib.suppress(APIError):  # another process marked it meanwhile: theirs stands
                self.api.update_service(
                    service["ID"], service["Version"]["Index"], mode={"Replicated": {"Replicas": 0}},
                    labels={**labels, LOST_LABEL: hostname}, fetch_current_spec=True,
                )
            return
        if any(n.hostname == lost_on and n.state == "ready" for n in nodes.values()):
            for hostname, cid in self._containers_of(str(service["ID"])):
                log.warning("removing the stale copy %s of lost sandbox %s on node %s", cid[:12],
                            labels.get(LABELS.SANDBOX), hostname)
                with contextlib.suppress(APIError):
                    self.node_api(hostname).remove_container(cid, force=True)

    def list(
        self, *, owner_host: str | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[SandboxInfo]:
        wanted = [LABELS.SANDBOX]
        if owner_host is not None:
            wanted.append(f"{LABELS.OWNER_HOST}={owner_host}")
        wanted += [f"{k}={v}" for k, v in (labels or {}).items()]
        with engine_errors("listing sandboxes"):
            services = self.api.services(filters={"label": wanted})
        return self._infos(services)

    def find(self, sandbox_id: str) -> SandboxInfo:
        with engine_errors("looking up the sandbox"):
            found = self.api.services(filters={"label": f"{LABELS.SANDBOX}={sandbox_id}"})
            if not found and sandbox_id:
                found = [
                    s for s in self.api.services(filters={"label": LABELS.SANDBOX})
                    if (len(sandbox_id) >= 4 and str(s["ID"]).startswith(sandbox_id)) or s["Spec"]["Name"] == sandbox_id
                ]
        if not found:
            raise SandboxNotFoundError(f"no sandbox {sandbox_id!r} on this swarm (list them with `agentbox ls`)")
        infos = self._infos(found)
        if not infos:  # removed while its node is down: only the marker is left
            raise SandboxNotFoundError(f"no sandbox {sandbox_id!r} on this swarm (list them with `agentbox ls`)")
        if len(infos) > 1:
            raise SandboxNotFoundError(f"{sandbox_id!r} matches several sandboxes; give the full id")
        return infos[0]

    def events(self, labels: Mapping[str, str]) -> EventStream:
        """Changes of the sandboxes carrying all of ``labels``, found by looking at them (:meth:`list`)
        whenever the manager announces a node changing state or a service changing, and every
        :data:`~agentbox.backends.events.POLL_INTERVAL` seconds for what Swarm does not announce (a task
        that exited). A node the manager marks down (about three dispatcher heartbeats after it went
        silent) makes its running sandboxes ``lost`` at that look; a node back makes the look remove
        their stale copies there."""
        with engine_errors("subscribing to the swarm manager's events"):
            raw = self.api.events(decode=True, filters={"type": ["node", "service"]})
        stream = PolledEvents(lambda: self.list(labels=labels), on_close=raw.close)

        def follow() -> None:
            try:
                for event in raw:
                    attrs = (event.get("Actor") or {}).get("Attributes") or {}
                    # A node's heartbeats and labels change often; only its state matters here.
                    if event.get("Type") == "node" and "state.new" not in attrs:
                        continue
                    stream.nudge()
            except Exception as exc:
                if not stream.closed.is_set():
                    log.warning("the swarm manager's event stream ended (%s): sandbox changes are seen "
                                "every %.0f s only", exc, POLL_INTERVAL)

        threading.Thread(target=follow, name="agentbox-swarm-events", daemon=True).start()
        return stream

    def reap(self, *, dry_run: bool = False, labels: Mapping[str, str] | None = None) -> builtins.list[str]:
        """Remove this host's sandboxes whose owner process is gone (keep-alive ones are kept)."""
        return remove_orphans(self, dry_run=dry_run, labels=labels)
