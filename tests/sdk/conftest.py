"""The SDK behaviour tests use the real-Docker fixtures of tests/docker/conftest.py as they are.

Each test that takes ``sdk_mode`` runs locally and through a real ``agentbox serve`` process; what it
makes carries the session labels and is removed after it (and swept at the end), as in tests/docker.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "agentbox_tests_docker_fixtures", Path(__file__).resolve().parents[1] / "docker" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_docker = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _docker  # dataclasses look their module up there
_spec.loader.exec_module(_docker)

LABELS = _docker.LABELS
SdkService = _docker.SdkService
docker_client = _docker.docker_client
runtime_image = _docker.runtime_image
labels = _docker.labels
sandboxes = _docker.sandboxes
sdk_service = _docker.sdk_service
sdk_mode = _docker.sdk_mode
pytest_runtest_makereport = _docker.pytest_runtest_makereport


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every SDK behaviour test needs a real engine."""
    for item in items:
        if "/tests/sdk/" in str(item.fspath):
            item.add_marker(pytest.mark.docker)
