"""Host directories holding the Unix socket of a network-less sandbox's server (``network="none"``).

One directory per sandbox, ``<sockets>/<sandbox id>``, mode 0700, bind-mounted at
:data:`~agentbox.backends.spec.SOCKET_MOUNT` and named by the container's ``agentbox.socket-dir`` label;
it goes with its sandbox. Labels can be written by anyone with engine access, so a directory is only
ever removed when it looks exactly like one agentbox made for that very sandbox.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from collections.abc import Container
from dataclasses import replace
from pathlib import Path

from agentbox.backends.labels import LABELS
from agentbox.backends.spec import SOCKET_NAME, ContainerSpec, unix_socket_spec
from agentbox.errors import ConfigError, SandboxError

__all__ = ["MAX_SOCKET_PATH", "SOCKET_DIR_GRACE", "SocketDirs"]

log = logging.getLogger("agentbox.backends.docker")

SANDBOX_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")
#: sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
#: Seconds a socket directory without a container is left alone by reap (its sandbox may be being created).
SOCKET_DIR_GRACE = 60.0


class SocketDirs:
    """The per-sandbox socket directories under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sandbox_id: str) -> Path:
        """The directory of ``sandbox_id`` (not created)."""
        if not SANDBOX_ID.match(sandbox_id):
            raise SandboxError(f"invalid sandbox id {sandbox_id!r}")
        return self.root / sandbox_id

    def place(self, spec: ContainerSpec, sandbox_id: str) -> ContainerSpec:
        """``spec`` without a network, its server on a socket in a fresh directory for ``sandbox_id``."""
        directory = self.path(sandbox_id)
        if len(os.fsencode(directory / SOCKET_NAME)) > MAX_SOCKET_PATH:
            raise ConfigError(
                f'network="none" needs a Unix socket path of at most {MAX_SOCKET_PATH} bytes, and '
                f"{directory / SOCKET_NAME} is longer; set XDG_RUNTIME_DIR (or XDG_STATE_HOME) to a shorter path"
            )
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.mkdir(mode=0o700, exist_ok=True)
        uid = spec.user_id if spec.user_id is not None else os.geteuid()
        if uid != os.geteuid():
            # The server runs as the sandbox uid and must create its socket here. Only root can hand
            # the directory over; anyone else gets a clear error instead of a server that cannot bind.
            try:
                os.chown(directory, uid, -1)
            except PermissionError:
                self.remove(str(directory), sandbox_id)
                raise ConfigError(
                    f'network="none": the sandbox runs as uid {uid}, which cannot create its server socket in '
                    f"{directory} (owned by uid {os.geteuid()}); use user_id={os.geteuid()} or run as root"
                ) from None
        labels = tuple(sorted({**spec.label_map, LABELS.SOCKET_DIR: str(directory)}.items()))
        return replace(unix_socket_spec(spec, str(directory)), labels=labels)

    def remove(self, directory: str | None, sandbox_id: str | None) -> None:
        """Remove a sandbox's socket directory, named by its label, if it looks like one agentbox made for
        that very sandbox (``.../agentbox/sockets/<id>``); anything else is left alone with a warning."""
        if not directory or not sandbox_id:
            return
        path = Path(directory)
        if not (
            path.is_absolute() and path.name == sandbox_id and SANDBOX_ID.match(sandbox_id)
            and path.parent.name == "sockets" and path.parent.parent.name == "agentbox"
        ):
            log.warning("not removing %s: it does not look like the socket directory of sandbox %s", path, sandbox_id)
            return
        # The sandbox user could write anything into its socket directory: remove the tree (rmtree does
        # not follow symlinks).
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path)

    def candidates(self) -> list[Path]:
        """The directories under ``root`` that look like sandbox socket directories."""
        try:
            return [p for p in self.root.iterdir() if p.is_dir() and SANDBOX_ID.match(p.name)]
        except OSError:
            return []

    def sweep(self, entries: list[Path], present: Container[str | None]) -> None:
        """Remove those of ``entries`` whose sandbox is not ``present`` (e.g. after a crash between create
        and cleanup, or a container removed with ``docker rm``), once they are older than the grace time."""
        # A directory is made just before its container: a young one may belong to a sandbox being
        # created right now, whose container the listing could not show yet.
        settled = time.time() - SOCKET_DIR_GRACE
        for path in entries:
            if path.name not in present:
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < settled:
                        self.remove(str(path), path.name)
