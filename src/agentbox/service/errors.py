"""How errors leave the service: one exception type with a wire code, and the table that translates
agentbox's own errors into it.

Every answer that is not a success is ``{"error": {"code", "message"}}`` (plus ``rule`` for a policy
refusal). Bad input is a 4xx naming the field or rule; a 5xx means the service or the engine failed.
"""

from __future__ import annotations

from agentbox.errors import (
    AgentboxError,
    ConfigError,
    EngineError,
    EngineUnavailableError,
    ImageBuildError,
    ImageNotFoundError,
    NetworkNotFoundError,
    PortInUseError,
    SandboxError,
    SandboxNotFoundError,
    SandboxStartError,
    SandboxTimeoutError,
)

__all__ = ["STATUS", "ApiError", "from_agentbox_error", "policy_denied"]

#: wire code -> HTTP status. The only codes the service answers with.
STATUS: dict[str, int] = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "policy_denied": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "validation_error": 422,
    "internal": 500,
    "engine_error": 502,
    "sandbox_unreachable": 502,
    "start_failed": 502,
    "engine_unavailable": 503,
    "timeout": 504,
}


class ApiError(AgentboxError):
    """An error the service answers with: a wire code (see :data:`STATUS`), a message, and for policy
    refusals the rule that refused."""

    def __init__(self, code: str, message: str, *, rule: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.rule = rule

    @property
    def status(self) -> int:
        """The HTTP status of this error's code."""
        return STATUS.get(self.code, 500)


def policy_denied(rule: str, message: str) -> ApiError:
    """A refusal by the service's policy; the message starts with the rule's name."""
    return ApiError("policy_denied", f"policy {rule}: {message}", rule=rule)


def from_agentbox_error(exc: AgentboxError) -> ApiError:
    """The wire form of an error raised by the backend or the configuration layer."""
    if isinstance(exc, ApiError):
        return exc
    message = str(exc)
    # Input the client chose (an image, a network, a value) is the client's to fix: a 4xx.
    if isinstance(exc, (ConfigError, ImageNotFoundError, NetworkNotFoundError)):
        return ApiError("validation_error", message)
    if isinstance(exc, PortInUseError):
        return ApiError("conflict", message)
    if isinstance(exc, SandboxNotFoundError):
        return ApiError("not_found", message)
    if isinstance(exc, SandboxTimeoutError):
        return ApiError("timeout", message)
    if isinstance(exc, SandboxStartError):
        return ApiError("start_failed", message)
    if isinstance(exc, EngineUnavailableError):
        return ApiError("engine_unavailable", message)
    if isinstance(exc, (EngineError, ImageBuildError)):
        return ApiError("engine_error", message)
    if isinstance(exc, SandboxError):
        return ApiError("conflict", message)
    return ApiError("internal", message)
