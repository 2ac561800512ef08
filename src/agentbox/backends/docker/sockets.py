"""Host directories holding the Unix socket of a sandbox's server: a network-less sandbox's
(``network="none"``), and on a local engine any sandbox whose server need only be reachable from this host
(``runtime_binding_address`` unset), which then publishes no port at all.

One directory per sandbox, ``<sockets>/<sandbox id>``, mode 0700, bind-mounted at
:data:`~agentbox.backends.spec.SOCKET_MOUNT` and named by the container's ``agentbox.socket-dir`` label;
it goes with its sandbox (see :mod:`.hostdirs` for how such directories are made, checked and swept).
"""

from __future__ import annotations

import os
from dataclasses import replace

from agentbox.backends.docker.hostdirs import SandboxDirs
from agentbox.backends.labels import LABELS
from agentbox.backends.spec import SOCKET_NAME, ContainerSpec, unix_socket_spec
from agentbox.errors import ConfigError

__all__ = ["MAX_SOCKET_PATH", "SocketDirs"]

#: sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


class SocketDirs(SandboxDirs):
    """The per-sandbox socket directories under ``root``."""

    kind = "sockets"

    def fits(self, sandbox_id: str) -> bool:
        """True when the socket path of ``sandbox_id`` fits in a socket address."""
        return len(os.fsencode(self.path(sandbox_id) / SOCKET_NAME)) <= MAX_SOCKET_PATH

    def place(self, spec: ContainerSpec, sandbox_id: str, *, keep_network: bool = False) -> ContainerSpec:
        """``spec`` with its server on a socket in a fresh directory for ``sandbox_id``; without
        ``keep_network``, also without a network."""
        directory = self.path(sandbox_id)
        if not self.fits(sandbox_id):
            raise ConfigError(
                f'network="none" needs a Unix socket path of at most {MAX_SOCKET_PATH} bytes, and '
                f"{directory / SOCKET_NAME} is longer; set XDG_RUNTIME_DIR (or XDG_STATE_HOME) to a shorter path"
            )
        self.make(sandbox_id)
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
        return replace(unix_socket_spec(spec, str(directory), keep_network=keep_network), labels=labels)
