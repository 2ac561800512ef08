"""Where sandboxes run: one small interface (:mod:`~agentbox.backends.base`), a frozen container spec with
the pure function that turns it into engine arguments (:mod:`~agentbox.backends.spec`), and one module
per engine (:mod:`~agentbox.backends.docker`)."""

from agentbox.backends.base import Backend, Endpoint, SandboxInfo, SandboxState
from agentbox.backends.spec import ContainerSpec, spec_from_config, to_docker_args

__all__ = [
    "Backend",
    "ContainerSpec",
    "Endpoint",
    "SandboxInfo",
    "SandboxState",
    "spec_from_config",
    "to_docker_args",
]
