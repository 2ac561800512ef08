"""Fixtures of the OpenHands tests: a real ``agentbox serve`` on a real engine, driven through the
``/openhands`` runtime API.

Runtimes made through that API carry no test labels (OpenHands chooses none), so each service's runtimes
are removed after the test by the service id they carry (``agentbox.service``), whatever the test did.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "service"))
from service_process import ServiceProcess, start_service

from agentbox.config import SandboxConfig
from agentbox.engine import engine_available


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here needs the engine."""
    for item in items:
        if "/tests/openhands/" in str(item.fspath) and "units" not in item.nodeid:
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """One docker SDK client; skips the test when no engine answers."""
    if not engine_available():
        pytest.skip("no Docker engine answers (run `agentbox doctor --fix`)")
    from agentbox.engine import docker_client as make_client

    client = make_client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def runtime_image(docker_client: Any) -> str:
    """agentbox's runtime image (it has python3: the stand-in servers run on it)."""
    override = os.environ.get("AGENTBOX_TEST_IMAGE")
    if override:
        return override
    from agentbox.images import ensure_runtime_image

    return ensure_runtime_image(SandboxConfig(), client=docker_client)


def remove_service_containers(docker_client: Any, service_id: str) -> None:
    """Remove every container a service made (its runtimes), by the service's label."""
    from docker.errors import APIError

    for c in docker_client.api.containers(all=True, filters={"label": f"agentbox.service={service_id}"}):
        with contextlib.suppress(APIError):
            docker_client.api.remove_container(c["Id"], force=True, v=True)


@pytest.fixture()
def services(tmp_path: Path, docker_client: Any) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory of service processes (stopped, and the runtimes they made removed, after)."""
    made: list[tuple[ServiceProcess, str]] = []

    def start(*extra: str) -> ServiceProcess:
        svc = start_service(tmp_path / f"data{len(made)}", *extra)
        with svc.client() as c:
            service_id = c.get("/healthz").json()["service_id"]
        made.append((svc, service_id))
        return svc

    try:
        yield start
    finally:
        for svc, service_id in made:
            svc.stop()
            remove_service_containers(docker_client, service_id)
