"""The service's wire models (REST v1): what clients send and what they get back.

The sandbox configuration on the wire is :class:`SandboxSettings`: every :class:`~agentbox.config.SandboxConfig`
key, each optional (unset keys take the operator's ``[sandbox]`` default, then agentbox's), in its JSON
form (volumes as ``host:container[:mode]`` strings). A test pins that the two keep the same keys.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from agentbox.config import SandboxConfig
from agentbox.protocol import WireModel

__all__ = [
    "AuditList",
    "AuditOut",
    "AuditQuery",
    "ErrorDetail",
    "ErrorResponse",
    "Health",
    "LogsQuery",
    "SandboxCreate",
    "SandboxEvent",
    "SandboxList",
    "SandboxOut",
    "SandboxSettings",
    "TokenCreate",
    "TokenCreated",
    "TokenList",
    "TokenOut",
]

TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

SandboxStateName = Literal["creating", "running", "paused", "stopped", "removing", "dead", "lost", "removed"]


def _about(name: str) -> Any:
    """A field of SandboxSettings: optional, described as the SandboxConfig field it sets."""
    return Field(None, description=SandboxConfig.model_fields[name].description)


#: Configuration keys only the operator sets (the service's own ``[sandbox]``): where its engines are.
OPERATOR_ONLY = frozenset({"swarm_manager", "swarm_nodes", "swarm_relay_address", "swarm_max_per_node"})


class SandboxSettings(WireModel):
    """A sandbox configuration: any SandboxConfig key; unset keys take the service's defaults."""

    runtime_container_image: str | None = _about("runtime_container_image")
    base_container_image: str | None = _about("base_container_image")
    volumes: list[str] | None = _about("volumes")
    work_dir: str | None = _about("work_dir")
    user_id: int | None = _about("user_id")
    runtime_binding_address: str | None = _about("runtime_binding_address")
    use_host_network: bool | None = _about("use_host_network")
    network: str | None = _about("network")
    additional_networks: list[str] | None = _about("additional_networks")
    timeout: float | None = _about("timeout")
    keep_runtime_alive: bool | None = _about("keep_runtime_alive")
    backend: str | None = _about("backend")
    runtime: str | None = _about("runtime")
    hardened: bool | None = _about("hardened")
    cpus: float | None = _about("cpus")
    memory: int | str | None = _about("memory")
    pids_limit: int | None = _about("pids_limit")
    env: dict[str, str] | None = _about("env")
    egress: str | list[str] | None = _about("egress")
    host_ports: list[int] | None = _about("host_ports")
    placement: list[str] | None = _about("placement")

    def given(self) -> dict[str, Any]:
        """The keys the client set (None counts as not set), ready for ``SandboxConfig.model_validate``."""
        return {k: v for k, v in self.model_dump(exclude_unset=True).items() if v is not None}


class SandboxCreate(WireModel):
    """Create a sandbox."""

    config: SandboxSettings = Field(default_factory=SandboxSettings, description="The sandbox's configuration.")
    labels: dict[str, str] = Field(
        default_factory=dict, description="Extra container labels (not in the reserved agentbox. namespace)."
    )
    idle_timeout: float | None = Field(
        None, gt=0, le=10 * 365 * 86400,
        description="Pause it after this many seconds without activity (default and maximum: the service's).",
    )
    max_lifetime: float | None = Field(
        None, gt=0, le=10 * 365 * 86400,
        description="Remove it this many seconds after creation (default and maximum: the service's).",
    )
    keep_alive: bool = Field(False, description="Never pause it for idleness (if the service allows).")


class SandboxOut(WireModel):
    """One sandbox as the service knows it."""

    id: str = Field(description="The sandbox id (path parameter of every /v1/sandboxes/{id} route).")
    owner: str = Field(description="Name of the token that created it.")
    state: SandboxStateName = Field(
        description="creating, running, paused, stopped, removing, dead, lost (its node went down: replace or "
        "remove it); removed: the answer to DELETE."
    )
    reason: str | None = Field(None, description="Why it is dead or lost (naming the node), when it is.")
    config: SandboxSettings = Field(description="The effective configuration (defaults filled in).")
    labels: dict[str, str] = Field(description="The labels the client asked for.")
    created: str = Field(description="When it was created (ISO 8601, UTC).")
    last_activity: str = Field(description="Last create, lifecycle call or request through the proxy (ISO 8601, UTC).")
    idle_timeout: float | None = Field(None, description="Seconds without activity before it is paused, or null.")
    max_lifetime: float | None = Field(None, description="Seconds after creation before it is removed, or null.")
    keep_alive: bool = Field(False, description="Exempt from the idle timeout.")


class SandboxList(WireModel):
    """Sandboxes visible to the calling token."""

    sandboxes: list[SandboxOut] = Field(description="Oldest first.")


class TokenCreate(WireModel):
    """Create an API token."""

    name: str = Field(description="Unique name (letters, digits, '_', '.', '-'); never reused once revoked.")
    admin: bool = Field(False, description="Admin tokens see and manage every sandbox and the tokens.")
    max_sandboxes: int | None = Field(None, ge=0, description="Live sandboxes this token may have (unset: no limit).")
    max_cpus: float | None = Field(None, gt=0, description="Cores all its sandboxes may use together.")
    max_memory: int | None = Field(
        None, ge=6 * 1024**2, description="Bytes of memory all its sandboxes may use together."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not TOKEN_NAME.match(value):
            raise ValueError("must be 1-63 letters, digits, '_', '.', '-', starting with a letter or digit")
        return value


class TokenOut(WireModel):
    """One token (never its secret)."""

    name: str = Field(description="The token's name.")
    admin: bool = Field(description="Whether it is an admin token.")
    max_sandboxes: int | None = Field(description="Live sandbox limit, or null.")
    max_cpus: float | None = Field(description="CPU quota in cores, or null.")
    max_memory: int | None = Field(description="Memory quota in bytes, or null.")
    created: str = Field(description="When it was created (ISO 8601, UTC).")


class TokenCreated(TokenOut):
    """A new token: the secret is shown this once and stored only as a digest."""

    token: str = Field(description="The bearer token; keep it, the service cannot show it again.")


class TokenList(WireModel):
    """Every live token."""

    tokens: list[TokenOut] = Field(description="Oldest first.")


class AuditOut(WireModel):
    """One audit log entry."""

    seq: int = Field(description="Position in the log.")
    at: str = Field(description="When (ISO 8601, UTC).")
    actor: str = Field(description="Token name, or 'service' for the service's own actions.")
    action: str = Field(description="What was done (create, pause, remove, reconcile.remove...).")
    target: str = Field(description="Sandbox id or token name acted on.")
    detail: str = Field(description="Anything else worth knowing.")


class AuditList(WireModel):
    """The latest audit entries, newest first."""

    entries: list[AuditOut] = Field(description="Newest first.")


class Health(WireModel):
    """The service answers."""

    status: Literal["ok"] = Field(default="ok", description="Always 'ok' when the service answers.")
    service_id: str = Field(description="This service's id (the agentbox.service label of its sandboxes).")
    version: str = Field(description="agentbox version.")


class ErrorDetail(WireModel):
    """What went wrong."""

    code: str = Field(description="Stable error code (see agentbox.service.errors.STATUS).")
    message: str = Field(description="What went wrong and how to fix it.")
    rule: str | None = Field(None, description="The policy rule that refused the request (policy_denied only).")


class ErrorResponse(WireModel):
    """The body of every error answer."""

    error: ErrorDetail = Field(description="The error.")


class LogsQuery(WireModel):
    """Query of GET /v1/sandboxes/{id}/logs."""

    tail: int | None = Field(None, ge=0, le=1_000_000, description="Only the last N lines.")
    follow: bool = Field(
        False, description="Keep the answer open and stream what the log gains, until the sandbox stops or is removed."
    )


class AuditQuery(WireModel):
    """Query of GET /v1/audit."""

    limit: int = Field(100, ge=1, le=10_000, description="How many entries, newest first.")


class SandboxEvent(WireModel):
    """A sandbox changed state (one ``data:`` line of GET /v1/events)."""

    id: str = Field(description="The sandbox id.")
    owner: str = Field(description="Name of the token that owns it.")
    state: SandboxStateName = Field(description="Its new state.")
    reason: str | None = Field(None, description="Why, when the service did not cause it (e.g. it died).")
    at: str = Field(description="When (ISO 8601, UTC).")
