"""Docker networks of sandboxes: name resolution (with Docker Compose prefixes), the shared networks
agentbox creates on first use, and the manager's own container and control network.

* the default network (``agentbox-net``) and the internal ``agentbox-none``: shared by every sandbox, made
  on first use, kept; one shared network because an engine only has ~30 bridge subnets.
* a configured ``network`` that does not exist: created for the sandbox ("named"), removed with its last
  sandbox. Networks agentbox did not create are never removed.
* ``agentbox-ctl-<manager>``: when agentbox itself runs in a container, the internal network it shares
  with its sandboxes (a published loopback port is out of its reach).

A shared network removed behind agentbox's back (``docker network rm``, a prune) is made again on the
next use: :meth:`Networks.forget` drops it from the cache when the engine says it is gone.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import re
import socket
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agentbox.backends.docker.errors import engine_errors, is_not_found
from agentbox.backends.docker.once import OnceByKey
from agentbox.backends.labels import LABELS
from agentbox.engine import translate_errors
from agentbox.errors import EngineError, NetworkNotFoundError

__all__ = [
    "COMPOSE_NETWORK_LABEL",
    "COMPOSE_PROJECT_LABEL",
    "ROLE_CONTROL",
    "ROLE_DEFAULT",
    "ROLE_NAMED",
    "ROLE_NONE",
    "Manager",
    "NetworkRef",
    "Networks",
    "detect_manager",
    "resolve_network_name",
]

log = logging.getLogger("agentbox.backends.docker")

COMPOSE_NETWORK_LABEL = "com.docker.compose.network"
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"

# Roles of the networks agentbox creates. Shared ones outlive their sandboxes; a "named" network (created
# because a configured `network` did not exist) goes with its last sandbox.
ROLE_DEFAULT, ROLE_NONE, ROLE_NAMED, ROLE_CONTROL = "default", "none", "named", "control"


@dataclass(frozen=True)
class NetworkRef:
    """A network as listed by the engine."""

    name: str
    """Network name."""
    id: str
    """Network id."""
    labels: Mapping[str, str]
    """Its labels (Compose marks its networks with ``com.docker.compose.network``)."""


def resolve_network_name(name: str, networks: Iterable[NetworkRef]) -> tuple[NetworkRef | None, str | None]:
    """Which existing network a configured ``name`` means: ``(network or None, warning or None)``.

    An exact name (or full id) wins. Otherwise, Docker Compose creates ``<project>_<name>`` labelled
    ``com.docker.compose.network=<name>``: if exactly one such network exists it is used, with a
    warning saying so; if several do, NetworkNotFoundError lists them. None: no such network at all.
    """
    listed = list(networks)
    exact = [n for n in listed if n.name == name or n.id == name]
    if len(exact) == 1:
        return exact[0], None
    if len(exact) > 1:
        ids = ", ".join(n.id[:12] for n in exact)
        raise NetworkNotFoundError(
            f"several Docker networks are named {name!r} (ids {ids}); remove the duplicates or give an id"
        )
    compose = sorted((n for n in listed if n.labels.get(COMPOSE_NETWORK_LABEL) == name), key=lambda n: n.name)
    if len(compose) == 1:
        net = compose[0]
        project = net.labels.get(COMPOSE_PROJECT_LABEL, "?")
        return net, (
            f"network {name!r} does not exist; using the Docker Compose network {net.name!r} "
            f"(project {project!r}) instead. Configure {net.name!r}, or give the network a fixed "
            "`name:` in the compose file, to silence this warning"
        )
    if len(compose) > 1:
        names = ", ".join(repr(n.name) for n in compose)
        raise NetworkNotFoundError(
            f"network {name!r} does not exist, and several Docker Compose projects have one: {names}; "
            "configure the full name of the one you mean"
        )
    return None, None


@dataclass(frozen=True)
class Manager:
    """This process's own container, when agentbox runs inside one."""

    container_id: str
    """Full id of that container."""
    control_network: str
    """The internal network it shares with its sandboxes."""


def detect_manager(api: Any) -> tuple[Manager | None, bool]:
    """This process's container on the engine: ``(manager or None, in a host-networked container)``.

    A host-networked container has no control network (loopback is the host's, published ports work),
    but its files are not the engine host's, so no socket directory can be shared with a sandbox.
    """
    if not os.path.exists("/.dockerenv"):
        return None, False
    candidates: list[str] = []
    # The engine's per-container files (hostname, resolv.conf) are bind-mounted from
    # /var/lib/docker/containers/<id>/: the most reliable trace of our own id, cgroup v1 or v2.
    for path, pattern in (
        ("/proc/self/mountinfo", r"/containers/([0-9a-f]{64})/"),
        ("/proc/self/cgroup", r"([0-9a-f]{64})"),
    ):
        with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
            candidates += re.findall(pattern, f.read())
    hostname = socket.gethostname()
    candidates.append(hostname)
    for candidate in dict.fromkeys(candidates):
        try:
            attrs = api.inspect_container(candidate)
        except Exception as exc:  # any failure means "not this one"
            if not is_not_found(exc):
                log.debug("inspecting candidate own container %s failed: %s", candidate, exc)
            continue
        if attrs.get("Config", {}).get("Hostname") != hostname:
            continue
        if attrs.get("HostConfig", {}).get("NetworkMode") == "host":
            return None, True
        cid = str(attrs["Id"])
        return Manager(container_id=cid, control_network=f"agentbox-ctl-{cid[:12]}"), False
    return None, False


class Networks:
    """The networks agentbox creates and joins, on one engine; shared ones are cached per name."""

    def __init__(self, api: Callable[[], Any]) -> None:
        self._api = api  # called on each use: the engine client is connected lazily
        self._shared: OnceByKey[str, str] = OnceByKey()  # verified shared network name -> id

    def list(self) -> list[NetworkRef]:
        """Every network on the engine."""
        with engine_errors("listing networks"):
            raw = self._api().networks()
        return [NetworkRef(n["Name"], n["Id"], n.get("Labels") or {}) for n in raw]

    def ensure_shared(
        self, name: str, role: str, *, internal: bool = False, icc: bool = True, labels: Mapping[str, str] | None = None
    ) -> str:
        """Id of the shared agentbox network ``name``, created on first use (once, however many ask)."""

        def find_or_create() -> str:
            found, _ = resolve_network_name(name, [n for n in self.list() if n.name == name])
            if found is not None:
                return found.id
            return self.create(name, role, internal=internal, icc=icc, labels=labels or {})

        return self._shared.get(name, find_or_create)

    def is_shared(self, name: str) -> bool:
        """True when ``name`` is a shared network this process has verified (and so trusts to exist)."""
        return self._shared.peek(name) is not None

    def forget(self, names: Iterable[str]) -> bool:
        """Drop shared networks from the cache (the engine says they are gone); True if any was cached."""
        return any([self._shared.forget(name) for name in names])

    def create(self, name: str, role: str, *, internal: bool, icc: bool, labels: Mapping[str, str]) -> str:
        """Create a bridge network labelled as agentbox's (``role``); returns its id."""
        from docker.errors import APIError

        options = {} if icc else {"com.docker.network.bridge.enable_icc": "false"}
        all_labels = {**labels, LABELS.MANAGED: "1", LABELS.ROLE: role}
        try:
            with translate_errors(f"creating network {name}"):
                try:
                    created = self._api().create_network(
                        name, driver="bridge", options=options, internal=internal, labels=all_labels,
                        check_duplicate=True,
                    )
                except APIError as exc:
                    if exc.status_code != 409:
                        raise
                    # Another process created it between our look and our create: use theirs.
                    found, _ = resolve_network_name(name, [n for n in self.list() if n.name == name])
                    if found is None:
                        raise
                    return found.id
        except EngineError as exc:
            if "pool" in str(exc).lower() or "overlap" in str(exc).lower():
                raise EngineError(
                    f"{exc}; the engine has run out of network address pools: remove unused networks "
                    "(`docker network prune`, `agentbox reap`)"
                ) from exc
            raise
        return str(created["Id"])

    def resolve_user(
        self,
        name: str,
        *,
        what: str,
        create_missing: bool,
        labels: Mapping[str, str],
        listed: builtins.list[NetworkRef],
    ) -> str:
        """The real name of a configured network; a missing one is created (``create_missing``) or refused."""
        found, warning = resolve_network_name(name, listed)
        if warning:
            warnings.warn(warning, stacklevel=5)
            log.warning(warning)
        if found is not None:
            return found.name
        if create_missing:
            self.create(name, ROLE_NAMED, internal=False, icc=True, labels=labels)
            return name
        known = ", ".join(sorted(n.name for n in listed)) or "(none)"
        raise NetworkNotFoundError(
            f"network {name!r} ({what}) does not exist; create it first (`docker network create {name}`) "
            f"or fix the configuration. Existing networks: {known}"
        )

    def ensure_control(self, manager: Manager) -> None:
        """The manager's control network exists and the manager's container is on it."""

        def make() -> str:
            network_id = self.create_or_find(
                manager.control_network, ROLE_CONTROL, labels={LABELS.MANAGER: manager.container_id}
            )
            with engine_errors("inspecting this process's own container"):
                attrs = self._api().inspect_container(manager.container_id)
            if manager.control_network not in (attrs.get("NetworkSettings", {}).get("Networks") or {}):
                with engine_errors(f"connecting this container to {manager.control_network}"):
                    self._api().connect_container_to_network(manager.container_id, manager.control_network)
            return network_id

        self._shared.get(manager.control_network, make)

    def create_or_find(self, name: str, role: str, *, labels: Mapping[str, str]) -> str:
        """Id of the internal network ``name``, created if missing (not cached)."""
        found, _ = resolve_network_name(name, [n for n in self.list() if n.name == name])
        if found is not None:
            return found.id
        return self.create(name, role, internal=True, icc=True, labels=labels)

    def release(self, name: str) -> None:
        """Remove a network agentbox created for sandboxes ("named") once no container uses it."""
        from docker.errors import APIError

        api = self._api()
        try:
            attrs = api.inspect_network(name)
        except APIError:
            return
        labels = attrs.get("Labels") or {}
        if labels.get(LABELS.MANAGED) != "1" or labels.get(LABELS.ROLE) != ROLE_NAMED:
            return  # not ours, or shared infrastructure
        try:
            if api.containers(all=True, filters={"network": attrs["Id"]}):
                return
            api.remove_network(attrs["Id"])
        except APIError as exc:
            # 404: someone else removed it; 403/409: a sandbox joined it meanwhile. Either way, not ours to do.
            log.debug("keeping network %s: %s", name, exc)

    def reap_control(self, container_running: Callable[[str], bool]) -> None:
        """Remove control networks whose manager container is gone and that no container uses."""
        from docker.errors import APIError

        api = self._api()
        with engine_errors("listing networks"):
            found = api.networks(filters={"label": f"{LABELS.ROLE}={ROLE_CONTROL}"})
        for net in found:
            manager = (net.get("Labels") or {}).get(LABELS.MANAGER)
            if not manager or container_running(manager):
                continue
            with contextlib.suppress(APIError):
                if not api.containers(all=True, filters={"network": net["Id"]}):
                    api.remove_network(net["Id"])
                    self._shared.forget(net["Name"])

    def reconnect(self, container_id: str, names: Iterable[str]) -> None:
        """Attach a (not running) container again to networks that were removed and made anew."""
        api = self._api()
        for name in names:
            with contextlib.suppress(Exception):  # it may hold no endpoint on the vanished network
                api.disconnect_container_from_network(container_id, name, force=True)
            with engine_errors(f"connecting the sandbox to network {name}"):
                api.connect_container_to_network(container_id, name)
