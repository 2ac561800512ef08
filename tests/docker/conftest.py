"""Shared fixtures of the real-Docker tests.

Everything these tests create carries the label ``agentbox.test=1`` (and this session's
``agentbox.test-session``) and is removed even when a test fails: per test by the factories, and once
more at the end of the session by label. When a
test fails, the ids of the sandboxes it made are added to its report.

The SDK's core behaviour tests run in both modes: a test that takes ``sdk_mode`` runs once against the
local engine and once through a real ``agentbox serve`` process (one per session, its own SQLite file,
the same engine), reached as a user would: ``AGENTBOX_SERVER`` and ``AGENTBOX_TOKEN`` in the environment.
What the service creates carries this session's labels like everything else, and is swept with it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentbox.backends.docker.lifecycle import close_stream
from agentbox.config import SandboxConfig
from agentbox.engine import engine_available

TEST_LABEL = "agentbox.test"
SESSION_LABEL = "agentbox.test-session"
# The session label scopes the final sweep to this run, so a concurrent run (or bench) keeps its things.
SESSION = uuid.uuid4().hex[:12]
LABELS = {TEST_LABEL: "1", SESSION_LABEL: SESSION}

pytestmark = pytest.mark.docker


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/docker as a docker test."""
    for item in items:
        if "/tests/docker/" in str(item.fspath):
            item.add_marker(pytest.mark.docker)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """Add the ids of the sandboxes a failed test made to its report."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    ids = getattr(item, "agentbox_ids", None)
    if report.failed and ids:
        report.sections.append(("agentbox sandboxes", "sandbox ids: " + ", ".join(ids)))


def _cleanup(client: Any) -> None:
    """Remove everything this session labelled (containers first: they hold networks and volumes)."""
    from docker.errors import APIError

    mine = {"label": [f"{TEST_LABEL}=1", f"{SESSION_LABEL}={SESSION}"]}
    for c in client.api.containers(all=True, filters=mine):
        with contextlib.suppress(APIError):
            client.api.remove_container(c["Id"], force=True, v=True)
    for n in client.api.networks(filters=mine):
        with contextlib.suppress(APIError):
            client.api.remove_network(n["Id"])
    for v in client.api.volumes(filters=mine).get("Volumes") or []:
        with contextlib.suppress(APIError):
            client.api.remove_volume(v["Name"])


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """One docker SDK client for the session; skips every docker test when no engine answers."""
    if not engine_available():
        pytest.skip("no Docker engine answers (run `agentbox doctor --fix`)")
    from agentbox.engine import docker_client as make_client

    client = make_client()
    try:
        yield client
    finally:
        _cleanup(client)
        client.close()


@pytest.fixture(scope="session")
def runtime_image(docker_client: Any) -> str:
    """The runtime image for the default configuration, built once per session if missing.

    ``AGENTBOX_TEST_IMAGE`` names an existing image to use instead (e.g. to test host-side changes
    without rebuilding).
    """
    override = os.environ.get("AGENTBOX_TEST_IMAGE")
    if override:
        return override
    from agentbox.images import ensure_runtime_image

    return ensure_runtime_image(SandboxConfig(), client=docker_client)


@pytest.fixture()
def labels() -> dict[str, str]:
    """The labels everything a test creates must carry (swept at the end of the session)."""
    return dict(LABELS)


@pytest.fixture()
def unique() -> Callable[[str], str]:
    """A name unique to this test run: unique("net") -> "abxt-net-1a2b3c4d"."""
    return lambda stem: f"abxt-{stem}-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def sandboxes(request: pytest.FixtureRequest, runtime_image: str, docker_client: Any) -> Iterator[Callable[..., Any]]:
    """Factory of started, test-labelled sandboxes: ``sandboxes(user_id=1234, ...)``; all removed after."""
    from agentbox.sandbox import Sandbox

    made: list[Sandbox] = []
    ids: list[str] = []
    request.node.agentbox_ids = ids

    def make(start: bool = True, **settings: Any) -> Sandbox:
        settings.setdefault("runtime_container_image", runtime_image)
        labels = {**LABELS, **settings.pop("labels", {})}
        sandbox = Sandbox(labels=labels, **settings)
        made.append(sandbox)
        ids.append(sandbox.id)
        if start:
            sandbox.start()
        return sandbox

    try:
        yield make
    finally:
        for sandbox in made:
            with contextlib.suppress(Exception):
                sandbox.remove()


@pytest.fixture()
def sidecar(docker_client: Any, runtime_image: str) -> Iterator[Callable[..., Any]]:
    """Factory of tiny HTTP sidecars (``python3 -m http.server``) from the runtime image; removed after."""
    made: list[str] = []

    def make(name: str, network: str, port: int = 8080) -> Any:
        container = docker_client.containers.run(
            runtime_image,
            entrypoint=["python3", "-u", "-m", "http.server", str(port)],
            command=[],
            name=name,
            network=network,
            labels=LABELS,
            detach=True,
            user="nobody",
            working_dir="/tmp",
        )
        made.append(container.id)
        # Ready when it listens: follow its log until the http.server banner (no sleeping).
        log = container.logs(stream=True, follow=True)
        try:
            for line in log:
                if b"Serving HTTP" in line:
                    break
        finally:
            close_stream(log)  # else its docker.sock connection stays open until collected
        container.reload()
        return container

    try:
        yield make
    finally:
        from docker.errors import APIError

        for cid in made:
            with contextlib.suppress(APIError):
                docker_client.api.remove_container(cid, force=True)


@pytest.fixture()
def network(docker_client: Any) -> Iterator[Callable[..., str]]:
    """Factory of test-labelled bridge networks not created by agentbox; removed after."""
    made: list[str] = []

    def make(name: str, labels: dict[str, str] | None = None, **options: Any) -> str:
        docker_client.api.create_network(name, driver="bridge", labels={**LABELS, **(labels or {})}, **options)
        made.append(name)
        return name

    try:
        yield make
    finally:
        from docker.errors import APIError

        for name in made:
            with contextlib.suppress(APIError):
                for c in docker_client.api.containers(all=True, filters={"network": name}):
                    docker_client.api.remove_container(c["Id"], force=True)
                docker_client.api.remove_network(name)


@dataclass(frozen=True)
class SdkService:
    """The session's ``agentbox serve`` process, and a (non-admin) token for the tests."""

    url: str
    token: str


@pytest.fixture(scope="session")
def sdk_service(
    docker_client: Any, runtime_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SdkService]:
    """A real ``agentbox serve`` (tests/service/service_process.py) whose default image is the test image.

    Bind mounts are allowed under pytest's temporary root (the tests' folders are made there), named
    volumes too: the mount tests run through it unchanged."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
    from service_process import start_service

    root = tmp_path_factory.mktemp("sdk-service")
    config = root / "service.toml"
    config.write_text(
        f'[sandbox]\nruntime_container_image = "{runtime_image}"\n\n[policy]\nallow_named_volumes = true\n'
    )
    svc = start_service(root / "data", "--config", str(config), "--allow-volume-root", str(root.parent))
    try:
        with svc.client(svc.admin_token) as admin:
            made = admin.post("/v1/tokens", json={"name": f"sdk-tests-{SESSION}"})
            assert made.status_code == 201, made.text
        yield SdkService(svc.url, made.json()["token"])
    finally:
        svc.stop()


@pytest.fixture(params=["local", "service"])
def sdk_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test against the local engine, then through the service (by environment, as users do)."""
    if request.param == "service":
        service: SdkService = request.getfixturevalue("sdk_service")
        monkeypatch.setenv("AGENTBOX_SERVER", service.url)
        monkeypatch.setenv("AGENTBOX_TOKEN", service.token)
    else:
        monkeypatch.delenv("AGENTBOX_SERVER", raising=False)
        monkeypatch.delenv("AGENTBOX_TOKEN", raising=False)
    return str(request.param)
