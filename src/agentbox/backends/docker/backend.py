"""DockerBackend: sandboxes as containers on one Docker engine (docker SDK, API 1.41+).

The jobs live in their own modules; this class composes them:

* :mod:`.networks` -- which network a configured name means, the shared networks, the manager's
  control network. A sandbox reached over a port joins one network at create and the rest *before*
  start (create -> connect -> start); one whose server is on a Unix socket, on the shared network, starts
  detached and joins them all while its server boots (create -> disconnect -> start -> connect), which
  takes the engine ~90 ms less on the critical path. Either way the host waits for every network before
  the first command, so sidecars on ``additional_networks`` answer by name from it on.
* :mod:`.endpoints` -- how this process reaches the server (pure).
* :mod:`.lifecycle` -- the create call, the secrets put before start, the ready-line watcher.
* :mod:`.keydirs` -- on a local engine, the session key written into a mounted host directory instead.
* :mod:`.sockets`, :mod:`.volumes` -- per-sandbox socket directories (``network="none"``, a server for
  this host only), named volumes.
* :mod:`.reaping` -- orphans and leftovers.

Concurrency: one instance serves every sandbox of a process. No lock is held across engine calls of
different sandboxes; slow steps that several creates may need (an image build, a shared network) run
once per key (:class:`~agentbox.backends.docker.once.OnceByKey`): a build of one image never blocks a
create that needs another image or none.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentbox.backends.base import Backend, Endpoint, Progress, SandboxInfo, SandboxState
from agentbox.backends.docker import lifecycle, reaping
from agentbox.backends.docker.egress import LABEL_GATEWAY, Egress
from agentbox.backends.docker.endpoints import Placement, choose_endpoint, placement_of
from agentbox.backends.docker.errors import engine_errors
from agentbox.backends.docker.events import container_events
from agentbox.backends.docker.hostdirs import DIR_GRACE
from agentbox.backends.docker.keydirs import KeyDirs
from agentbox.backends.docker.networks import (
    ROLE_DEFAULT,
    ROLE_NONE,
    Manager,
    NetworkRef,
    Networks,
    detect_manager,
)
from agentbox.backends.docker.once import OnceByKey
from agentbox.backends.docker.sockets import SocketDirs
from agentbox.backends.docker.volumes import create_missing_volumes, remove_volumes, volumes_created_for
from agentbox.backends.events import EventStream
from agentbox.backends.labels import IDENTITY_LABELS, LABELS
from agentbox.backends.spec import (
    DEFAULT_NETWORK,
    FOREIGN_SERVER_LABEL,
    NONE_NETWORK,
    ContainerSpec,
    with_server_volume,
)
from agentbox.backends.state import StateStore, key_dirs, sockets_dir
from agentbox.backends.workspace import unwritable_reason
from agentbox.engine import docker_client
from agentbox.errors import (
    ConfigError,
    NetworkNotFoundError,
    SandboxError,
    SandboxNotFoundError,
    SandboxStartError,
)
from agentbox.images.server_volume import ensure_server_volume
from agentbox.volumes import workspace_mount

if TYPE_CHECKING:
    import docker
    from agentbox.config import SandboxConfig

__all__ = ["DockerBackend"]

log = logging.getLogger("agentbox.backends.docker")

# Connections kept to the engine: enough for many sandboxes starting at once in one process.
POOL_SIZE = 64

_STATES = {
    "created": SandboxState.NEW,
    "running": SandboxState.RUNNING,
    "paused": SandboxState.PAUSED,
    "restarting": SandboxState.STARTING,
    "exited": SandboxState.STOPPED,
    "dead": SandboxState.STOPPED,
    "removing": SandboxState.REMOVED,
}


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


#: Seconds between two background sweeps of forgotten key and socket directories (per backend instance).
KEY_SWEEP_INTERVAL = 300.0


class DockerBackend(Backend):
    """Sandboxes as containers on one Docker engine; one instance (and one client) serves many sandboxes.

    ``default_network``: the shared network sandboxes without a configured ``network`` join (tests give
    their own, to remove it without touching other processes' sandboxes).
    """

    name = "docker"

    def __init__(
        self,
        client: docker.DockerClient | None = None,
        *,
        store: StateStore | None = None,
        sockets: Path | None = None,
        keys: Path | None = None,
        mount_keys: bool = True,
        default_network: str = DEFAULT_NETWORK,
    ) -> None:
        self._client = client
        self._owns_client = client is None
        self._store = store or StateStore()
        self.sockets = SocketDirs(sockets or sockets_dir())
        # mount_keys=False: every key is copied in through the engine (what a remote engine always gets).
        keys = keys or key_dirs()
        self.keys = KeyDirs(keys) if mount_keys and keys is not None else None
        # Key directories of the containers this instance created (a restart reads the label instead).
        self._key_dirs: dict[str, str] = {}
        # Networks of the containers this instance created detached, to join once started.
        self._late_networks: dict[str, tuple[str, ...]] = {}
        self._keys_swept_at = -KEY_SWEEP_INTERVAL
        self.networks = Networks(lambda: self.api)
        self.egress = Egress(lambda: self.api)
        self.default_network = default_network
        self._images: OnceByKey[tuple[str | None, str], str] = OnceByKey()
        self._facts: OnceByKey[str, Any] = OnceByKey()  # manager detection, engine facts: asked once
        # Containers this instance created to run their image's own server (start skips the ready line).
        self._foreign: set[str] = set()

    # -- plumbing ------------------------------------------------------------------------------------------

    @property
    def store(self) -> StateStore:
        """The state files of the sandboxes this user started."""
        return self._store

    @property
    def client(self) -> docker.DockerClient:
        """The docker SDK client (connected on first use)."""
        if self._client is None:
            # Each start follows its container's log stream on a connection of its own.
            self._client = self._facts.get("client", lambda: docker_client(max_pool_size=POOL_SIZE))
        return self._client

    @property
    def api(self) -> Any:
        """The low-level API client (fewer round trips than the model layer)."""
        return self.client.api

    def events(self, labels: Mapping[str, str]) -> EventStream:
        """The engine's container events of the sandboxes carrying all of ``labels``, as they happen."""
        return container_events(self.api, labels)

    def close(self) -> None:
        """Close the client if this backend opened it."""
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None
            self._facts.forget("client")

    def resolve_image(
        self, config: SandboxConfig, progress: Progress | None = None, *, refresh: bool = False
    ) -> str:
        """The runtime image for ``config``: its runtime_container_image, else one built on its base.

        Builds run once per base image at a time: concurrent creates needing the same missing image wait
        for that one build; creates needing another image (or a given one) do not wait at all.
        """
        if config.runtime_container_image:
            return config.runtime_container_image
        key = (config.runtime_container_image, config.base_container_image)
        if refresh:
            self._images.forget(key)

        def build() -> str:
            from agentbox.images import ensure_runtime_image

            kwargs: dict[str, Any] = {"client": self.client}
            if progress is not None:
                kwargs["progress"] = progress
            return ensure_runtime_image(config, **kwargs)

        return self._images.get(key, build)

    # -- the manager's own container -----------------------------------------------------------------------

    def _detected(self) -> tuple[Manager | None, bool]:
        return self._facts.get("manager", lambda: detect_manager(self.api))

    def manager(self) -> Manager | None:
        """This process's container when agentbox runs in a (non host-networked) container, else None."""
        return self._detected()[0]

    def _in_host_network_container(self) -> bool:
        return self._detected()[1]

    def _control_network(self) -> str | None:
        manager = self.manager()
        return manager.control_network if manager is not None else None

    def _local_uids(self) -> bool:
        """True when a uid in a sandbox is the same uid on this host: a local engine without user
        namespace remapping (rootless Docker, userns-remap) -- only then can host modes be judged here."""

        def ask() -> bool:
            if not str(getattr(self.api, "base_url", "")).startswith("http+docker://"):
                return False  # tcp:// or ssh://: the bind sources are another machine's
            options = " ".join(self._engine_info().get("SecurityOptions") or [])
            return "name=userns" not in options and "name=rootless" not in options

        return bool(self._facts.get("local-uids", ask))

    def _engine_info(self) -> dict[str, Any]:
        def ask() -> dict[str, Any]:
            with engine_errors("asking the engine about itself"):
                return dict(self.api.info())

        return dict(self._facts.get("info", ask))

    def _shares_files(self) -> bool:
        """True when a bind mount's source is this process's own file: a local engine (Unix socket, no
        user namespace) on this very machine, not in a container of its own (Docker Desktop's VM, an
        engine reached through a mounted socket from inside a container) -- its name is this host's."""

        def ask() -> bool:
            if self.manager() is not None or self._in_host_network_container() or not self._local_uids():
                return False
            return self._engine_info().get("Name") == socket.gethostname()

        return bool(self._facts.get("shares-files", ask))

    def _with_key_dir(self, spec: ContainerSpec) -> ContainerSpec:
        """``spec`` with a key directory mounted at its /run/agentbox, where that is safe and pays.

        Not for an image's own server (its launcher reads a copied key), nor under gVisor (its gofer may
        not show a restarted sandbox a file written on the host later), nor where the sandbox uid is
        another user of this host that this process cannot hand a directory to.
        """
        sandbox_id = spec.label_map.get(LABELS.SANDBOX)
        if self.keys is None or not sandbox_id or spec.foreign_server or spec.runtime == "runsc":
            return spec
        euid = os.geteuid()
        if euid != 0 and (spec.user_id or 0) not in (0, euid):
            return spec
        if not self._shares_files():
            return spec
        return self.keys.place(spec, sandbox_id)

    def _with_server_socket(self, spec: ContainerSpec) -> ContainerSpec:
        """``spec`` with its server on a Unix socket in a private host directory, its port not published,
        where the server need only be reachable from this host and the engine shares this host's files.

        A published port costs a docker-proxy process per sandbox, started with the container and stopped
        before its removal (about 50 ms of a teardown), and any local user can connect to it; a socket in
        a 0700 directory is this user's alone, and a call to a removed sandbox fails at once. Not under
        gVisor (a socket made in its kernel never shows on the host), nor behind an egress gateway (it
        relays the server's port), nor for an image's own server, nor where the sandbox uid is another
        user this process cannot hand the directory to.
        """
        sandbox_id = spec.label_map.get(LABELS.SANDBOX)
        if (
            not spec.local_server or spec.socket_dir or spec.network_mode != "bridge" or not sandbox_id
            or spec.foreign_server or spec.runtime == "runsc" or spec.has_policy
        ):
            return spec
        euid = os.geteuid()
        if euid != 0 and (spec.user_id if spec.user_id is not None else euid) != euid:
            return spec
        if not self.sockets.fits(sandbox_id) or not self._shares_files():
            return spec
        return self.sockets.place(spec, sandbox_id, keep_network=True)

    def sweep_dirs(self, *, grace: float = DIR_GRACE) -> None:
        """Remove the socket and key directories whose sandbox is no longer on the engine (removed without
        :meth:`remove`: ``docker rm``, a crash, a sweep by label) and older than ``grace`` seconds."""
        found = [(dirs, dirs.candidates()) for dirs in (self.sockets, self.keys) if dirs is not None]
        if any(entries for _, entries in found):
            present = self.present_ids()
            for dirs, entries in found:
                dirs.sweep(entries, present, grace=grace)

    def _sweep_dirs_now_and_then(self) -> None:
        """:meth:`sweep_dirs` in the background, at most every :data:`KEY_SWEEP_INTERVAL`: short of
        ``agentbox reap`` nothing else would. Never on the create's path; a failure waits for next time."""
        now = time.monotonic()
        if now - self._keys_swept_at < KEY_SWEEP_INTERVAL:
            return
        self._keys_swept_at = now

        def sweep() -> None:
            with contextlib.suppress(Exception):
                self.sweep_dirs()

        threading.Thread(target=sweep, name="agentbox-key-sweep", daemon=True).start()

    # -- networks ------------------------------------------------------------------------------------------

    def _list_networks(self) -> builtins.list[NetworkRef]:
        return self.networks.list()

    def _place(self, spec: ContainerSpec) -> tuple[ContainerSpec, builtins.list[str]]:
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
            self.networks.ensure_shared(self.default_network, ROLE_DEFAULT, icc=False)
            networks.append(self.default_network)
        elif primary == NONE_NETWORK:
            # gVisor keeps a socket its sandbox creates inside its own kernel: the host never sees it.
            if manager is None and not self._in_host_network_container() and spec.runtime != "runsc":
                if extra:
                    raise ConfigError(
                        'network="none" runs the sandbox without any network, so additional_networks '
                        f"({', '.join(extra)}) cannot be joined; drop them or choose a network"
                    )
                # No network at all: the server is reached over a Unix socket in a host directory.
                return self.sockets.place(spec, sandbox_id), []
            if manager is None:
                self.networks.ensure_shared(NONE_NETWORK, ROLE_NONE, internal=True, icc=False)
                networks.append(NONE_NETWORK)
            # else: the manager's internal control network, added below, is its only network.
        else:
            listed = self._list_networks()
            resolved = self.networks.resolve_user(
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
                        self.networks.resolve_user(
                            name, what="additional_networks", create_missing=False, labels={}, listed=listed
                        )
                    )
                except NetworkNotFoundError:
                    for net in created:
                        self.networks.release(net)
                    raise
        labels = spec.labels
        if manager is not None:
            self.networks.ensure_control(manager)
            networks.append(manager.control_network)
            # Its owner pid lives in the manager container's pid namespace: reap goes by the container.
            labels = tuple(sorted({**spec.label_map, LABELS.MANAGER: manager.container_id}.items()))
        # One network can be named twice (e.g. a Compose match of an additional network): join it once.
        return replace(spec, networks=tuple(dict.fromkeys(networks)), labels=labels), created

    # -- lifecycle -----------------------------------------------------------------------------------------

    def _check_mounts_writable(self, spec: ContainerSpec) -> None:
        """Refuse a workspace the sandbox user cannot write; warn about other such read-write mounts."""
        uid = spec.user_id if spec.user_id is not None else 0
        binds = [m for m in spec.mounts if m.kind == "bind" and not m.read_only]
        if not binds or not self._local_uids():
            return
        root_bypasses = "ALL" not in spec.security.cap_drop
        workspace = workspace_mount(binds, spec.working_dir or "/workspace")
        for mount in binds:
            reason = unwritable_reason(mount, uid, root_bypasses=root_bypasses)
            if reason is None:
                continue
            if mount == workspace:
                raise ConfigError(f"the workspace is not writable: {reason}")
            warnings.warn(reason, stacklevel=4)
            log.warning(reason)

    def create(self, spec: ContainerSpec) -> str:
        """Create the container (not started), joined to all its networks; nothing is left on failure."""
        # The runtime server's own code, read-only in every mode (agentbox.images.server_volume); an image
        # running its own server has none.
        if not spec.foreign_server:
            spec = with_server_volume(spec, ensure_server_volume(self.client, spec.image))
        self._check_mounts_writable(spec)
        volumes = create_missing_volumes(self.api, spec)
        networks: list[str] = []
        container_id: str | None = None
        placed = spec
        try:
            placed, networks = self._placed(spec)
            if placed.key_dir or placed.socket_dir:
                self._sweep_dirs_now_and_then()
            try:
                container_id = lifecycle.create_container(self.api, placed)
            except NetworkNotFoundError:
                if not self.networks.forget(placed.networks):
                    raise
                # A shared network was removed behind our cache (e.g. by `agentbox reap`): make it again
                # (the same host directories: making them is idempotent).
                placed, more = self._placed(spec)
                networks += more
                container_id = lifecycle.create_container(self.api, placed)
            if self._joins_after_start(placed):
                # Started without a network, joined to them all while its server boots (see start).
                with engine_errors(f"detaching the sandbox from network {placed.networks[0]} until it starts"):
                    self.api.disconnect_container_from_network(container_id, placed.networks[0])
                self._late_networks[container_id] = placed.networks
            else:
                for name in placed.networks[1:]:
                    with engine_errors(f"connecting the sandbox to network {name}"):
                        self.api.connect_container_to_network(container_id, name)
            if spec.foreign_server:
                self._foreign.add(container_id)
            if placed.key_dir:
                self._key_dirs[container_id] = placed.key_dir
            return container_id
        except BaseException:
            if container_id is not None:
                with contextlib.suppress(Exception):
                    self.api.remove_container(container_id, force=True, v=True)
            if spec.has_policy and LABELS.SANDBOX in spec.label_map:
                with contextlib.suppress(Exception):
                    self.egress.teardown(spec.label_map[LABELS.SANDBOX])
            for name in networks:
                self.networks.release(name)
            remove_volumes(self.api, volumes)
            self.sockets.remove(placed.socket_dir, placed.label_map.get(LABELS.SANDBOX))
            if self.keys is not None:
                self.keys.remove(placed.key_dir, placed.label_map.get(LABELS.SANDBOX))
            raise

    def _joins_after_start(self, placed: ContainerSpec) -> bool:
        """True when the sandbox is better started with no network and joined to its networks right after.

        The engine's start of a container on a user-defined network costs about 90 ms more than of one
        without (its endpoint, and the embedded DNS resolver set up inside the sandbox); a ``connect`` after
        start does the same work in about 85 ms while the server boots, which takes longer. Only for a
        server on a Unix socket, which needs no network to be reached, and with nothing to publish. The
        host waits for every network before the first command, so sidecars still answer from it on.

        Only on the shared default network: a detached container does not count as a user of a network,
        so a network made for sandboxes could be removed as unused meanwhile; the shared one is made again.
        """
        bridged = placed.network_mode == "bridge" and placed.networks[:1] == (self.default_network,)
        return bool(placed.socket_dir) and bridged and not placed.ports

    def _join_networks(self, container_id: str, names: tuple[str, ...]) -> None:
        """Connect a started sandbox to ``names``, in order; a shared network removed meanwhile (``agentbox
        reap``) is made again."""
        for name in names:
            try:
                with engine_errors(f"connecting the sandbox to network {name}"):
                    self.api.connect_container_to_network(container_id, name)
                continue
            except NetworkNotFoundError:
                if name != self.default_network:
                    raise
            self.networks.forget([name])
            self.networks.ensure_shared(name, ROLE_DEFAULT, icc=False)
            with engine_errors(f"connecting the sandbox to network {name}"):
                self.api.connect_container_to_network(container_id, name)

    def _placed(self, spec: ContainerSpec) -> tuple[ContainerSpec, builtins.list[str]]:
        """:meth:`_place`, then the gateway, the server's socket and the key directory, as they apply."""
        placed, created = self._place(spec)
        placed = self._behind_gateway(placed)
        return self._with_key_dir(self._with_server_socket(placed)), created

    def _behind_gateway(self, placed: ContainerSpec) -> ContainerSpec:
        """A sandbox with a network policy: its gateway made, and the sandbox on the gateway's network only."""
        if not placed.has_policy or placed.network_mode != "bridge" or LABELS.SANDBOX not in placed.label_map:
            return placed
        control = self._control_network()
        outside = [n for n in placed.networks if n != control]
        return self.egress.setup(placed, gateway_networks=outside, control=control)

    def start(
        self, container_id: str, files: Mapping[str, tuple[bytes, int]], *, timeout: float, restart: bool = False
    ) -> Endpoint:
        """Put ``files`` into /run/agentbox, start, and follow the logs until the server is ready.

        ``restart``: the container ran before, so its log already holds ready lines to skip. A container
        that is already running (restarted by ``docker restart`` and waiting for its key) is not started
        again: it gets the key and is followed to its next ready line.
        """
        if container_id in self._foreign or (restart and self._foreign_server(container_id)):
            return self._start_foreign(container_id, files)
        deadline = time.monotonic() + timeout
        # A container restarted behind agentbox's back may still be on its way out (an entrypoint that
        # found no key exits) when the key arrives: then it is simply started once more.
        attempts = 2 if restart else 1
        for attempt in range(attempts):
            earlier = lifecycle.count_ready_lines(self.logs(container_id)) if restart else 0
            if files:
                self._hand_over(container_id, files, restart=restart)
            self._start_container(container_id)
            with engine_errors("following the sandbox's log"):
                watcher = lifecycle.ReadyWatcher(self.api, container_id, skip=earlier)
            try:
                # Join the networks, then read the published port, while the server boots: neither costs
                # time on the critical path.
                late = self._late_networks.get(container_id)
                if late:
                    self._join_networks(container_id, late)
                    del self._late_networks[container_id]
                attrs = self._inspect(container_id)
                kind, line = watcher.wait(deadline - time.monotonic())
            finally:
                watcher.close()
            if kind != "ended" or attempt == attempts - 1:
                break
        if kind == "ready":
            match = lifecycle.READY.search(line)
            assert match is not None
            placement = placement_of(attrs)
            if match.group(2) is None:  # unix:PATH: the socket's host path comes from the placement
                endpoint = choose_endpoint(placement)
                if endpoint.uds and not os.path.exists(endpoint.uds):
                    raise SandboxStartError(
                        f"the runtime server is ready on its Unix socket, but {endpoint.uds} does not exist on "
                        "this host: the engine does not share this host's files (a remote DOCKER_HOST?); "
                        'network="none" needs a local engine'
                    )
                return endpoint
            if placement.network_mode != "host" and not placement.published and not placement.addresses:
                attrs = self._inspect(container_id)  # ports are assigned at start: inspected too early
                placement = placement_of(attrs)
            ready = (match.group(1).decode(), int(match.group(2)))
            behind = self._gateway_endpoint((attrs.get("Config") or {}).get("Labels") or {})
            if behind is not None:
                return behind
            return choose_endpoint(placement, control_network=self._control_network(), ready=ready)
        raise lifecycle.start_failure(
            self.api, container_id, self.logs(container_id, tail=lifecycle.LOG_TAIL),
            timed_out=kind == "timeout", timeout=timeout,
        )

    def _foreign_server(self, container_id: str) -> bool:
        """From the container's label: for a restart, possibly of a container another process created (a
        first start knows from :attr:`_foreign`, without an engine round trip on the create path)."""
        labels = (self._inspect(container_id).get("Config") or {}).get("Labels") or {}
        return labels.get(FOREIGN_SERVER_LABEL) == "1"

    def _hand_over(self, container_id: str, files: Mapping[str, tuple[bytes, int]], *, restart: bool) -> None:
        """Put ``files`` into the container's /run/agentbox: written into its key directory when it has one
        (this instance made it, or, for a restart, its label names exactly the one agentbox would make
        here), else copied in through the engine."""
        directory = self._key_dirs.get(container_id)
        if directory is None and restart and self.keys is not None:
            labels = (self._inspect(container_id).get("Config") or {}).get("Labels") or {}
            named = labels.get(LABELS.KEY_DIR)
            # A label is anyone's to write: only the very directory this host's agentbox would make.
            if self.keys.made_here(named, labels.get(LABELS.SANDBOX)):
                directory = named
        if directory is not None and self.keys is not None:
            try:
                self.keys.hand_over(directory, files)
                return
            except OSError as exc:  # e.g. removed from the host meanwhile: the mount still takes a copy
                log.debug("cannot write the session key into %s (%s); copying it in", directory, exc)
        with engine_errors("handing the session key to the sandbox"):
            self.api.put_archive(container_id, lifecycle.RUN_DIR, lifecycle.secrets_tar(files))

    def _start_foreign(self, container_id: str, files: Mapping[str, tuple[bytes, int]]) -> Endpoint:
        """Start a container running its image's own server (no ready line to wait for: the caller probes
        the server itself); ``files`` go to /run/agentbox first, for its launcher to read."""
        if files:
            with engine_errors("handing the session key to the sandbox"):
                self.api.put_archive(container_id, lifecycle.RUN_DIR, lifecycle.secrets_tar(files))
        if not self.container_running(container_id):
            self._start_container(container_id)
        attrs = self._inspect(container_id)
        state = attrs.get("State") or {}
        if not state.get("Running"):
            raise lifecycle.start_failure(
                self.api, container_id, self.logs(container_id, tail=lifecycle.LOG_TAIL), timed_out=False, timeout=0
            )
        return choose_endpoint(placement_of(attrs), control_network=self._control_network())

    def _start_container(self, container_id: str) -> None:
        """docker start; a shared network removed since the container was created is made again first."""
        try:
            with engine_errors("starting the sandbox container"):
                self.api.start(container_id)
            return
        except NetworkNotFoundError:
            attrs = self._inspect(container_id)
            joined = list((attrs.get("NetworkSettings") or {}).get("Networks") or {})
            shared = [n for n in joined if n in (self.default_network, NONE_NETWORK) or n.startswith("agentbox-ctl-")]
            if not shared:
                raise
        # `docker network rm agentbox-net` (or a prune) while this process had it cached: every later start
        # would fail. Make it again and re-attach the container (its endpoint points at the old network id).
        self.networks.forget(shared)
        for name in shared:
            if name == self.default_network:
                self.networks.ensure_shared(name, ROLE_DEFAULT, icc=False)
            elif name == NONE_NETWORK:
                self.networks.ensure_shared(name, ROLE_NONE, internal=True, icc=False)
            else:
                manager = self.manager()
                if manager is None or manager.control_network != name:
                    continue
                self.networks.ensure_control(manager)
        self.networks.reconnect(container_id, shared)
        with engine_errors("starting the sandbox container"):
            self.api.start(container_id)

    def endpoint(self, container_id: str) -> Endpoint:
        """How to reach the running container's server (from an inspect)."""
        attrs = self._inspect(container_id)
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        return self._endpoint(placement_of(attrs), labels)

    def _gateway_endpoint(self, labels: Mapping[str, str]) -> Endpoint | None:
        """A policy sandbox's server, through its gateway (unless a control network reaches it directly)."""
        if self._control_network() is not None:
            return None
        return self.egress.server_endpoint(dict(labels))

    def _endpoint(self, placement: Placement, labels: Mapping[str, str]) -> Endpoint:
        behind = self._gateway_endpoint(labels)
        if behind is not None:
            return behind
        record = None
        if labels.get(LABELS.SANDBOX):
            with contextlib.suppress(SandboxError):
                record = self.store.load(labels[LABELS.SANDBOX])
        return choose_endpoint(
            placement, control_network=self._control_network(), recorded_url=record.url if record else None
        )

    def _inspect(self, container_id: str) -> dict[str, Any]:
        """The container's inspect; SandboxNotFoundError when it no longer exists."""
        with engine_errors("inspecting the sandbox container"):
            return dict(self.api.inspect_container(container_id))

    def container_running(self, container_id: str) -> bool:
        """True when the container exists and runs."""
        try:
            return bool(self._inspect(container_id)["State"].get("Running"))
        except SandboxNotFoundError:
            return False

    def state(self, container_id: str) -> SandboxState:
        """The container's state now, as a sandbox state (REMOVED when it no longer exists)."""
        try:
            attrs = self._inspect(container_id)
        except SandboxNotFoundError:
            return SandboxState.REMOVED
        return _STATES.get(str((attrs.get("State") or {}).get("Status", "")), SandboxState.STOPPED)

    def pause(self, container_id: str) -> None:
        """docker pause."""
        with engine_errors("pausing the sandbox"):
            self.api.pause(container_id)

    def resume(self, container_id: str) -> None:
        """docker unpause."""
        with engine_errors("resuming the sandbox"):
            self.api.unpause(container_id)

    def stop(self, container_id: str, *, timeout: float = 5) -> None:
        """docker stop."""
        with engine_errors("stopping the sandbox"):
            self.api.stop(container_id, timeout=int(timeout))

    def remove(self, container_id: str, *, purge_volumes: bool = False) -> None:
        """Remove the container, the agentbox-created networks it was the last user of, its socket and key
        directories, and (with ``purge_volumes``, used when a start fails) the named volumes agentbox
        created for it."""
        from docker.errors import NotFound

        self._foreign.discard(container_id)
        self._key_dirs.pop(container_id, None)
        late = self._late_networks.pop(container_id, ())
        try:
            attrs = self._inspect(container_id)
        except SandboxNotFoundError:
            return
        networks = list(((attrs.get("NetworkSettings") or {}).get("Networks") or {}).keys())
        # A sandbox removed before it joined its networks (see start) holds no endpoint on them: its
        # network mode still names the first, which may have been made for it.
        mode = str((attrs.get("HostConfig") or {}).get("NetworkMode") or "")
        for name in (*late, mode):
            if name and name not in networks and name not in ("default", "bridge", "host", "none"):
                networks.append(name)
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        sandbox_id = labels.get(LABELS.SANDBOX)
        with engine_errors("removing the sandbox container"), contextlib.suppress(NotFound):
            self.api.remove_container(container_id, force=True, v=True)
        if sandbox_id and labels.get(LABEL_GATEWAY):
            # The gateway joined the sandbox's networks in its stead: a network made for the sandbox goes too.
            networks += self.egress.teardown(sandbox_id)
        for name in networks:
            self.networks.release(name)
        # After the container: its server can no longer create the socket again meanwhile.
        self.sockets.remove(labels.get(LABELS.SOCKET_DIR), sandbox_id)
        if self.keys is not None and labels.get(LABELS.KEY_DIR):
            self.keys.remove(labels.get(LABELS.KEY_DIR), sandbox_id)
        if purge_volumes and sandbox_id:
            remove_volumes(self.api, volumes_created_for(self.api, sandbox_id))

    def logs(self, container_id: str, *, tail: int | None = None) -> str:
        """The container's stdout and stderr."""
        with engine_errors("reading the sandbox's log"):
            data = self.api.logs(container_id, stdout=True, stderr=True, tail="all" if tail is None else tail)
        text = bytes(data).decode("utf-8", errors="replace")
        if tail is None:
            # A policy sandbox's refusals are logged by its gateway: they belong to the sandbox's log.
            labels = (self._inspect(container_id).get("Config") or {}).get("Labels") or {}
            gateway = self.egress.logs(labels)
            if gateway:
                text += f"--- egress gateway {labels.get(LABEL_GATEWAY)} ---\n{gateway}"
        return text

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
                ep = self._endpoint(placement_of(summary), labels)
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

    def list(
        self, *, owner_host: str | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[SandboxInfo]:
        """Every agentbox sandbox container (running or not), oldest first; optionally only those owned
        from ``owner_host`` and carrying all of ``labels``."""
        wanted = [LABELS.SANDBOX]
        if owner_host is not None:
            wanted.append(f"{LABELS.OWNER_HOST}={owner_host}")
        wanted += [f"{k}={v}" for k, v in (labels or {}).items()]
        with engine_errors("listing sandboxes"):
            found = self.api.containers(all=True, filters={"label": wanted})
        infos = [self._info(s) for s in found]
        return sorted(infos, key=lambda i: (i.created or datetime.min.replace(tzinfo=timezone.utc), i.id))

    def present_ids(self) -> set[str | None]:
        """Ids of every sandbox that has a container on the engine."""
        with engine_errors("listing sandboxes"):
            found = self.api.containers(all=True, filters={"label": LABELS.SANDBOX})
        return {(s.get("Labels") or {}).get(LABELS.SANDBOX) for s in found}

    def find(self, sandbox_id: str) -> SandboxInfo:
        """The sandbox with this id (or full/short container id, or container name)."""
        with engine_errors("looking up the sandbox"):
            found = self.api.containers(all=True, filters={"label": f"{LABELS.SANDBOX}={sandbox_id}"})
            if not found and sandbox_id:
                # Also accept what `docker ps` shows: a container id (prefix) or name.
                found = [
                    s for s in self.api.containers(all=True, filters={"label": LABELS.SANDBOX})
                    if (len(sandbox_id) >= 4 and str(s.get("Id", "")).startswith(sandbox_id))
                    or sandbox_id in [str(n).lstrip("/") for n in s.get("Names") or []]
                ]
        if not found:
            raise SandboxNotFoundError(f"no sandbox {sandbox_id!r} on this engine (list them with `agentbox ls`)")
        if len(found) > 1:
            raise SandboxNotFoundError(f"{sandbox_id!r} matches several sandboxes; give the full id")
        return self._info(found[0])

    def reap(self, *, dry_run: bool = False, labels: Mapping[str, str] | None = None) -> builtins.list[str]:
        """Remove sandboxes whose owner is gone (keep-alive ones are kept), only those carrying all of
        ``labels`` if given; returns their ids. See :mod:`agentbox.backends.docker.reaping`."""
        return reaping.reap(self, dry_run=dry_run, labels=labels)

