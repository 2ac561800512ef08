"""Which host paths a bind mount would expose, judged by what they resolve to, not how they are spelt.

A bind mount hands the sandbox everything under its host path. Mounting the Docker engine's socket, or
any directory above it (``/run``, ``/var/run``, ``/``), or a symlink to either, lets the sandbox drive the
engine, which is root on the host. :func:`check_bind_mounts` refuses such mounts by comparing each
mount's *resolved* host path (``os.path.realpath``, every symlink followed) and its inode with every
socket the engine may listen on and every directory above those sockets.

The comparison happens on this machine's file system. With a remote engine (``DOCKER_HOST=tcp://...``
or ``ssh://``) the engine's host may differ; the spelled paths are still compared, which catches the
usual ways of writing them.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agentbox.errors import VolumeSpecError
from agentbox.volumes import Mount

__all__ = [
    "ENGINE_SOCKETS",
    "SOCKET_NAMES",
    "EngineSocketExposure",
    "check_bind_mounts",
    "engine_sockets",
    "exposed_socket",
]

#: Where container engines listen on a Linux host. containerd's socket is root on the host just as
#: Docker's is (it creates and runs containers); dockerd 20.10 starts its own containerd under
#: /run/docker/containerd unless a system containerd runs.
ENGINE_SOCKETS: tuple[str, ...] = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/var/run/docker/containerd/containerd.sock",
    "/run/docker/containerd/containerd.sock",
)


#: Socket names refused wherever they are (rootless Docker, Docker Desktop, a copy in a project dir).
SOCKET_NAMES = ("docker.sock", "containerd.sock")


def engine_sockets(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Every path of an engine socket on this host: :data:`ENGINE_SOCKETS`, the path of a ``unix://``
    ``DOCKER_HOST``, rootless Docker's ``$XDG_RUNTIME_DIR/docker.sock``, and what each of those resolves
    to (``/var/run`` is a symlink to ``/run`` on Debian), without duplicates."""
    env = os.environ if environ is None else environ
    candidates = list(ENGINE_SOCKETS)
    docker_host = env.get("DOCKER_HOST", "")
    if docker_host.startswith("unix://"):
        candidates.append(docker_host[len("unix://") :])
    if env.get("XDG_RUNTIME_DIR"):
        candidates.append(posixpath.join(env["XDG_RUNTIME_DIR"], "docker.sock"))
    paths: dict[str, None] = {}
    for path in candidates:
        if not path.startswith("/"):
            continue
        paths[posixpath.normpath(path)] = None
        paths[os.path.realpath(path)] = None
    return tuple(paths)


def _is_within(path: str, ancestor: str) -> bool:
    """``path`` is ``ancestor`` or lies below it (both absolute and normalised)."""
    if ancestor == "/":
        return True
    return path == ancestor or path.startswith(ancestor + "/")


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _ancestors(path: str) -> list[str]:
    """``path`` and every directory above it, up to ``/``."""
    found = [path]
    while path != "/":
        path = posixpath.dirname(path)
        found.append(path)
    return found


@dataclass(frozen=True)
class EngineSocketExposure:
    """A host path that gives access to an engine socket."""

    source: str
    """The host path as given."""
    resolved: str
    """What it resolves to on this host."""
    socket: str
    """The engine socket it exposes."""
    is_socket: bool
    """True when the path is the socket itself (or a link to it), False when it is a directory above it."""


def exposed_socket(source: str, sockets: Iterable[str] | None = None) -> EngineSocketExposure | None:
    """The engine socket that bind-mounting host path ``source`` would expose, or None.

    ``source`` exposes a socket when it, or what it resolves to, is that socket or a directory above it
    — by path or by inode, so a hard link to the socket or a bind-mounted alias of ``/run`` counts too.
    ``sockets`` defaults to :func:`engine_sockets`.
    """
    if not source.startswith("/"):
        return None  # a Windows drive path: resolved by Docker Desktop, not on this file system
    socket_paths = tuple(engine_sockets() if sockets is None else sockets)
    spelled = posixpath.normpath(source)
    resolved = os.path.realpath(source)
    for candidate in (spelled, resolved):
        if posixpath.basename(candidate) in SOCKET_NAMES:
            return EngineSocketExposure(source, resolved, candidate, is_socket=True)
    for sock in socket_paths:
        for candidate in (spelled, resolved):
            if _is_within(sock, candidate):
                return EngineSocketExposure(source, resolved, sock, is_socket=sock == candidate)
    # The same file or directory under another name (a hard link, a bind mount made on the host).
    identity = _identity(resolved)
    if identity is not None:
        for sock in socket_paths:
            real = os.path.realpath(sock)
            for ancestor in _ancestors(real):
                if _identity(ancestor) == identity:
                    return EngineSocketExposure(source, resolved, sock, is_socket=ancestor == real)
    return None


def check_bind_mounts(mounts: Iterable[Mount], *, sockets: Iterable[str] | None = None) -> None:
    """Raise VolumeSpecError for the first bind mount that exposes an engine socket.

    The message names the mount, the socket and how to proceed. Named volumes are not host paths and
    pass.
    """
    socket_paths = tuple(engine_sockets() if sockets is None else sockets)
    for mount in mounts:
        if mount.kind != "bind":
            continue
        exposure = exposed_socket(mount.source, socket_paths)
        if exposure is None:
            continue
        how = "is" if exposure.is_socket else "contains"
        what = "containerd's socket" if exposure.socket.endswith("containerd.sock") else "the Docker socket"
        resolved = ""
        if exposure.resolved != posixpath.normpath(mount.source):
            resolved = f" (resolves to {exposure.resolved})"
        root = (
            " Mounting '/' hands the sandbox the host's whole file system, engine sockets included; mount "
            "only the directories the agent needs."
            if exposure.resolved == "/"
            else ""
        )
        raise VolumeSpecError(
            f"volume {mount.spec()!r}: the host path {mount.source!r}{resolved} {how} {what} "
            f"{exposure.socket}, which gives the sandbox root on the host.{root} Remove the mount, or "
            "pass allow_docker_socket=True to Sandbox if you really mean to hand the sandbox the engine"
        )
