"""How this process reaches a sandbox's runtime server: a pure choice from how the container is attached.

:func:`placement_of` normalises what the engine says about a container (a full inspect or a list
summary: the two shapes differ) into a :class:`Placement`; :func:`choose_endpoint` picks the way in from
that placement and what is known about this process (whether it runs in a container of the same engine,
and on which control network). Neither touches the engine, so both are unit-tested with plain data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentbox.backends.base import Endpoint
from agentbox.backends.labels import LABELS
from agentbox.backends.spec import FOREIGN_SERVER_LABEL, NONE_NETWORK, SERVER_PORT, SOCKET_NAME
from agentbox.errors import SandboxError

__all__ = ["UDS_BASE_URL", "Placement", "choose_endpoint", "placement_of", "url"]

#: Base URL of a server reached over a Unix socket: only the path part of a request URL matters there.
UDS_BASE_URL = "http://sandbox"


@dataclass(frozen=True)
class Placement:
    """How a container is attached, normalised from an inspect or a list summary."""

    network_mode: str
    """``HostConfig.NetworkMode``: ``host``, ``none``, ``default``/a network name (bridged)."""
    published: Sequence[tuple[str, int, int]]
    """Published ports: (host ip, host port, container port)."""
    addresses: Mapping[str, str]
    """Network name -> the container's IP address on it."""
    server_port: int = SERVER_PORT
    """Port of the runtime server inside (from the ``agentbox.server-port`` label)."""
    socket_dir: str | None = None
    """Host directory of the server's Unix socket (``network="none"``, a local-only server), from its label."""
    foreign_server: bool = False
    """The image runs its own server, reached on the sandbox's network (never published)."""


def _int(value: object) -> int | None:
    try:
        return int(str(value)) if value is not None else None
    except ValueError:
        return None


def placement_of(container: Mapping[str, Any]) -> Placement:
    """The placement of a container, from ``inspect_container`` or one entry of ``containers()``.

    The two differ in where labels and ports live: an inspect has ``Config.Labels`` and ``Ports`` as
    ``{"49983/tcp": [{"HostIp", "HostPort"}]}``; a summary has ``Labels`` and ``Ports`` as a list of
    ``{"IP", "PrivatePort", "PublicPort"}``.
    """
    settings = container.get("NetworkSettings") or {}
    published: list[tuple[str, int, int]] = []
    if "Config" in container:  # an inspect
        labels = (container.get("Config") or {}).get("Labels") or {}
        for key, bindings in (settings.get("Ports") or {}).items():
            port = _int(str(key).partition("/")[0])
            for binding in bindings or []:
                host_port = _int(binding.get("HostPort"))
                if port is not None and host_port is not None:
                    published.append((str(binding.get("HostIp", "")), host_port, port))
    else:  # a list summary
        labels = container.get("Labels") or {}
        for entry in container.get("Ports") or []:
            host_port, port = _int(entry.get("PublicPort")), _int(entry.get("PrivatePort"))
            if host_port is not None and port is not None:
                published.append((str(entry.get("IP", "")), host_port, port))
    addresses = {
        str(name): str(net.get("IPAddress"))
        for name, net in (settings.get("Networks") or {}).items()
        if net and net.get("IPAddress")
    }
    return Placement(
        network_mode=str((container.get("HostConfig") or {}).get("NetworkMode", "")),
        published=published,
        addresses=addresses,
        server_port=_int(labels.get(LABELS.SERVER_PORT)) or SERVER_PORT,
        socket_dir=labels.get(LABELS.SOCKET_DIR) or None,
        foreign_server=labels.get(FOREIGN_SERVER_LABEL) == "1",
    )


def url(host: str, port: int | str) -> str:
    """``http://host:port``, with wildcard addresses made connectable and IPv6 bracketed."""
    host = host.strip("[]")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def choose_endpoint(
    placement: Placement,
    *,
    control_network: str | None = None,
    ready: tuple[str, int] | None = None,
    recorded_url: str | None = None,
) -> Endpoint:
    """How to reach the server of a container attached as ``placement``.

    ``control_network``: the internal network this process shares with its sandboxes when it runs in a
    container itself (a published loopback port is out of its reach then). ``ready``: (host, port) from
    the server's ready line, the only source of a host-network sandbox's port; ``recorded_url``: what
    the owner recorded for it, when the ready line is gone (reattach).
    """
    if placement.socket_dir:
        return Endpoint(UDS_BASE_URL, "unix", uds=os.path.join(placement.socket_dir, SOCKET_NAME))
    if placement.network_mode == "host":
        if ready is not None:
            return Endpoint(url(ready[0] or "127.0.0.1", ready[1]), "host")
        if recorded_url:
            return Endpoint(recorded_url, "host")
        raise SandboxError("cannot tell the server port of a host-network sandbox without its state file")
    if control_network is not None and control_network in placement.addresses:
        return Endpoint(url(placement.addresses[control_network], placement.server_port), "network")
    for host_ip, host_port, container_port in placement.published:
        if container_port == placement.server_port:
            return Endpoint(url(host_ip, host_port), "published")
    if NONE_NETWORK in placement.addresses:
        # Internal networks publish nothing; the host reaches the sandbox on the bridge itself.
        return Endpoint(url(placement.addresses[NONE_NETWORK], placement.server_port), "network")
    if placement.foreign_server and placement.addresses:
        # An image's own server publishes nothing either (no host port to guard): the host routes to
        # the bridge networks of its local engine, so the sandbox's address on its first network works.
        return Endpoint(url(next(iter(placement.addresses.values())), placement.server_port), "network")
    raise SandboxError("the sandbox's server port is not published and no shared network reaches it from here")
