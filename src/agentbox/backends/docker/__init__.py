"""Sandboxes as containers on a Docker engine, split by job:

============  ====================================================================================
module        job
============  ====================================================================================
backend       :class:`DockerBackend`, composing the others behind :class:`~agentbox.backends.base.Backend`
errors        engine error translation (the messages with a better agentbox error and fix)
networks      network name resolution (Compose prefixes), shared networks, the manager's control network
endpoints     how this process reaches a server: a pure choice from a normalised placement
lifecycle     the create call, secrets put before start, the ready-line watcher, start failures
sockets       per-sandbox socket directories (network-less sandboxes; local-only servers)
volumes       named volumes created for a sandbox
reaping       orphans of dead owners and what they left behind
once          per-key single flight (one image build, however many creates wait for it)
============  ====================================================================================

Reaching the server: with ``runtime_binding_address`` unset on an engine that shares this host's files,
over a Unix socket in a private host directory (nothing published); otherwise the server's port is
published on ``runtime_binding_address`` (unset: 127.0.0.1) with a host port Docker picks, read back
after start. When agentbox itself runs in a
container, a published loopback port is out of reach, so the manager container and its sandboxes share
an internal control network ``agentbox-ctl-<manager>`` and the sandbox is reached at its IP there.
"""

from __future__ import annotations

from agentbox.backends.docker.backend import DockerBackend
from agentbox.backends.docker.networks import COMPOSE_NETWORK_LABEL, NetworkRef, resolve_network_name

__all__ = ["COMPOSE_NETWORK_LABEL", "DockerBackend", "NetworkRef", "default_backend", "resolve_network_name"]


def default_backend() -> DockerBackend:
    """The process-wide Docker backend (see :func:`agentbox.backends.get_backend`)."""
    from agentbox.backends import get_backend

    backend = get_backend("docker")
    assert isinstance(backend, DockerBackend)
    return backend
