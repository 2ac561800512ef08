"""The swarm suite: a real three-node swarm (swarm_cluster.py), built once per test process and torn down
at its end, even when a test fails. A swarm that cannot come up fails these tests with the reason."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import swarm_cluster

from agentbox.backends import get_backend
from agentbox.backends.swarm import SwarmBackend
from agentbox.config import SandboxConfig
from agentbox.sandbox import Sandbox

LABELS = {"agentbox.test": "1", "agentbox.test-session": uuid.uuid4().hex[:12]}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/swarm/" in str(item.fspath):
            item.add_marker(pytest.mark.swarm)


@pytest.fixture(scope="session")
def image() -> str:
    return os.environ.get("AGENTBOX_TEST_IMAGE") or get_backend("docker").resolve_image(SandboxConfig())


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, image: str) -> swarm_cluster.Cluster:
    try:
        return swarm_cluster.shared(request.config.add_cleanup, [image])
    except Exception as exc:
        pytest.fail(f"the three-node swarm fixture did not come up: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def backend(cluster: swarm_cluster.Cluster) -> SwarmBackend:
    backend = get_backend("swarm")
    assert isinstance(backend, SwarmBackend)
    return backend


@pytest.fixture()
def labels() -> dict[str, str]:
    """The labels everything a test makes carries (the session's: swept with the swarm at the end)."""
    return dict(LABELS)


@pytest.fixture()
def sandbox(backend: SwarmBackend, image: str) -> Iterator[Callable[..., Sandbox]]:
    """Started sandboxes on the swarm (``backend=`` another SwarmBackend for other placement settings)."""
    made: list[Sandbox] = []

    def make(backend_: SwarmBackend | None = None, **settings: Any) -> Sandbox:
        sb = Sandbox(backend=backend_ or backend, labels=LABELS, runtime_container_image=image, **settings)
        made.append(sb)
        return sb.start()

    try:
        yield make
    finally:
        for sb in made:
            with contextlib.suppress(Exception):
                sb.remove()
