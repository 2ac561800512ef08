"""Wire models of OpenHands' remote runtime API, as its clients send and read them.

The shapes come from OpenHands' own clients (the project's design note openhands-remote-api.md): V0's
``RemoteRuntime`` and ``RemoteRuntimeBuilder``, V1's ``RemoteSandboxService`` and the SDK's
``APIRemoteWorkspace``. Requests accept unknown fields: OpenHands versions add fields, and a new
one must not break a start (the known ones are typed and validated). Every answer about a runtime is the
one :class:`RuntimeRecord`.
"""

from __future__ import annotations

import shlex
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "BuildStarted",
    "BuildStatus",
    "ImageExists",
    "ImageQuery",
    "Launch",
    "RegistryPrefix",
    "RuntimeAction",
    "RuntimeList",
    "RuntimeRecord",
    "SessionsQuery",
    "StartRequest",
]

#: ``status`` of a runtime: V0 reads running/paused/stopped; current OpenHands main also starting/error.
Status = Literal["running", "paused", "stopped", "starting", "error"]
#: ``pod_status``: ``ready`` only once the server inside answered; ``pending`` while it boots.
PodStatus = Literal["ready", "pending", "running", "failed", "not found"]


class StartRequest(BaseModel):
    """``POST /start``."""

    model_config = ConfigDict(extra="allow")

    image: str = Field(min_length=1, max_length=512)
    """Image to run (OpenHands' runtime or agent-server image)."""
    command: list[str] = Field(min_length=1)
    """The server's argv; V0 sends a list, the SDK a shell-quoted string (split here)."""
    working_dir: str | None = None
    environment: dict[str, str] = Field(default_factory=dict)
    session_id: str = Field(min_length=1, max_length=256)
    """OpenHands' conversation id: one live runtime per session id and token."""
    resource_factor: int = Field(default=1, ge=1, le=64)
    """Multiplies the operator's cpu and memory limits."""
    runtime_class: str | None = None
    """``sysbox-runc`` or ``gvisor``; the operator's OCI runtime applies whatever is asked (see README)."""
    run_as_user: int | None = None
    run_as_group: int | None = None
    fs_group: int | None = None
    image_pull_policy: str | None = None

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return shlex.split(value) if isinstance(value, str) else value

    @field_validator("environment", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        return _env_strings(value)

    def launch(self) -> Launch:
        """The container part of this start (what a warm pool's sandbox must equal)."""
        return Launch(image=self.image, command=tuple(self.command), working_dir=self.working_dir,
                      environment=self.environment)


class Launch(BaseModel):
    """What an OpenHands runtime's container runs, and all of it that a warm pool can make in advance:
    the ``[pool.openhands]`` table of a ``[[pool]]``, and the part of a ``/start`` a pool must match.

    Everything else in a ``/start`` is either the session's (``session_id``, held by the service's record
    only: OpenHands' servers never read it) or the operator's configuration (``resource_factor`` scales
    its limits, so a pool matches only starts whose scaled limits equal the profile's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = Field(min_length=1, max_length=512)
    """The image OpenHands names (``SANDBOX_RUNTIME_CONTAINER_IMAGE``, or the agent-server image)."""
    command: tuple[str, ...] = Field(min_length=1)
    """The server's argv exactly as OpenHands posts it (a string is split as a shell would)."""
    working_dir: str | None = None
    """``working_dir`` as posted (V0: ``/openhands/code/``)."""
    environment: dict[str, str] = Field(default_factory=dict)
    """``environment`` as posted: fixed when the container is made, so it must not vary per session."""

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return shlex.split(value) if isinstance(value, str) else value

    @field_validator("environment", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        return _env_strings(value)


def _env_strings(value: Any) -> Any:
    # OpenHands puts whatever runtime_startup_env_vars holds: numbers and booleans too.
    if isinstance(value, dict):
        return {str(k): v if isinstance(v, str) else str(v) for k, v in value.items() if v is not None}
    return value


class RuntimeAction(BaseModel):
    """``POST /pause``, ``/resume``, ``/stop``."""

    model_config = ConfigDict(extra="allow")

    runtime_id: str | None = None
    """V0 sends ``null`` when a failed ``connect()`` never got one (then there is nothing to do)."""


class RuntimeRecord(BaseModel):
    """The one record every endpoint answers about a runtime."""

    runtime_id: str
    session_id: str
    url: str
    """The sandbox URL: a path on this service proxied to the server inside (never a host port)."""
    session_api_key: str
    """What the server inside checks in ``X-Session-API-Key``; stable for the runtime's life."""
    status: Status
    pod_status: PodStatus
    work_hosts: dict[str, int] = Field(default_factory=dict)
    restart_count: int = 0
    restart_reasons: list[str] = Field(default_factory=list)
    image: str = ""


class RuntimeList(BaseModel):
    """``GET /list``."""

    runtimes: list[RuntimeRecord]


class SessionsQuery(BaseModel):
    """``GET /sessions/batch?ids=a&ids=b`` (filled from the query string by the route)."""

    ids: list[str] = Field(default_factory=list, max_length=1000)


class RegistryPrefix(BaseModel):
    """``GET /registry_prefix``."""

    registry_prefix: str


class ImageQuery(BaseModel):
    """``GET /image_exists?image=``."""

    image: str = Field(min_length=1, max_length=512)


class ImageExists(BaseModel):
    """``GET /image_exists``; ``image`` is read unconditionally by V0 when ``exists``."""

    exists: bool
    image: dict[str, Any] | None = None


class BuildStarted(BaseModel):
    """``POST /build``."""

    build_id: str


class BuildStatus(BaseModel):
    """``GET /build_status``: agentbox builds no posted contexts (see README): always a FAILURE that says so."""

    status: Literal["SUCCESS", "FAILURE"]
    image: str | None = None
    error: str | None = None
