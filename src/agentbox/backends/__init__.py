"""Where sandboxes run: one small interface (:mod:`~agentbox.backends.base`), a frozen container spec with
the pure function that turns it into engine arguments (:mod:`~agentbox.backends.spec`), one module
per engine (:mod:`~agentbox.backends.docker`, :mod:`~agentbox.backends.swarm`), and the client side of a
control plane (:mod:`~agentbox.backends.service`: ``Sandbox(server=..., token=...)``)."""

from __future__ import annotations

import atexit
import contextlib
import threading
from typing import TYPE_CHECKING

from agentbox.backends.base import Backend, Endpoint, Progress, SandboxInfo, SandboxState
from agentbox.backends.spec import ContainerSpec, spec_from_config, to_docker_args
from agentbox.errors import ConfigError

if TYPE_CHECKING:
    from agentbox.backends.service import ServiceBackend

__all__ = [
    "BACKENDS",
    "Backend",
    "ContainerSpec",
    "Endpoint",
    "Progress",
    "SandboxInfo",
    "SandboxState",
    "get_backend",
    "get_service_backend",
    "spec_from_config",
    "to_docker_args",
]

#: Every value the ``backend`` configuration key accepts.
BACKENDS: tuple[str, ...] = ("docker", "swarm")

_instances: dict[str, Backend] = {}
_lock = threading.Lock()


def get_backend(name: str = "docker") -> Backend:
    """The process-wide backend called ``name`` (one engine client, shared network and image caches).

    The one place that maps the ``backend`` configuration key to an implementation.
    """
    with _lock:
        backend = _instances.get(name)
        if backend is None:
            if name == "docker":
                from agentbox.backends.docker import DockerBackend

                backend = DockerBackend()
            elif name == "swarm":
                from agentbox.backends.swarm import SwarmBackend

                backend = SwarmBackend()
            else:
                raise ConfigError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
            _instances[name] = backend
        return backend


_services: dict[tuple[str, str], ServiceBackend] = {}


def get_service_backend(server: str, token: str) -> ServiceBackend:
    """The process-wide backend of the agentbox service at ``server`` as ``token`` (one connection pool)."""
    from agentbox.backends.service import ServiceBackend

    key = (server.rstrip("/"), token)
    with _lock:
        backend = _services.get(key)
        if backend is None:
            backend = _services[key] = ServiceBackend(server, token)
        return backend


@atexit.register
def _close_all() -> None:
    """The process-wide backends live as long as the process: their connections are closed at its exit,
    not left to the interpreter's teardown (where each open socket is a ResourceWarning)."""
    with _lock:
        backends: list[Backend] = [*_instances.values(), *_services.values()]
        _instances.clear()
        _services.clear()
    for backend in backends:
        with contextlib.suppress(Exception):  # exiting anyway: a backend that fails to close changes nothing
            backend.close()
