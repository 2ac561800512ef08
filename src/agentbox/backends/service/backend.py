"""A backend that is a control plane (``agentbox serve``): sandboxes made and managed through its REST API.

The service, not this process, assembles containers, builds images and holds the session keys; a client
holds only a bearer token. So of the :class:`~agentbox.backends.base.Backend` interface this backend
implements what a client may do (find, list, pause, resume, stop, remove, logs, the endpoint; events are
the interface's default, a periodic look at the list), and the
container-level steps that only the service performs (``resolve_image``, ``create(spec)``, ``start``,
``reap``, ``store``) raise a :class:`~agentbox.errors.ConfigError` saying so. A sandbox is made with
:meth:`ServiceBackend.create_sandbox` from a configuration instead, and its runtime server is reached
through the service's proxy, ``<server>/v1/sandboxes/<id>/runtime``, with the token.

On this side of the API a sandbox's "container id" is its sandbox id: clients never see containers.
"""

from __future__ import annotations

import builtins
import contextlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

from agentbox.backends.base import Backend, Endpoint, Progress, SandboxInfo, SandboxState
from agentbox.backends.service.api import ServiceApi
from agentbox.config import FIELDS, SandboxConfig
from agentbox.errors import ConfigError, SandboxNotFoundError

if TYPE_CHECKING:
    from agentbox.backends.spec import ContainerSpec
    from agentbox.backends.state import StateStore

__all__ = ["CLIENT_FIELDS", "OPERATOR_FIELDS", "RemoteSandbox", "ServiceBackend"]

#: Configuration keys only the service's operator sets (where its engines are): refused from a client.
OPERATOR_FIELDS = frozenset({"swarm_manager", "swarm_nodes", "swarm_relay_address"})
#: Every configuration key a client may send in a create.
CLIENT_FIELDS = tuple(name for name in FIELDS if name not in OPERATOR_FIELDS)

_STATES = {
    "creating": SandboxState.STARTING,
    "running": SandboxState.RUNNING,
    "paused": SandboxState.PAUSED,
    "stopped": SandboxState.STOPPED,
    # Died or OOM-killed behind the service's back: resume starts it again, as for a stopped one.
    "dead": SandboxState.STOPPED,
    # Its node went down (Swarm): gone with its state; replace_sandbox() gives a new one in its place.
    "lost": SandboxState.LOST,
    "removing": SandboxState.REMOVED,
    "removed": SandboxState.REMOVED,
}


@dataclass(frozen=True)
class RemoteSandbox:
    """One sandbox as the service describes it: what a handle needs to (re)attach."""

    info: SandboxInfo
    """The sandbox as :meth:`Backend.find` reports it."""
    config: SandboxConfig
    """Its effective configuration (the service's defaults filled in)."""


def settings_json(config: SandboxConfig, keys: builtins.list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The create body's ``config``: only ``keys`` (what the caller set; the rest takes the service's
    defaults), in their JSON form. A key the service does not take from clients is refused here."""
    refused = sorted(set(keys) & OPERATOR_FIELDS)
    if refused:
        raise ConfigError(
            f"{', '.join(refused)}: set by the service's operator (its config.toml), not by a client; "
            "remove it from this configuration to create a sandbox through the service"
        )
    data = config.model_dump(mode="json", include=set(keys))
    if "volumes" in data:
        data["volumes"] = [m.spec() for m in config.volumes]
    return data


class ServiceBackend(Backend):
    """Sandboxes on an agentbox service at ``server``, as the holder of ``token`` sees them."""

    name = "service"

    def __init__(self, server: str, token: str, *, timeout: float = 60.0) -> None:
        if not server.startswith(("http://", "https://")):
            raise ConfigError(f"service URL {server!r}: expected http://HOST:PORT or https://...")
        if not token:
            raise ConfigError(
                f"no token for the agentbox service at {server}: pass token=... (or --token), or set AGENTBOX_TOKEN"
            )
        self.server = server.rstrip("/")
        self.token = token
        self._api = ServiceApi(self.server, token, timeout=timeout)
        self._lock = threading.Lock()

    def runtime_url(self, sandbox_id: str) -> str:
        """Where the service proxies to the sandbox's runtime server (its own paths follow)."""
        return f"{self.server}/v1/sandboxes/{sandbox_id}/runtime"

    # -- what a client does --------------------------------------------------------------------------------

    def create_sandbox(
        self,
        settings: Mapping[str, Any],
        labels: Mapping[str, str] | None = None,
        progress: Progress | None = None,
    ) -> RemoteSandbox:
        """Create and start a sandbox from ``settings`` (see :func:`settings_json`) with extra ``labels``;
        returns it once its server answers. The service removes whatever a failed create made."""
        record = self._api.create({"config": dict(settings), "labels": dict(labels or {})}, progress)
        return self._remote(record)

    def describe(self, sandbox_id: str) -> RemoteSandbox:
        """The sandbox and its effective configuration; SandboxNotFoundError if this token cannot see it."""
        return self._remote(self._api.call("GET", f"/v1/sandboxes/{_quoted(sandbox_id)}"))

    def _remote(self, record: Mapping[str, Any]) -> RemoteSandbox:
        given = {k: v for k, v in (record.get("config") or {}).items() if v is not None and k in CLIENT_FIELDS}
        return RemoteSandbox(self._info(record), SandboxConfig.model_validate(given))

    def _info(self, record: Mapping[str, Any]) -> SandboxInfo:
        config = record.get("config") or {}
        state = _STATES.get(str(record.get("state")), SandboxState.STOPPED)
        created = None
        with contextlib.suppress(ValueError):
            created = datetime.fromisoformat(str(record.get("created")))
        return SandboxInfo(
            id=str(record["id"]),
            container_id=str(record["id"]),
            container_name="",
            image=str(config.get("runtime_container_image") or config.get("base_container_image") or ""),
            state=state,
            created=created,
            owner_pid=None,
            # The token that owns it is this sandbox's "owner" on the service.
            owner_host=f"{record.get('owner', '')}@{self.server}",
            url=self.runtime_url(str(record["id"])) if state is SandboxState.RUNNING else None,
            keep_alive=bool(record.get("keep_alive") or config.get("keep_runtime_alive")),
            labels=dict(record.get("labels") or {}),
            reason=str(record["reason"]) if record.get("reason") else None,
        )

    def replace_sandbox(self, sandbox_id: str) -> RemoteSandbox:
        """A new sandbox in place of a lost one (same configuration and labels, placed anew; the lost one
        is removed); a SandboxError when the sandbox is not lost."""
        return self._remote(self._api.call("POST", f"/v1/sandboxes/{_quoted(sandbox_id)}/replace"))

    def endpoint(self, container_id: str) -> Endpoint:
        """The service's proxy to the sandbox's runtime server (no host port, no socket: the service's)."""
        # "service" joins base.py's Endpoint.via literal on merge (reported); the value is what it says.
        return Endpoint(url=self.runtime_url(container_id), via="service")

    def find(self, sandbox_id: str) -> SandboxInfo:
        """The sandbox with this id, if this token may see it (another token's id is not found)."""
        return self.describe(sandbox_id).info

    def list(
        self, *, owner_host: str | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[SandboxInfo]:
        """The sandboxes this token sees (all of them for an admin token), optionally only those carrying
        all of ``labels``. ``owner_host`` means nothing here (the token is the owner) and is ignored."""
        infos = [self._info(r) for r in self._api.call("GET", "/v1/sandboxes")["sandboxes"]]
        if labels:
            infos = [i for i in infos if all(i.labels.get(k) == v for k, v in labels.items())]
        return infos

    def pause(self, container_id: str) -> None:
        """Freeze the sandbox."""
        self._api.call("POST", f"/v1/sandboxes/{_quoted(container_id)}/pause")

    def resume(self, container_id: str) -> None:
        """Thaw a paused sandbox, or start a stopped one again (the service hands its key over)."""
        self._api.call("POST", f"/v1/sandboxes/{_quoted(container_id)}/resume")

    def stop(self, container_id: str, *, timeout: float = 5) -> None:
        """Stop the sandbox's container (the service chooses the grace period)."""
        self._api.call("POST", f"/v1/sandboxes/{_quoted(container_id)}/stop")

    def remove(self, container_id: str, *, purge_volumes: bool = False) -> None:
        """Remove the sandbox (idempotent: one already gone is not an error)."""
        with contextlib.suppress(SandboxNotFoundError):
            self._api.call("DELETE", f"/v1/sandboxes/{_quoted(container_id)}")

    def logs(self, container_id: str, *, tail: int | None = None) -> str:
        """The sandbox's container log, through the service."""
        params = {"tail": tail} if tail is not None else None
        return str(self._api.call("GET", f"/v1/sandboxes/{_quoted(container_id)}/logs", params=params))

    def close(self) -> None:
        """Close the connections to the service."""
        self._api.close()

    # -- what only the service does ------------------------------------------------------------------------

    def _only_the_service(self, what: str) -> NoReturn:
        raise ConfigError(f"{what} is done by the agentbox service at {self.server}, not by its clients")

    @property
    def store(self) -> StateStore:
        """Refused: the service keeps the session keys; a client holds only its token."""
        self._only_the_service("keeping sandboxes' session keys")

    def resolve_image(self, config: SandboxConfig, progress: Progress | None = None, *, refresh: bool = False) -> str:
        """Refused: the service builds images (their progress streams through :meth:`create_sandbox`)."""
        self._only_the_service("building runtime images")

    def create(self, spec: ContainerSpec) -> str:
        """Refused: the service makes containers from a configuration (:meth:`create_sandbox`)."""
        self._only_the_service("creating containers from a container spec")

    def start(
        self, container_id: str, files: Mapping[str, tuple[bytes, int]], *, timeout: float, restart: bool = False
    ) -> Endpoint:
        """Refused: the service starts sandboxes and hands them their keys (see :meth:`resume`)."""
        self._only_the_service("handing a sandbox its session key")

    def reap(self, *, dry_run: bool = False, labels: Mapping[str, str] | None = None) -> builtins.list[str]:
        """Refused: the service removes its sandboxes itself (max_lifetime, reconcile on start)."""
        self._only_the_service("reaping orphaned sandboxes")


def _quoted(sandbox_id: str) -> str:
    from urllib.parse import quote

    return quote(sandbox_id, safe="")
