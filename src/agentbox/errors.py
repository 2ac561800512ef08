"""The one exception root of agentbox, and its tree.

Every error agentbox raises on purpose is an :class:`AgentboxError`; third-party errors (docker SDK,
httpx, OS errors) are translated at the boundary that meets them, so callers catch one root::

    AgentboxError
    ├── ConfigError                  bad configuration: a key, a value, a file
    │   └── VolumeSpecError          a malformed SANDBOX_VOLUMES entry
    ├── EngineError                  the Docker engine refused or is unreachable
    │   ├── EngineUnavailableError   no engine answers on the socket
    │   ├── ImageNotFoundError       the image is neither local nor pullable
    │   ├── NetworkNotFoundError     a named network does not exist (or is ambiguous)
    │   └── PortInUseError           a host port is already taken
    ├── ImageBuildError              building a runtime image failed
    ├── SandboxError                 a sandbox could not be started, found or used
    │   ├── SandboxNotFoundError     no sandbox with that id
    │   ├── SandboxStartError        the container started but its server never answered
    │   └── SandboxTimeoutError      no answer from the sandbox in time (also a TimeoutError)
    └── RuntimeServerError           the runtime server answered with an error ``{code, message}``
        ├── AuthenticationError      401/403: missing or wrong session API key
        ├── BadRequestError          400/422: the request was malformed
        ├── NotFoundError            404: no such session, file, command or kernel
        ├── ConflictError            409: e.g. a command is already running in that session
        ├── FileOperationError       a file or editor operation could not be done
        ├── KernelUnavailableError   the Jupyter kernel packages are absent or the kernel died
        └── ServerTimeoutError       the action did not finish in its time budget (also a TimeoutError)

Every error about one sandbox carries its id in ``sandbox_id`` (None when no sandbox was involved), and the
error it was translated from as ``__cause__``. ``except TimeoutError`` catches every agentbox timeout.

Errors cross HTTP as ``{"code": ..., "message": ...}``; :data:`ERROR_CODES` is the fixed table that maps a
wire code to its exception class and HTTP status, used by the server to answer and by the client to raise.
"""

from __future__ import annotations


class AgentboxError(Exception):
    """Root of every error agentbox raises on purpose.

    ``sandbox_id``: the sandbox the error is about, when there is one (set by the layer that knows it).
    """

    sandbox_id: str | None = None

    def __init__(self, message: str = "", *, sandbox_id: str | None = None) -> None:
        super().__init__(message)
        if sandbox_id is not None:
            self.sandbox_id = sandbox_id

    def with_sandbox(self, sandbox_id: str | None) -> AgentboxError:
        """This error, marked as being about ``sandbox_id`` (unless it already names one); returns self."""
        if self.sandbox_id is None and sandbox_id is not None:
            self.sandbox_id = sandbox_id
        return self

    def __str__(self) -> str:
        text = super().__str__()
        if self.sandbox_id and self.sandbox_id not in text:
            return f"sandbox {self.sandbox_id}: {text}"
        return text


class ConfigError(AgentboxError):
    """The configuration is wrong: an unknown key, a bad value, an unreadable file."""


class VolumeSpecError(ConfigError):
    """A ``host:container[:mode]`` volume spec could not be parsed or is inconsistent."""


class EngineError(AgentboxError):
    """The Docker engine refused an operation."""


class EngineUnavailableError(EngineError):
    """No Docker engine answers."""


class ImageNotFoundError(EngineError):
    """An image is neither present locally nor pullable."""


class NetworkNotFoundError(EngineError):
    """A Docker network named in the configuration does not exist, or the name is ambiguous."""


class PortInUseError(EngineError):
    """A host port could not be bound."""


class ImageBuildError(AgentboxError):
    """Building a runtime image failed."""


class SandboxError(AgentboxError):
    """A sandbox could not be started, found or used."""


class SandboxNotFoundError(SandboxError):
    """No sandbox with the given id exists on this engine."""


class SandboxStartError(SandboxError):
    """A sandbox container was created but did not become ready."""


class SandboxTimeoutError(SandboxError, TimeoutError):
    """The sandbox (its engine or its server) did not answer in time."""


class RuntimeServerError(AgentboxError):
    """The runtime server answered with an error body ``{code, message}``."""

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None, sandbox_id: str | None = None) -> None:
        super().__init__(message, sandbox_id=sandbox_id)
        self.message = message
        if code is not None:
            self.code = code


class AuthenticationError(RuntimeServerError):
    """The session API key is missing (401) or wrong (403)."""

    code = "unauthorized"


class BadRequestError(RuntimeServerError):
    """The request was malformed; the message says what was wrong."""

    code = "bad_request"


class NotFoundError(RuntimeServerError):
    """No such session, file, background command or kernel."""

    code = "not_found"


class ConflictError(RuntimeServerError):
    """The target is busy, e.g. a command is still running in that shell session."""

    code = "conflict"


class FileOperationError(RuntimeServerError):
    """A file or editor operation could not be done (no match, several matches, nothing to undo...)."""

    code = "file_error"


class KernelUnavailableError(RuntimeServerError):
    """Stateful Python is not available: the kernel packages are absent or the kernel died."""

    code = "kernel_unavailable"


class ServerTimeoutError(RuntimeServerError, TimeoutError):
    """The action did not finish within its time budget."""

    code = "timeout"


#: wire code -> (exception class, HTTP status). The server answers with these; the client raises them.
ERROR_CODES: dict[str, tuple[type[RuntimeServerError], int]] = {
    "unauthorized": (AuthenticationError, 401),
    "forbidden": (AuthenticationError, 403),
    "bad_request": (BadRequestError, 400),
    "validation_error": (BadRequestError, 422),
    "method_not_allowed": (BadRequestError, 405),
    "payload_too_large": (BadRequestError, 413),
    "not_found": (NotFoundError, 404),
    "conflict": (ConflictError, 409),
    "file_error": (FileOperationError, 400),
    "kernel_unavailable": (KernelUnavailableError, 503),
    "timeout": (ServerTimeoutError, 504),
    "internal": (RuntimeServerError, 500),
}


def error_from_wire(code: str, message: str) -> RuntimeServerError:
    """Build the exception for a ``{code, message}`` body (unknown codes become RuntimeServerError)."""
    cls, _status = ERROR_CODES.get(code, (RuntimeServerError, 500))
    return cls(message, code=code)
