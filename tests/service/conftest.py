"""Fixtures of the service tests: a real ``agentbox serve`` process on a real engine.

Every sandbox made through the service carries ``agentbox.test=1`` and this run's session label (the
tests pass them as the create's labels); whatever is left at the end of the session is removed by label.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from service_process import LABELS, SESSION, SESSION_LABEL, TEST_LABEL, ServiceProcess, start_service

from agentbox.config import SandboxConfig
from agentbox.engine import engine_available


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """One docker SDK client; skips the test when no engine answers. Sweeps this session's leftovers."""
    if not engine_available():
        pytest.skip("no Docker engine answers (run `agentbox doctor --fix`)")
    from docker.errors import APIError

    from agentbox.engine import docker_client as make_client

    client = make_client()
    try:
        yield client
    finally:
        mine = {"label": [f"{TEST_LABEL}=1", f"{SESSION_LABEL}={SESSION}"]}
        for c in client.api.containers(all=True, filters=mine):
            with contextlib.suppress(APIError):
                client.api.remove_container(c["Id"], force=True, v=True)
        client.close()


@pytest.fixture(scope="session")
def runtime_image(docker_client: Any) -> str:
    """The runtime image for the default configuration (``AGENTBOX_TEST_IMAGE`` overrides)."""
    override = os.environ.get("AGENTBOX_TEST_IMAGE")
    if override:
        return override
    from agentbox.images import ensure_runtime_image

    return ensure_runtime_image(SandboxConfig(), client=docker_client)


@pytest.fixture()
def labels() -> dict[str, str]:
    """The labels every sandbox a test creates must carry."""
    return dict(LABELS)


@pytest.fixture()
def service_config(tmp_path: Path, runtime_image: str) -> Callable[..., Path]:
    """Write a service config.toml: the test runtime image as the operators' default, plus ``extra`` TOML."""

    def write(extra: str = "") -> Path:
        path = tmp_path / "service.toml"
        path.write_text(f'[sandbox]\nruntime_container_image = "{runtime_image}"\n{extra}\n')
        return path

    return write


@pytest.fixture()
def services(tmp_path: Path, docker_client: Any) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory of service processes on ``tmp_path/data`` (stopped, and their sandboxes removed, after)."""
    made: list[ServiceProcess] = []

    def start(*extra: str, data_dir: Path | None = None) -> ServiceProcess:
        svc = start_service(data_dir or tmp_path / "data", *extra)
        made.append(svc)
        return svc

    try:
        yield start
    finally:
        for svc in made:
            svc.stop()
        if made:
            # Sandboxes this test made through any of them: remove by label (the service may be dead).
            from docker.errors import APIError

            for c in docker_client.api.containers(all=True, filters={"label": [f"{SESSION_LABEL}={SESSION}"]}):
                if c["Labels"].get("agentbox.service"):
                    with contextlib.suppress(APIError):
                        docker_client.api.remove_container(c["Id"], force=True, v=True)
