"""The label vocabulary agentbox puts on what it creates, shared by every backend.

Labels, not names: listing, ownership and cleanup go by these keys, whatever the engine. The
``agentbox.`` namespace is reserved: a caller's own labels may not use it (:func:`check_user_labels`),
or a user could forge an owner, a keep-alive flag or a socket directory that cleanup then trusts.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentbox.errors import ConfigError

__all__ = ["IDENTITY_LABELS", "LABELS", "PREFIX", "check_user_labels"]

#: Every key agentbox writes starts with this; callers' own labels must not.
PREFIX = "agentbox."


class LABELS:
    """Label keys agentbox puts on what it creates."""

    SANDBOX = "agentbox.sandbox"
    """The sandbox id (on its container, or task/service)."""
    OWNER_PID = "agentbox.owner-pid"
    """The pid of the process that started it, on ``OWNER_HOST``."""
    OWNER_HOST = "agentbox.owner-host"
    """Host name of that process."""
    CREATED = "agentbox.created"
    """ISO 8601 UTC time of creation."""
    VERSION = "agentbox.version"
    """agentbox version that created it."""
    KEEP_ALIVE = "agentbox.keep-alive"
    """``1``: kept when its handle closes, never reaped."""
    SERVER_PORT = "agentbox.server-port"
    """Port of the runtime server inside the sandbox."""
    MANAGED = "agentbox.managed"
    """``1`` on networks and volumes agentbox created."""
    ROLE = "agentbox.role"
    """What an agentbox network is for (default, none, named, control)."""
    CREATED_FOR = "agentbox.created-for"
    """The sandbox a network or volume was created for."""
    MANAGER = "agentbox.manager"
    """Container id of the agentbox process that owns the sandbox, when that process runs in a container."""
    SOCKET_DIR = "agentbox.socket-dir"
    """Host directory of the server's Unix socket (``network="none"``)."""
    KEY_DIR = "agentbox.key-dir"
    """Host directory mounted as the sandbox's /run/agentbox (a local engine's session-key handover)."""
    SERVICE = "agentbox.service"
    """The control plane (``agentbox serve``) that owns the sandbox."""
    SERVICE_POOL = "agentbox.service-pool"
    """The control plane's warm pool a sandbox waits in."""
    EGRESS_FOR = "agentbox.egress-for"
    """The sandbox an egress gateway, relay or policy network serves."""
    EGRESS_GATEWAY = "agentbox.egress-gateway"
    """On a sandbox: the container of its egress gateway."""


#: Labels that say who a sandbox is and who owns it: set by agentbox only, never copied onto the networks
#: and volumes made for a sandbox.
IDENTITY_LABELS = frozenset(
    {
        LABELS.SANDBOX,
        LABELS.OWNER_PID,
        LABELS.OWNER_HOST,
        LABELS.CREATED,
        LABELS.VERSION,
        LABELS.KEEP_ALIVE,
        LABELS.SERVER_PORT,
        LABELS.SOCKET_DIR,
        LABELS.KEY_DIR,
        LABELS.MANAGER,
        LABELS.SERVICE,
        LABELS.SERVICE_POOL,
        LABELS.EGRESS_GATEWAY,
    }
)


def check_user_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """A caller's extra labels, refused when one is in agentbox's reserved namespace.

    ``agentbox.test`` style keys are allowed for callers' own bookkeeping only when they are not one of
    agentbox's own keys; everything else under ``agentbox.`` is agentbox's.
    """
    out = dict(labels or {})
    for key, value in out.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(f"label {key!r}={value!r}: labels are strings")
    own = {v for k, v in vars(LABELS).items() if k.isupper()}
    reserved = sorted(k for k in out if k in own)
    if reserved:
        raise ConfigError(f"labels {', '.join(reserved)} are set by agentbox itself; choose other keys")
    return out
