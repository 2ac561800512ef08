"""Fixtures of the console tests: the real service on the real engine, and headless Chromium.

The browser tests are ``docker`` tests (marked here by path); the PTY tests need neither engine nor browser.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from console_env import Service, browser, browser_available, console_image, service

from agentbox.engine import engine_available


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every browser test of tests/console needs the engine."""
    for item in items:
        if "/tests/console/test_console_browser" in str(item.fspath):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    if not engine_available():
        pytest.skip("no Docker engine answers (run `agentbox doctor --fix`)")
    from agentbox.engine import docker_client as make_client

    client = make_client()
    try:
        yield client
    finally:
        # Whatever this session labelled and left (e.g. a probe container whose start failed).
        from console_env import SESSION, SESSION_LABEL
        from docker.errors import APIError

        for c in client.api.containers(all=True, filters={"label": f"{SESSION_LABEL}={SESSION}"}):
            with contextlib.suppress(APIError):
                client.api.remove_container(c["Id"], force=True, v=True)
        client.close()


@pytest.fixture(scope="module")
def image(docker_client: Any) -> Iterator[str]:
    with console_image(docker_client) as tag:
        yield tag


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, image: str, docker_client: Any) -> Iterator[Service]:
    with service(tmp_path_factory.mktemp("console"), image, docker_client) as s:
        yield s


@pytest.fixture()
def driver() -> Iterator[Any]:
    if not browser_available():
        pytest.skip("no chromium/chromedriver (run `agentbox doctor --fix --browser`)")
    d = browser()
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture()
def shots(request: pytest.FixtureRequest) -> Any:
    from console_env import output_dir

    def shot(d: Any, name: str) -> Path:
        path = output_dir() / f"{request.node.name}-{name}.png"
        d.save_screenshot(str(path))
        return path

    return shot
