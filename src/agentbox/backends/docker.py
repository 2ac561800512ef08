"""Sandboxes as containers on a Docker engine (docker SDK, API 1.41+).

Networks
    Every sandbox joins one network at create and the rest *before* start (create -> connect ->
    start), so sidecars on ``additional_networks`` answer by name from the very first command.

    * default: the shared bridge :data:`~agentbox.backends.spec.DEFAULT_NETWORK`, created on first use,
      with inter-container communication disabled (``enable_icc=false``): sandboxes reach the outside
      but not each other. One shared network, because an engine only has ~30 bridge subnets.
    * ``network="name"``: that network; if missing (and no single Docker Compose ``<project>_name``
      matches) agentbox creates it, and removes it when the last sandbox on it is removed. Networks
      agentbox did not create are never removed.
    * ``network="none"``: Docker's ``network_mode="none"``, only loopback: no route to the internet,
      the host, other networks or other sandboxes. The server listens on a Unix socket in a per-sandbox
      host directory (:func:`~agentbox.backends.state.sockets_dir`, label ``agentbox.socket-dir``)
      bind-mounted at :data:`~agentbox.backends.spec.SOCKET_MOUNT`; the directory goes with the sandbox.
      A manager running in a container cannot share a host directory with its sandbox: there the
      sandbox's only network is the manager's internal control network (below), or, for a
      host-networked manager container, the shared internal network
      :data:`~agentbox.backends.spec.NONE_NETWORK` (icc off, no route out, but the host's own
      addresses on that bridge stay reachable). That network is also what a gVisor (``runsc``) sandbox
      gets: a socket made inside gVisor is not visible on the host.
    * ``use_host_network``: the host's network namespace; the server binds ``runtime_binding_address``
      on a port the kernel picks, read from its ready line.

Reaching the server
    From the host: the server's port is published on ``runtime_binding_address`` (default 127.0.0.1)
    with a host port Docker picks, read back after start. When agentbox itself runs in a container
    (``/.dockerenv`` and its own container found through the engine), a published loopback port is
    out of reach, so the manager container and its sandboxes share an internal control network
    ``agentbox-ctl-<manager>`` and the sandbox is reached at its IP there.

Readiness is event-driven: the container's log stream is followed from right after start until the
server's ``agentbox-server ready on http://HOST:PORT`` (or ``unix:PATH``) line, the stream's end (the
container exited) or a deadline.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import os
import queue
import re
import shutil
import socket
import tarfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentbox.backends.base import Backend, Endpoint, Progress, SandboxInfo, SandboxState
from agentbox.backends.labels import IDENTITY_LABELS, LABELS
from agentbox.backends.spec import (
    DEFAULT_NETWORK,
    NONE_NETWORK,
    SERVER_PORT,
    SOCKET_NAME,
    ContainerSpec,
    to_docker_args,
    unix_socket_spec,
)
from agentbox.backends.state import StateStore, sockets_dir
from agentbox.engine import docker_client, translate_errors
from agentbox.errors import (
    ConfigError,
    EngineError,
    ImageNotFoundError,
    NetworkNotFoundError,
    PortInUseError,
    SandboxError,
    SandboxNotFoundError,
    SandboxStartError,
    VolumeSpecError,
)

if TYPE_CHECKING:
    import docker
    from agentbox.config import SandboxConfig

__all__ = [
    "COMPOSE_NETWORK_LABEL",
    "DockerBackend",
    "NetworkRef",
    "default_backend",
    "resolve_network_name",
]

log = logging.getLogger("agentbox.backends.docker")


_SANDBOX_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")
COMPOSE_NETWORK_LABEL = "com.docker.compose.network"
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
READY = re.compile(rb"agentbox-server ready on (?:http://(\S+):(\d+)|unix:\S+)")
# Base URL of a server reached over a Unix socket: only the path part of a request URL matters there.
UDS_BASE_URL = "http://sandbox"
# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
# Seconds a socket directory without a container is left alone by reap (its sandbox may be being created).
SOCKET_DIR_GRACE = 60.0
RUN_DIR = "/run"
SECRETS_DIR = "agentbox"
RUNSC_HINT = "run `agentbox doctor --fix --runsc` to install gVisor and register it with dockerd"
IMAGE_HINT = "run `agentbox doctor --fix` to build the runtime image, or set runtime_container_image to one you have"
LOG_TAIL = 25
# Connections kept to the engine: enough for many sandboxes starting at once in one process.
POOL_SIZE = 64

# Roles of the networks agentbox creates. Shared ones outlive their sandboxes; a "named" network (created
# because a configured `network` did not exist) goes with its last sandbox.
ROLE_DEFAULT, ROLE_NONE, ROLE_NAMED, ROLE_CONTROL = "default", "none", "named", "control"


# ----------------------------------------------------------------------------------------------------------
# Network name resolution (pure, unit-tested with fake lists)


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


# ----------------------------------------------------------------------------------------------------------
# Engine error translation


@contextlib.contextmanager
def _engine(action: str) -> Iterator[None]:
    """translate_errors, plus the engine messages that have a better agentbox error and fix."""
    from docker.errors import APIError, NotFound

    with translate_errors(action):
        try:
            yield
        except APIError as exc:
            text = str(getattr(exc, "explanation", None) or exc)
            lower = text.lower()
            if "runtime" in lower and "runsc" in lower and ("unknown" in lower or "invalid" in lower):
                raise EngineError(f"{action}: the gVisor runtime 'runsc' is not registered; {RUNSC_HINT}") from None
            if "bind source path does not exist" in lower or "invalid mount config" in lower:
                raise VolumeSpecError(
                    f"{action}: {text}; create the host directory first or fix the volume spec"
                ) from None
            if "port is already allocated" in lower or "address already in use" in lower:
                raise PortInUseError(
                    f"{action}: a host port is taken ({text}); free it, or leave the host port to Docker"
                ) from None
            if isinstance(exc, NotFound) and "network" in lower:
                raise NetworkNotFoundError(f"{action}: {text}") from None
            if isinstance(exc, NotFound) and ("no such image" in lower or "pull access" in lower):
                raise ImageNotFoundError(f"{action}: {text}; {IMAGE_HINT}") from None
            raise


def _is_not_found(exc: BaseException) -> bool:
    from docker.errors import NotFound

    return isinstance(exc, NotFound)


# ----------------------------------------------------------------------------------------------------------
# Small helpers


def _secrets_tar(files: Mapping[str, tuple[bytes, int]]) -> bytes:
    """A tar of ``agentbox/<name>`` entries to extract at /run (root-owned; the entrypoint hands them on)."""
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(SECRETS_DIR)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o700, now
        tar.addfile(info)
        for name, (content, mode) in files.items():
            info = tarfile.TarInfo(f"{SECRETS_DIR}/{name}")
            info.size, info.mode, info.mtime = len(content), mode, now
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _parse_created(value: str | None) -> datetime | None:
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(value)
    return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


_STATES = {
    "created": SandboxState.NEW,
    "running": SandboxState.RUNNING,
    "paused": SandboxState.PAUSED,
    "restarting": SandboxState.STARTING,
    "exited": SandboxState.STOPPED,
    "dead": SandboxState.STOPPED,
    "removing": SandboxState.REMOVED,
}


def _url(host: str, port: int | str) -> str:
    host = host.strip("[]")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


@dataclass(frozen=True)
class _Manager:
    """This process's own container, when agentbox runs inside one."""

    container_id: str
    control_network: str


@dataclass(frozen=True)
class _Placement:
    """Normalised view of how a container is attached (from an inspect or a list summary)."""

    network_mode: str
    published: Sequence[tuple[str, int, int]]  # (host ip, host port, container port)
    addresses: Mapping[str, str]  # network name -> container IP
    server_port: int
    socket_dir: str | None = None  # host directory of the server's Unix socket (network "none")


class _ReadyWatcher:
    """Follows a started container's log stream in a thread until the server's ready line or the end."""

    def __init__(self, api: Any, container_id: str, *, skip: int = 0) -> None:
        self._skip = skip  # ready lines of earlier runs of a restarted container are in the log too
        self._events: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._stream = api.logs(container_id, stdout=True, stderr=True, stream=True, follow=True)
        self._thread = threading.Thread(target=self._follow, name=f"agentbox-ready-{container_id[:12]}", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        pending = b""
        try:
            for chunk in self._stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if READY.search(line):
                        if self._skip:
                            self._skip -= 1
                            continue
                        self._events.put(("ready", line))
                        return
        except Exception:  # the stream is closed under us on purpose (deadline, ready)
            pass
        self._events.put(("ended", pending))

    def wait(self, timeout: float) -> tuple[str, bytes]:
        """("ready", line), ("ended", b"") when the container exited first, or ("timeout", b"")."""
        try:
            return self._events.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return "timeout", b""
        finally:
            self.close()

    def close(self) -> None:
        """Stop following (idempotent)."""
        with contextlib.suppress(Exception):
            self._stream.close()


# ----------------------------------------------------------------------------------------------------------


class DockerBackend(Backend):
    """Sandboxes as containers on one Docker engine; one instance (and one client) serves many sandboxes."""

    def __init__(
        self,
        client: docker.DockerClient | None = None,
        *,
        store: StateStore | None = None,
        sockets: Path | None = None,
    ) -> None:
        self._client = client
        self._owns_client = client is None
        self._store = store or StateStore()
        #: Parent of the per-sandbox socket directories of network-less sandboxes.
        self.sockets = sockets or sockets_dir()
        self._lock = threading.RLock()
        self._networks: dict[str, str] = {}  # verified shared network name -> id
        self._images: dict[tuple[str | None, str], str] = {}
        self._manager: _Manager | None = None
        self._manager_checked = False
        # This process runs in a host-networked container of the engine: it has no manager control
        # network, and its files are not the engine host's, so no socket directory can be shared.
        self._in_host_network_container = False

    name = "docker"

    # -- plumbing ------------------------------------------------------------------------------------------

    @property
    def store(self) -> StateStore:
        """The state files of the sandboxes this user started."""
        return self._store

    @property
    def client(self) -> docker.DockerClient:
        """The docker SDK client (connected on first use)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    # Each start follows its container's log stream on a connection of its own.
                    self._client = docker_client(max_pool_size=POOL_SIZE)
        return self._client

    @property
    def api(self) -> Any:
        """The low-level API client (fewer round trips than the model layer)."""
        return self.client.api

    def close(self) -> None:
        """Close the client if this backend opened it."""
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None

    def resolve_image(
        self, config: SandboxConfig, progress: Progress | None = None, *, refresh: bool = False
    ) -> str:
        """The runtime image for ``config``: its runtime_container_image, else one built on its base."""
        cfg = config
        if cfg.runtime_container_image:
            return cfg.runtime_container_image
        key = (cfg.runtime_container_image, cfg.base_container_image)
        with self._lock:
            if refresh:
                self._images.pop(key, None)
            if key not in self._images:
                from agentbox.images import ensure_runtime_image

                kwargs: dict[str, Any] = {"client": self.client}
                if progress is not None:
                    kwargs["progress"] = progress
                self._images[key] = ensure_runtime_image(cfg, **kwargs)
            return self._images[key]

    # -- the manager's own container -----------------------------------------------------------------------

    def manager(self) -> _Manager | None:
        """This process's container when agentbox runs in a (non host-networked) container, else None."""
        if self._manager_checked:
            return self._manager
        with self._lock:
            if not self._manager_checked:
                self._manager = self._detect_manager()
                self._manager_checked = True
        return self._manager

    def _detect_manager(self) -> _Manager | None:
        if not os.path.exists("/.dockerenv"):
            return None
        candidates: list[str] = []
        # The engine's per-container files (hostname, resolv.conf) are bind-mounted from
        # /var/lib/docker/containers/<id>/: the most reliable trace of our own id, cgroup v1 or v2.
        for path, pattern in (
            ("/proc/self/mountinfo", r"/containers/([0-9a-f]{64})/"),
            ("/proc/self/cgroup", r"([0-9a-f]{64})"),
        ):
            with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
                candidates += re.findall(pattern, f.read())
        candidates.append(socket.gethostname())
        hostname = socket.gethostname()
        for candidate in dict.fromkeys(candidates):
            try:
                attrs = self.api.inspect_container(candidate)
            except Exception as exc:  # any failure means "not this one"
                if not _is_not_found(exc):
                    log.debug("inspecting candidate own container %s failed: %s", candidate, exc)
                continue
            if attrs.get("Config", {}).get("Hostname") != hostname:
                continue
            if attrs.get("HostConfig", {}).get("NetworkMode") == "host":
                self._in_host_network_container = True
                return None  # loopback is the host's: published ports are reachable as usual
            cid = attrs["Id"]
            return _Manager(container_id=cid, control_network=f"agentbox-ctl-{cid[:12]}")
        return None

    # -- networks ------------------------------------------------------------------------------------------

    def _list_networks(self) -> list[NetworkRef]:
        with _engine("listing networks"):
            raw = self.api.networks()
        return [NetworkRef(n["Name"], n["Id"], n.get("Labels") or {}) for n in raw]

    def _ensure_shared(
        self, name: str, role: str, *, internal: bool = False, icc: bool = True, labels: Mapping[str, str] | None = None
    ) -> str:
        """Id of the shared agentbox network ``name``, created on first use."""
        with self._lock:
            if name in self._networks:
                return self._networks[name]
            found, _ = resolve_network_name(name, [n for n in self._list_networks() if n.name == name])
            if found is None:
                found_id = self._create_network(name, role, internal=internal, icc=icc, labels=labels or {})
            else:
                found_id = found.id
            self._networks[name] = found_id
            return found_id

    def _create_network(
        self, name: str, role: str, *, internal: bool, icc: bool, labels: Mapping[str, str]
    ) -> str:
        from docker.errors import APIError

        options = {} if icc else {"com.docker.network.bridge.enable_icc": "false"}
        all_labels = {**labels, LABELS.MANAGED: "1", LABELS.ROLE: role}
        try:
            with translate_errors(f"creating network {name}"):
                try:
                    created = self.api.create_network(
                        name, driver="bridge", options=options, internal=internal, labels=all_labels,
                        check_duplicate=True,
                    )
                except APIError as exc:
                    if exc.status_code != 409:
                        raise
                    # Another process created it between our look and our create: use theirs.
                    found, _ = resolve_network_name(name, [n for n in self._list_networks() if n.name == name])
                    if found is None:
                        raise
                    return found.id
        except EngineError as exc:
            if "pool" in str(exc).lower() or "overlap" in str(exc).lower():
                raise EngineError(
                    f"{exc}; the engine has run out of network address pools: remove unused networks "
                    "(`docker network prune`, `agentbox reap`)"
                ) from None
            raise
        return str(created["Id"])

    def _resolve_user_network(
        self, name: str, *, what: str, create_missing: bool, labels: Mapping[str, str], listed: list[NetworkRef]
    ) -> str:
        found, warning = resolve_network_name(name, listed)
        if warning:
            warnings.warn(warning, stacklevel=4)
            log.warning(warning)
        if found is not None:
            return found.name
        if create_missing:
            self._create_network(name, ROLE_NAMED, internal=False, icc=True, labels=labels)
            return name
        known = ", ".join(sorted(n.name for n in listed)) or "(none)"
        raise NetworkNotFoundError(
            f"network {name!r} ({what}) does not exist; create it first (`docker network create {name}`) "
            f"or fix the configuration. Existing networks: {known}"
        )

    def _place(self, spec: ContainerSpec) -> tuple[ContainerSpec, list[str]]:
        """The spec with configured network names replaced by real ones (networks created as needed).

        Returns the spec and the names of networks created for this sandbox.
        """
        if spec.network_mode != "bridge":
            return spec, []
        propagate = {k: v for k, v in spec.labels if k not in IDENTITY_LABELS}
        sandbox_id = spec.label_map.get(LABELS.SANDBOX, "")
        if sandbox_id:
            propagate[LABELS.CREATED_FOR] = sandbox_id
        primary, *extra = spec.networks or (DEFAULT_NETWORK,)
        created: list[str] = []
        networks: list[str] = []
        manager = self.manager()
        listed: list[NetworkRef] | None = None
        if primary == DEFAULT_NETWORK:
            self._ensure_shared(DEFAULT_NETWORK, ROLE_DEFAULT, icc=False)
            networks.append(DEFAULT_NETWORK)
        elif primary == NONE_NETWORK:
            # gVisor keeps a socket its sandbox creates inside its own kernel: the host never sees it.
            if manager is None and not self._in_host_network_container and spec.runtime != "runsc":
                if extra:
                    raise ConfigError(
                        'network="none" runs the sandbox without any network, so additional_networks '
                        f"({', '.join(extra)}) cannot be joined; drop them or choose a network"
                    )
                # No network at all: the server is reached over a Unix socket in a host directory.
                return self._unix_socket_placement(spec, sandbox_id), []
            if manager is None:
                self._ensure_shared(NONE_NETWORK, ROLE_NONE, internal=True, icc=False)
                networks.append(NONE_NETWORK)
            # else: the manager's internal control network, added below, is its only network.
        else:
            listed = self._list_networks()
            resolved = self._resolve_user_network(
                primary, what="network", create_missing=True, labels=propagate, listed=listed
            )
            if resolved == primary and not any(n.name == primary for n in listed):
                created.append(primary)
            networks.append(resolved)
        if extra:
            listed = listed if listed is not None else self._list_networks()
            for name in extra:
                try:
                    networks.append(
                        self._resolve_user_network(
                            name, what="additional_networks", create_missing=False, labels={}, listed=listed
                        )
                    )
                except NetworkNotFoundError:
                    for net in created:
                        self._release_network(net)
                    raise
        labels = spec.labels
        if manager is not None:
            self._ensure_control(manager)
            networks.append(manager.control_network)
            # Its owner pid lives in the manager container's pid namespace: reap goes by the container.
            labels = tuple(sorted({**spec.label_map, LABELS.MANAGER: manager.container_id}.items()))
        # One network can be named twice (e.g. a Compose match of an additional network): join it once.
        return replace(spec, networks=tuple(dict.fromkeys(networks)), labels=labels), created

    def _unix_socket_placement(self, spec: ContainerSpec, sandbox_id: str) -> ContainerSpec:
        """``spec`` without a network, its server on a socket in a fresh host directory for ``sandbox_id``."""
        directory = self._socket_dir(sandbox_id)
        if len(os.fsencode(directory / SOCKET_NAME)) > MAX_SOCKET_PATH:
            raise ConfigError(
                f'network="none" needs a Unix socket path of at most {MAX_SOCKET_PATH} bytes, and '
                f"{directory / SOCKET_NAME} is longer; set XDG_RUNTIME_DIR (or XDG_STATE_HOME) to a shorter path"
            )
        self.sockets.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.mkdir(mode=0o700, exist_ok=True)
        uid = spec.user_id if spec.user_id is not None else os.geteuid()
        if uid != os.geteuid():
            # The server runs as the sandbox uid and must create its socket here. Only root can hand
            # the directory over; anyone else gets a clear error instead of a server that cannot bind.
            try:
                os.chown(directory, uid, -1)
            except PermissionError:
                self._remove_socket_dir(str(directory), sandbox_id)
                raise ConfigError(
                    f'network="none": the sandbox runs as uid {uid}, which cannot create its server socket in '
                    f"{directory} (owned by uid {os.geteuid()}); use user_id={os.geteuid()} or run as root"
                ) from None
        labels = tuple(sorted({**spec.label_map, LABELS.SOCKET_DIR: str(directory)}.items()))
        return replace(unix_socket_spec(spec, str(directory)), labels=labels)

    def _socket_dir(self, sandbox_id: str) -> Path:
        if not _SANDBOX_ID.match(sandbox_id):
            raise SandboxError(f"invalid sandbox id {sandbox_id!r}")
        return self.sockets / sandbox_id

    def _remove_socket_dir(self, directory: str | None, sandbox_id: str | None) -> None:
        """Remove a sandbox's socket directory, named by its label. Only a directory that looks like one
        agentbox made for that very sandbox (``.../agentbox/sockets/<id>``) is touched: labels can be
        written by anyone with engine access, and this deletes a tree."""
        if not directory or not sandbox_id:
            return
        path = Path(directory)
        if not (
            path.is_absolute() and path.name == sandbox_id and _SANDBOX_ID.match(sandbox_id)
            and path.parent.name == "sockets" and path.parent.parent.name == "agentbox"
        ):
            log.warning("not removing %s: it does not look like the socket directory of sandbox %s", path, sandbox_id)
            return
        # The sandbox user could write anything into its socket directory: remove the tree (rmtree does
        # not follow symlinks).
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path)

    def _ensure_control(self, manager: _Manager) -> None:
        with self._lock:
            if manager.control_network in self._networks:
                return
            self._ensure_shared(
                manager.control_network, ROLE_CONTROL, internal=True, icc=True,
                labels={LABELS.MANAGER: manager.container_id},
            )
            with _engine("inspecting this process's own container"):
                attrs = self.api.inspect_container(manager.container_id)
            if manager.control_network not in (attrs.get("NetworkSettings", {}).get("Networks") or {}):
                with _engine(f"connecting this container to {manager.control_network}"):
                    self.api.connect_container_to_network(manager.container_id, manager.control_network)

    def _release_network(self, name: str) -> None:
        """Remove a network agentbox created for sandboxes once no container uses it."""
        from docker.errors import APIError

        try:
            attrs = self.api.inspect_network(name)
        except APIError:
            return
        labels = attrs.get("Labels") or {}
        if labels.get(LABELS.MANAGED) != "1" or labels.get(LABELS.ROLE) != ROLE_NAMED:
            return  # not ours, or shared infrastructure
        try:
            users = self.api.containers(all=True, filters={"network": attrs["Id"]})
            if users:
                return
            self.api.remove_network(attrs["Id"])
        except APIError as exc:
            # 404: someone else removed it; 403/409: a sandbox joined it meanwhile. Either way, not ours to do.
            log.debug("keeping network %s: %s", name, exc)
        with self._lock:
            self._networks.pop(name, None)

    # -- volumes -------------------------------------------------------------------------------------------

    def _create_missing_volumes(self, spec: ContainerSpec) -> builtins.list[str]:
        """Create (labelled) the named volumes the spec mounts that do not exist yet."""
        from docker.errors import NotFound

        created: list[str] = []
        labels = {k: v for k, v in spec.labels if k not in IDENTITY_LABELS}
        labels.update({LABELS.MANAGED: "1", LABELS.CREATED_FOR: spec.label_map.get(LABELS.SANDBOX, "")})
        for mount in spec.mounts:
            if mount.kind != "volume":
                continue
            try:
                self.api.inspect_volume(mount.source)
            except NotFound:
                with _engine(f"creating volume {mount.source}"):
                    self.api.create_volume(mount.source, labels=labels)
                created.append(mount.source)
        return created

    def _remove_volumes(self, names: Iterable[str]) -> None:
        from docker.errors import APIError

        for name in names:
            with contextlib.suppress(APIError):
                self.api.remove_volume(name)

    # -- lifecycle -----------------------------------------------------------------------------------------

    def create(self, spec: ContainerSpec) -> str:
        """Create the container (not started), joined to all its networks; nothing is left on failure."""
        with _engine("creating the sandbox container"):
            volumes = self._create_missing_volumes(spec)
        networks: list[str] = []
        container_id: str | None = None
        placed = spec
        try:
            placed, networks = self._place(spec)
            try:
                container_id = self._create_container(placed)
            except NetworkNotFoundError:
                if not self._forget_shared(placed):
                    raise
                # A shared network was removed behind our cache (e.g. by `agentbox reap`): make it again.
                placed, more = self._place(spec)
                networks += more
                container_id = self._create_container(placed)
            for name in placed.networks[1:]:
                with _engine(f"connecting the sandbox to network {name}"):
                    self.api.connect_container_to_network(container_id, name)
            return container_id
        except BaseException:
            if container_id is not None:
                with contextlib.suppress(Exception):
                    self.api.remove_container(container_id, force=True, v=True)
            for name in networks:
                self._release_network(name)
            self._remove_volumes(volumes)
            self._remove_socket_dir(placed.socket_dir, placed.label_map.get(LABELS.SANDBOX))
            raise

    def _create_container(self, spec: ContainerSpec) -> str:
        from docker.models.containers import _create_container_args

        # The low-level call skips the model layer's extra inspect of the new container (one round trip).
        kwargs = _create_container_args({**to_docker_args(spec), "version": self.api._version})
        with _engine(f"creating the sandbox container from {spec.image}"):
            try:
                return str(self.api.create_container(**kwargs)["Id"])
            except Exception as exc:
                if _is_not_found(exc) and "network" not in str(exc).lower():
                    raise ImageNotFoundError(
                        f"image {spec.image!r} is not present on the engine; {IMAGE_HINT}"
                    ) from None
                raise

    def _forget_shared(self, spec: ContainerSpec) -> bool:
        with self._lock:
            stale = [n for n in spec.networks if n in self._networks]
            for name in stale:
                del self._networks[name]
        return bool(stale)

    def start(
        self, container_id: str, files: Mapping[str, tuple[bytes, int]], *, timeout: float, restart: bool = False
    ) -> Endpoint:
        """Put ``files`` into /run/agentbox, start, and follow the logs until the server is ready.

        ``restart``: the container ran before, so its log already holds ready lines to skip.
        """
        deadline = time.monotonic() + timeout
        earlier = self.logs(container_id).count("agentbox-server ready on ") if restart else 0
        if files:
            with _engine("handing the session key to the sandbox"):
                self.api.put_archive(container_id, RUN_DIR, _secrets_tar(files))
        with _engine("starting the sandbox container"):
            self.api.start(container_id)
        with _engine("following the sandbox's log"):
            watcher = _ReadyWatcher(self.api, container_id, skip=earlier)
        try:
            # Read the published port while the server boots: costs no time on the critical path.
            with _engine("inspecting the sandbox container"):
                attrs = self.api.inspect_container(container_id)
            kind, line = watcher.wait(deadline - time.monotonic())
        finally:
            watcher.close()
        if kind == "ready":
            match = READY.search(line)
            assert match is not None
            if match.group(2) is None:  # unix:PATH: the socket's host path comes from the placement
                endpoint = self._endpoint(_placement_from_inspect(attrs))
                if endpoint.uds and not os.path.exists(endpoint.uds):
                    raise SandboxStartError(
                        f"the runtime server is ready on its Unix socket, but {endpoint.uds} does not exist on "
                        "this host: the engine does not share this host's files (a remote DOCKER_HOST?); "
                        'network="none" needs a local engine'
                    )
                return endpoint
            return self._endpoint(_placement_from_inspect(attrs), ready_port=int(match.group(2)),
                                  ready_host=match.group(1).decode())
        raise self._start_failure(container_id, timed_out=kind == "timeout", timeout=timeout)

    def _start_failure(self, container_id: str, *, timed_out: bool, timeout: float) -> SandboxStartError:
        tail = self.logs(container_id, tail=LOG_TAIL).rstrip()
        shown = "\n".join("    " + line for line in tail.splitlines()) or "    (no output)"
        state: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            state = self.api.inspect_container(container_id).get("State", {})
        if timed_out:
            what = f"the runtime server did not report ready within {timeout:.0f} s"
            fix = "raise start_timeout if the engine is slow, or check the log below"
        elif state.get("OOMKilled"):
            what = "the sandbox was killed for lack of memory before its server was ready"
            fix = "raise the memory limit (memory=...)"
        else:
            what = f"the runtime server exited (code {state.get('ExitCode', '?')}) before it was ready"
            fix = "check that the image is an agentbox runtime image (`agentbox doctor`) and the log below"
        return SandboxStartError(f"{what}; {fix}. Last log lines of container {container_id[:12]}:\n{shown}")

    def _endpoint(self, placement: _Placement, *, ready_port: int | None = None, ready_host: str | None = None,
                  recorded_url: str | None = None) -> Endpoint:
        if placement.socket_dir:
            return Endpoint(UDS_BASE_URL, "unix", uds=os.path.join(placement.socket_dir, SOCKET_NAME))
        if placement.network_mode == "host":
            if ready_port is not None:
                return Endpoint(_url(ready_host or "127.0.0.1", ready_port), "host")
            if recorded_url:
                return Endpoint(recorded_url, "host")
            raise SandboxError("cannot tell the server port of a host-network sandbox without its state file")
        manager = self.manager()
        if manager is not None and manager.control_network in placement.addresses:
            return Endpoint(_url(placement.addresses[manager.control_network], placement.server_port), "network")
        for host_ip, host_port, container_port in placement.published:
            if container_port == placement.server_port:
                return Endpoint(_url(host_ip, host_port), "published")
        if NONE_NETWORK in placement.addresses:
            # Internal networks publish nothing; the host reaches the sandbox on the bridge itself.
            return Endpoint(_url(placement.addresses[NONE_NETWORK], placement.server_port), "network")
        raise SandboxError(
            "the sandbox's server port is not published and no shared network reaches it from here"
        )

    def endpoint(self, container_id: str) -> Endpoint:
        """How to reach the running container's server (from an inspect)."""
        with _engine("inspecting the sandbox container"):
            attrs = self._inspect(container_id)
        labels = attrs.get("Config", {}).get("Labels") or {}
        record = self.store.load(labels[LABELS.SANDBOX]) if labels.get(LABELS.SANDBOX) else None
        return self._endpoint(_placement_from_inspect(attrs), recorded_url=record.url if record else None)

    def _inspect(self, container_id: str) -> dict[str, Any]:
        from docker.errors import NotFound

        try:
            return dict(self.api.inspect_container(container_id))
        except NotFound:
            raise SandboxNotFoundError(f"sandbox container {container_id[:12]} no longer exists") from None

    def pause(self, container_id: str) -> None:
        """docker pause."""
        with _engine("pausing the sandbox"):
            self.api.pause(container_id)

    def resume(self, container_id: str) -> None:
        """docker unpause."""
        with _engine("resuming the sandbox"):
            self.api.unpause(container_id)

    def stop(self, container_id: str, *, timeout: float = 5) -> None:
        """docker stop."""
        with _engine("stopping the sandbox"):
            self.api.stop(container_id, timeout=int(timeout))

    def remove(self, container_id: str, *, purge_volumes: bool = False) -> None:
        """Remove the container, the agentbox-created networks it was the last user of, its socket
        directory, and (with ``purge_volumes``, used when a start fails) the named volumes agentbox
        created for it."""
        from docker.errors import NotFound

        try:
            attrs = self.api.inspect_container(container_id)
        except NotFound:
            return
        networks = list((attrs.get("NetworkSettings", {}).get("Networks") or {}).keys())
        labels = attrs.get("Config", {}).get("Labels") or {}
        sandbox_id = labels.get(LABELS.SANDBOX)
        with _engine("removing the sandbox container"), contextlib.suppress(NotFound):
            self.api.remove_container(container_id, force=True, v=True)
        for name in networks:
            self._release_network(name)
        # After the container: its server can no longer create the socket again meanwhile.
        self._remove_socket_dir(labels.get(LABELS.SOCKET_DIR), sandbox_id)
        if purge_volumes and sandbox_id:
            with _engine("removing the sandbox's volumes"):
                found = self.api.volumes(filters={"label": f"{LABELS.CREATED_FOR}={sandbox_id}"})
            self._remove_volumes(v["Name"] for v in (found.get("Volumes") or []))

    def logs(self, container_id: str, *, tail: int | None = None) -> str:
        """The container's stdout and stderr."""
        with _engine("reading the sandbox's log"):
            data = self.api.logs(container_id, stdout=True, stderr=True, tail="all" if tail is None else tail)
        return bytes(data).decode("utf-8", errors="replace")

    # -- finding -------------------------------------------------------------------------------------------

    def _info(self, summary: Mapping[str, Any]) -> SandboxInfo:
        labels = summary.get("Labels") or {}
        sandbox_id = labels.get(LABELS.SANDBOX, "")
        record = None
        with contextlib.suppress(SandboxError):
            record = self.store.load(sandbox_id) if sandbox_id else None
        state = _STATES.get(str(summary.get("State", "")), SandboxState.STOPPED)
        url = None
        if state is SandboxState.RUNNING or state is SandboxState.PAUSED:
            with contextlib.suppress(SandboxError):
                ep = self._endpoint(_placement_from_summary(summary), recorded_url=record.url if record else None)
                # Over a Unix socket the http URL names nothing: show where the socket is.
                url = f"unix:{ep.uds}" if ep.uds else ep.url
        owner_pid = record.owner_pid if record else _int(labels.get(LABELS.OWNER_PID))
        names = summary.get("Names") or [""]
        return SandboxInfo(
            id=sandbox_id,
            container_id=str(summary.get("Id", "")),
            container_name=str(names[0]).lstrip("/"),
            image=str(summary.get("Image", "")),
            state=state,
            created=_parse_created(labels.get(LABELS.CREATED)),
            owner_pid=owner_pid,
            owner_host=labels.get(LABELS.OWNER_HOST, ""),
            url=url,
            keep_alive=labels.get(LABELS.KEEP_ALIVE) == "1",
            labels=dict(labels),
        )

    def list(self, *, owner_host: str | None = None) -> builtins.list[SandboxInfo]:
        """Every agentbox sandbox container (running or not), oldest first."""
        filters: dict[str, Any] = {"label": [LABELS.SANDBOX]}
        if owner_host is not None:
            filters["label"].append(f"{LABELS.OWNER_HOST}={owner_host}")
        with _engine("listing sandboxes"):
            found = self.api.containers(all=True, filters=filters)
        infos = [self._info(s) for s in found]
        return sorted(infos, key=lambda i: (i.created or datetime.min.replace(tzinfo=timezone.utc), i.id))

    def find(self, sandbox_id: str) -> SandboxInfo:
        """The sandbox with this id (or full/short container id, or container name)."""
        with _engine("looking up the sandbox"):
            found = self.api.containers(all=True, filters={"label": f"{LABELS.SANDBOX}={sandbox_id}"})
            if not found and sandbox_id:
                # Also accept what `docker ps` shows: a container id (prefix) or name.
                found = [
                    s for s in self.api.containers(all=True, filters={"label": LABELS.SANDBOX})
                    if (len(sandbox_id) >= 4 and str(s.get("Id", "")).startswith(sandbox_id))
                    or sandbox_id in [str(n).lstrip("/") for n in s.get("Names") or []]
                ]
        if not found:
            raise SandboxNotFoundError(
                f"no sandbox {sandbox_id!r} on this engine (list them with `agentbox ls`)"
            )
        if len(found) > 1:
            raise SandboxNotFoundError(f"{sandbox_id!r} matches several sandboxes; give the full id")
        return self._info(found[0])

    def reap(self, *, dry_run: bool = False) -> builtins.list[str]:
        """Remove sandboxes whose owner is gone (keep-alive ones are kept); returns their ids.

        The owner is a process on this host (owner pid + host labels, or the newer owner recorded by a
        reattach), or, for sandboxes started by agentbox running in a container, that container.
        """
        host = socket.gethostname()
        reaped = []
        managers: dict[str, bool] = {}
        for info in self.list():
            if info.keep_alive:
                continue
            manager = info.labels.get(LABELS.MANAGER)
            if manager:
                if manager not in managers:
                    managers[manager] = self._container_running(manager)
                if managers[manager]:
                    continue
            elif info.owner_host != host or info.owner_pid is None or _pid_alive(info.owner_pid):
                continue
            reaped.append(info.id)
            if not dry_run:
                self.remove(info.container_id)
                with contextlib.suppress(SandboxError):
                    self.store.delete(info.id)
        if not dry_run:
            self._reap_records()
            self._reap_control_networks()
            self._reap_socket_dirs()
        return reaped

    def _container_running(self, container_id: str) -> bool:
        from docker.errors import NotFound

        try:
            return bool(self.api.inspect_container(container_id)["State"].get("Running"))
        except NotFound:
            return False

    def _reap_control_networks(self) -> None:
        """Remove control networks whose manager container is gone and that no container uses."""
        from docker.errors import APIError

        with _engine("listing networks"):
            found = self.api.networks(filters={"label": f"{LABELS.ROLE}={ROLE_CONTROL}"})
        for net in found:
            manager = (net.get("Labels") or {}).get(LABELS.MANAGER)
            if not manager or self._container_running(manager):
                continue
            with contextlib.suppress(APIError):
                if not self.api.containers(all=True, filters={"network": net["Id"]}):
                    self.api.remove_network(net["Id"])
                    with self._lock:
                        self._networks.pop(net["Name"], None)

    def _reap_socket_dirs(self) -> None:
        """Remove this user's socket directories whose sandbox no longer exists (e.g. after a crash
        between create and cleanup, or a container removed with ``docker rm``)."""
        try:
            entries = [p for p in self.sockets.iterdir() if p.is_dir() and _SANDBOX_ID.match(p.name)]
        except OSError:
            return
        if not entries:
            return
        with _engine("listing sandboxes"):
            present = {
                (s.get("Labels") or {}).get(LABELS.SANDBOX)
                for s in self.api.containers(all=True, filters={"label": LABELS.SANDBOX})
            }
        # A directory is made just before its container: a young one may belong to a sandbox being
        # created right now, whose container the listing above could not show yet.
        settled = time.time() - SOCKET_DIR_GRACE
        for path in entries:
            if path.name not in present:
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < settled:
                        self._remove_socket_dir(str(path), path.name)

    def _reap_records(self) -> None:
        """Forget state files of sandboxes that no longer exist on this engine."""
        with _engine("listing sandboxes"):
            present = {
                (s.get("Labels") or {}).get(LABELS.SANDBOX)
                for s in self.api.containers(all=True, filters={"label": LABELS.SANDBOX})
            }
        for sandbox_id in self.store.ids():
            if sandbox_id in present:
                continue
            with contextlib.suppress(SandboxError, OSError):
                record = self.store.load(sandbox_id)
                if record is not None and record.owner_host == socket.gethostname():
                    self.store.delete(sandbox_id)


def _placement_from_inspect(attrs: Mapping[str, Any]) -> _Placement:
    settings = attrs.get("NetworkSettings") or {}
    published = []
    for key, bindings in (settings.get("Ports") or {}).items():
        port, _, _proto = key.partition("/")
        for binding in bindings or []:
            published.append((str(binding.get("HostIp", "")), int(binding["HostPort"]), int(port)))
    addresses = {
        name: str(net.get("IPAddress"))
        for name, net in (settings.get("Networks") or {}).items()
        if net.get("IPAddress")
    }
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    return _Placement(
        network_mode=str((attrs.get("HostConfig") or {}).get("NetworkMode", "")),
        published=published,
        addresses=addresses,
        server_port=_int(labels.get(LABELS.SERVER_PORT)) or SERVER_PORT,
        socket_dir=labels.get(LABELS.SOCKET_DIR) or None,
    )


def _placement_from_summary(summary: Mapping[str, Any]) -> _Placement:
    published = [
        (str(p.get("IP", "")), int(p["PublicPort"]), int(p["PrivatePort"]))
        for p in summary.get("Ports") or []
        if p.get("PublicPort")
    ]
    addresses = {
        name: str(net.get("IPAddress"))
        for name, net in ((summary.get("NetworkSettings") or {}).get("Networks") or {}).items()
        if net.get("IPAddress")
    }
    labels = summary.get("Labels") or {}
    return _Placement(
        network_mode=str((summary.get("HostConfig") or {}).get("NetworkMode", "")),
        published=published,
        addresses=addresses,
        server_port=_int(labels.get(LABELS.SERVER_PORT)) or SERVER_PORT,
        socket_dir=labels.get(LABELS.SOCKET_DIR) or None,
    )


def default_backend() -> DockerBackend:
    """The process-wide Docker backend (see :func:`agentbox.backends.get_backend`)."""
    from agentbox.backends import get_backend

    backend = get_backend("docker")
    assert isinstance(backend, DockerBackend)
    return backend
