"""The one place that connects to the Docker engine and translates the SDK's errors.

Everything that talks to Docker gets its client from :func:`docker_client`, and wraps engine calls in
:func:`translate_errors`, so that a refused or unreachable engine becomes an agentbox error with an
action to take instead of a ``requests`` traceback. The SDK's exception stays chained as ``__cause__``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from agentbox.errors import EngineError, EngineUnavailableError, ImageNotFoundError, SandboxTimeoutError

if TYPE_CHECKING:
    import docker

__all__ = ["docker_client", "engine_available", "translate_errors"]

FIX_HINT = "run `agentbox doctor --fix` (installs and starts a Docker engine), or start dockerd yourself"


def docker_client(timeout: float = 120, *, max_pool_size: int = 10) -> docker.DockerClient:
    """A client for the engine named by DOCKER_HOST (default: the local socket), checked with a ping.

    ``max_pool_size`` bounds the connections kept open: a process that follows many log streams at once
    (many sandboxes starting concurrently) needs one per stream.
    """
    from docker.errors import DockerException

    import docker

    try:
        client = docker.from_env(timeout=int(timeout), max_pool_size=max_pool_size)
    except DockerException as exc:
        raise EngineUnavailableError(f"no Docker engine answers ({_short(exc)}); {FIX_HINT}") from exc
    try:
        client.ping()
    except DockerException as exc:
        client.close()  # its pool's sockets, else left to the collector
        raise EngineUnavailableError(f"no Docker engine answers ({_short(exc)}); {FIX_HINT}") from exc
    return client


def engine_available() -> bool:
    """True when a Docker engine answers a ping."""
    try:
        docker_client(timeout=5).close()
    except EngineUnavailableError:
        return False
    return True


@contextlib.contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Turn docker SDK and transport errors raised inside into agentbox errors that name ``action``.

    An engine that does not answer in time raises :class:`~agentbox.errors.SandboxTimeoutError` (also a
    ``TimeoutError``); one that went away (dockerd stopped or restarting) EngineUnavailableError.
    """
    from docker.errors import APIError, DockerException, ImageNotFound
    from requests.exceptions import ConnectionError as RequestsConnectionError
    from requests.exceptions import Timeout as RequestsTimeout

    try:
        yield
    except ImageNotFound as exc:
        raise ImageNotFoundError(f"{action}: image not found ({_short(exc)})") from exc
    except RequestsTimeout as exc:  # before ConnectionError: ConnectTimeout is both
        raise SandboxTimeoutError(
            f"{action}: the Docker engine did not answer in time ({_short(exc)}); it may be overloaded or restarting"
        ) from exc
    except RequestsConnectionError as exc:
        raise EngineUnavailableError(f"{action}: the Docker engine went away ({_short(exc)}); {FIX_HINT}") from exc
    except APIError as exc:
        raise EngineError(f"{action}: the Docker engine refused: {_short(exc)}") from exc
    except DockerException as exc:
        raise EngineError(f"{action}: {_short(exc)}") from exc


def _short(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    text = str(explanation or exc)
    return text if len(text) < 400 else text[:400] + "..."
