"""Suite-wide: the shared networks agentbox creates on first use are removed again if this run created them.

Sandboxes share ``agentbox-net`` (and, for some ``network="none"`` cases, ``agentbox-none``) and agentbox keeps
them between sandboxes on purpose. A test run that brought them into existence should not leave them behind.
Nor session-key and socket directories (``/run/agentbox/{keys,sockets}/<id>``): suites sweep their containers
by label at the end, behind the backend's back, so the directories of sandboxes no longer on the engine go here.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

MANAGED = {"label": "agentbox.managed=1"}
_before: set[str] | None = None


def _engine() -> Any:
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
    except Exception:  # no engine: the unit tiers run without one, and nothing is left to clean
        return None
    return client


def pytest_sessionstart(session: pytest.Session) -> None:
    global _before
    client = _engine()
    if client is not None:
        try:
            _before = {net.id for net in client.networks.list(filters=MANAGED)}
        finally:
            client.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _before is None:
        return
    client = _engine()
    if client is None:
        return
    from docker.errors import APIError

    try:
        _sweep_dirs(client)
        for net in client.networks.list(filters=MANAGED):
            if net.id in _before:
                continue
            net.reload()
            if not net.attrs.get("Containers"):
                # A container that joined meanwhile makes the engine refuse: in use, not ours to take.
                with contextlib.suppress(APIError):
                    net.remove()
    finally:
        client.close()


def _sweep_dirs(client: Any) -> None:
    from agentbox.backends.docker import DockerBackend

    # A few seconds of grace: another process's sandbox may be between its directory and its container.
    DockerBackend(client=client).sweep_dirs(grace=10)
