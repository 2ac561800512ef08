"""Engine error translation for the Docker backend: the engine messages that have a better agentbox
error and a fix, on top of :func:`agentbox.engine.translate_errors` (which handles every other SDK and
transport error). The one boundary where docker SDK exceptions become agentbox ones here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from agentbox.engine import translate_errors
from agentbox.errors import (
    EngineError,
    ImageNotFoundError,
    NetworkNotFoundError,
    PortInUseError,
    SandboxNotFoundError,
    VolumeSpecError,
)

__all__ = ["IMAGE_HINT", "RUNSC_HINT", "engine_errors", "is_not_found", "missing_container"]

RUNSC_HINT = "run `agentbox doctor --fix --runsc` to install gVisor and register it with dockerd"
IMAGE_HINT = "run `agentbox doctor --fix` to build the runtime image, or set runtime_container_image to one you have"


@contextlib.contextmanager
def engine_errors(action: str) -> Iterator[None]:
    """translate_errors, plus the engine messages that have a better agentbox error and fix."""
    from docker.errors import APIError, NotFound

    with translate_errors(action):
        try:
            yield
        except APIError as exc:
            text = str(getattr(exc, "explanation", None) or exc)
            lower = text.lower()
            if "runtime" in lower and "runsc" in lower and ("unknown" in lower or "invalid" in lower):
                raise EngineError(f"{action}: the gVisor runtime 'runsc' is not registered; {RUNSC_HINT}") from exc
            if "bind source path does not exist" in lower or "invalid mount config" in lower:
                raise VolumeSpecError(
                    f"{action}: {text}; create the host directory first or fix the volume spec"
                ) from exc
            if "port is already allocated" in lower or "address already in use" in lower:
                raise PortInUseError(
                    f"{action}: a host port is taken ({text}); free it, or leave the host port to Docker"
                ) from exc
            if isinstance(exc, NotFound) and "network" in lower:
                raise NetworkNotFoundError(f"{action}: {text}") from exc
            if isinstance(exc, NotFound) and ("no such image" in lower or "pull access" in lower):
                raise ImageNotFoundError(f"{action}: {text}; {IMAGE_HINT}") from exc
            if isinstance(exc, NotFound) and "no such container" in lower:
                raise missing_container(text) from exc
            raise


def missing_container(detail: str) -> SandboxNotFoundError:
    """The error for a sandbox container that no longer exists (removed with ``docker rm``, or reaped)."""
    return SandboxNotFoundError(f"the sandbox container no longer exists ({detail})")


def is_not_found(exc: BaseException) -> bool:
    """True for the SDK's 404."""
    from docker.errors import NotFound

    return isinstance(exc, NotFound)
