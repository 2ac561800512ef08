"""The small interface every place a sandbox can run implements, and the values it hands back.

A backend knows *where* sandboxes live (a Docker engine today, a cluster later); it knows nothing about
what runs inside them. :class:`agentbox.sandbox.Sandbox` drives it::

    spec = spec_from_config(...)            # pure, see backends/spec.py
    cid = backend.create(spec)              # container created, networks joined, not started
    endpoint = backend.start(cid, files)    # secrets handed over, started, server ready
    ... backend.pause/resume/stop/logs ...
    backend.remove(cid)                     # container and whatever agentbox created for it

and a watcher (the control plane) follows what happens to sandboxes behind its back::

    with backend.events({"agentbox.service": "..."}) as events:   # see backends/events.py
        for event in events: ...            # die, oom, destroy, start, pause, unpause, lost
"""

from __future__ import annotations

import abc
import builtins
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from agentbox.backends.events import EventStream, PolledEvents
from agentbox.backends.spec import ContainerSpec

if TYPE_CHECKING:
    from agentbox.backends.state import StateStore
    from agentbox.config import SandboxConfig

__all__ = ["Backend", "Endpoint", "Progress", "SandboxInfo", "SandboxState"]

#: Receives one human-readable line per step of a long operation (an image build, a pull).
Progress = Callable[[str], None]


class SandboxState(str, enum.Enum):
    """Where a sandbox is in its life; a handle's state, or a container's as seen by the engine."""

    NEW = "new"
    """Configured, nothing created yet (or created but never started)."""
    STARTING = "starting"
    """Being created and started; its server is not ready yet."""
    RUNNING = "running"
    """Started and its server answered."""
    PAUSED = "paused"
    """Frozen with ``docker pause``: processes and shell state survive ``resume``."""
    STOPPED = "stopped"
    """The container exited or was stopped; ``start`` runs it again."""
    REMOVED = "removed"
    """The container and what agentbox created for it are gone."""
    CLOSED = "closed"
    """The handle let go and left the sandbox as it was (``detach()``, or ``close()`` with keep-alive)."""
    LOST = "lost"
    """Its node is down (Swarm): not restarted elsewhere; removing it removes its stale copy later."""


@dataclass(frozen=True)
class Endpoint:
    """How this process reaches a sandbox's runtime server."""

    url: str
    """Base URL of the runtime server, e.g. ``http://127.0.0.1:32768`` (``http://sandbox`` over ``uds``)."""
    via: Literal["published", "network", "host", "unix", "service"]
    """``published``: a host port Docker published; ``network``: the sandbox's IP on a Docker network
    shared with this (containerised) process; ``host``: the host network namespace; ``unix``: a Unix
    socket in a host directory mounted into the sandbox (``uds``): one without network, or one whose
    server need only be reachable from this host."""
    uds: str | None = None
    """Host path of the server's Unix domain socket (``via="unix"``); None over TCP."""


@dataclass(frozen=True)
class SandboxInfo:
    """One sandbox as found on the engine (by label)."""

    id: str
    """The agentbox sandbox id."""
    container_id: str
    """Full Docker container id."""
    container_name: str
    """Docker container name."""
    image: str
    """Image the container runs."""
    state: SandboxState
    """Container state mapped onto the sandbox states."""
    created: datetime | None
    """When agentbox created it (UTC)."""
    owner_pid: int | None
    """Process that owns it (the one that started it, or the last to reattach), on ``owner_host``."""
    owner_host: str
    """Host name of the owner process."""
    url: str | None
    """Runtime server URL from this process, when it is running and reachable (``unix:PATH`` for a
    sandbox without network, reached over that socket)."""
    keep_alive: bool = False
    """Started with ``keep_runtime_alive``: kept when its handle closes, and never reaped."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """All container labels."""
    node: str | None = None
    """Hostname of the node it runs (or last ran) on, for a backend with several (Swarm); else None."""
    reason: str | None = None
    """Why it is in its state, when that needs saying (``lost``: which node went down, what it means)."""


class Backend(abc.ABC):
    """Creates, starts and manages sandbox containers somewhere.

    Callers (:class:`~agentbox.sandbox.Sandbox`, the control plane) see only this interface; which
    implementation they get is decided in one place, :func:`agentbox.backends.get_backend`.
    """

    #: The configuration value that selects this backend (``backend = "docker"``).
    name: str = ""

    @property
    @abc.abstractmethod
    def store(self) -> StateStore:
        """Where this backend's owners keep the session keys of the sandboxes they started."""

    @abc.abstractmethod
    def resolve_image(self, config: SandboxConfig, progress: Progress | None = None, *, refresh: bool = False) -> str:
        """The runtime image to run for ``config``, built if missing and ready wherever sandboxes may be
        placed. ``refresh``: forget a cached answer (the image was removed meanwhile)."""

    @abc.abstractmethod
    def create(self, spec: ContainerSpec) -> str:
        """Create the container (not started) with all its networks; returns its id.

        On failure nothing is left behind.
        """

    @abc.abstractmethod
    def start(
        self, container_id: str, files: Mapping[str, tuple[bytes, int]], *, timeout: float, restart: bool = False
    ) -> Endpoint:
        """Hand ``files`` (name -> (content, mode)) to the container's /run/agentbox, start it, and wait
        until its runtime server is ready; returns how to reach it. ``restart``: it ran before (or it was
        restarted behind agentbox's back and waits for its key: then it is not started again, only given
        the files and followed to its next ready line). Does not remove on failure."""

    @abc.abstractmethod
    def endpoint(self, container_id: str) -> Endpoint:
        """How to reach the (running) container's server now."""

    @abc.abstractmethod
    def find(self, sandbox_id: str) -> SandboxInfo:
        """The sandbox with this id (or container id/name); raises SandboxNotFoundError."""

    @abc.abstractmethod
    def list(
        self, *, owner_host: str | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[SandboxInfo]:
        """Every agentbox sandbox on the engine, optionally only those owned from ``owner_host`` and
        carrying all of ``labels``."""

    @abc.abstractmethod
    def pause(self, container_id: str) -> None:
        """Freeze every process of the sandbox."""

    @abc.abstractmethod
    def resume(self, container_id: str) -> None:
        """Thaw a paused sandbox."""

    @abc.abstractmethod
    def stop(self, container_id: str, *, timeout: float = 5) -> None:
        """Stop the container (SIGTERM, then SIGKILL after ``timeout``)."""

    @abc.abstractmethod
    def remove(self, container_id: str, *, purge_volumes: bool = False) -> None:
        """Remove the container and the agentbox-created resources it was the last user of (idempotent).

        ``purge_volumes``: also the named volumes agentbox created for it (used when a start fails)."""

    @abc.abstractmethod
    def logs(self, container_id: str, *, tail: int | None = None) -> str:
        """The container's output (the runtime server's log), the last ``tail`` lines if given."""

    @abc.abstractmethod
    def reap(self, *, dry_run: bool = False, labels: Mapping[str, str] | None = None) -> builtins.list[str]:
        """Remove sandboxes of this host whose owner process is gone; returns their ids. ``labels``: only
        sandboxes carrying all of them (a caller reaping what it made, never other processes' orphans)."""

    def events(self, labels: Mapping[str, str]) -> EventStream:
        """What happens from now on to the sandboxes carrying all of ``labels`` (died, removed, paused,
        lost with their node...), as a stream of :class:`~agentbox.backends.events.BackendEvent` that ends
        when closed (from any thread).

        This default serves a backend whose engine has no event stream: it lists the sandboxes every
        :data:`~agentbox.backends.events.POLL_INTERVAL` seconds and reports what changed between two
        looks. A backend with engine events overrides it to report them as they happen."""
        return PolledEvents(lambda: self.list(labels=labels))

    @abc.abstractmethod
    def close(self) -> None:
        """Release the backend's connections."""
