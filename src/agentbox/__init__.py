"""agentbox: disposable, isolated Linux sandboxes for AI agents on a real Docker engine.

The public names are imported lazily (PEP 562) so that the runtime server, which ships inside every
sandbox with only its own dependencies, can import ``agentbox.server`` without the host-side stack
(docker SDK, typer, rich) and without paying for it at startup.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Sandbox": "agentbox.sandbox",
    "AsyncSandbox": "agentbox.sandbox",
    "SandboxInfo": "agentbox.sandbox",
    "SandboxState": "agentbox.sandbox",
    "reap": "agentbox.sandbox",
    "SandboxConfig": "agentbox.config",
    "Mount": "agentbox.volumes",
    "RuntimeClient": "agentbox.client",
    "AsyncRuntimeClient": "agentbox.client",
    "AgentboxError": "agentbox.errors",
    "ConfigError": "agentbox.errors",
    "VolumeSpecError": "agentbox.errors",
    "EngineError": "agentbox.errors",
    "EngineUnavailableError": "agentbox.errors",
    "ImageNotFoundError": "agentbox.errors",
    "ImageBuildError": "agentbox.errors",
    "NetworkNotFoundError": "agentbox.errors",
    "SandboxError": "agentbox.errors",
    "SandboxNotFoundError": "agentbox.errors",
    "SandboxStartError": "agentbox.errors",
    "RuntimeServerError": "agentbox.errors",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from agentbox.client import AsyncRuntimeClient, RuntimeClient
    from agentbox.config import SandboxConfig
    from agentbox.errors import (
        AgentboxError,
        ConfigError,
        EngineError,
        EngineUnavailableError,
        ImageBuildError,
        ImageNotFoundError,
        NetworkNotFoundError,
        RuntimeServerError,
        SandboxError,
        SandboxNotFoundError,
        SandboxStartError,
        VolumeSpecError,
    )
    from agentbox.sandbox import AsyncSandbox, Sandbox, SandboxInfo, SandboxState, reap
    from agentbox.volumes import Mount


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agentbox' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
