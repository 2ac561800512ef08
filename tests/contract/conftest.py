"""The backend contract suite: behaviour every backend must show, whatever engine it drives.

Each test takes the ``backend`` fixture, parametrised over :data:`BACKENDS`; a new backend (Swarm) is
added there, with an :class:`EngineProbe` of its own: the few things a test must ask the engine directly
(what is left behind, a sidecar to reach, a network to join), so the tests themselves stay engine-neutral.

Everything made here carries ``agentbox.test=1``, this session's label and, per test, a case label; it
is removed by the test and swept once more by label at the end of the session. Nothing is reaped but
what carries this session's labels.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentbox.backends import get_backend
from agentbox.backends.base import Backend
from agentbox.config import SandboxConfig
from agentbox.sandbox import Sandbox

TEST_LABEL = "agentbox.test"
SESSION_LABEL = "agentbox.test-session"
CASE_LABEL = "agentbox.test-case"
SESSION = uuid.uuid4().hex[:12]
SESSION_LABELS = {TEST_LABEL: "1", SESSION_LABEL: SESSION}


class EngineProbe(abc.ABC):
    """What a contract test asks an engine directly, beside the Backend interface."""

    @abc.abstractmethod
    def leftovers(self, labels: dict[str, str]) -> list[str]:
        """Descriptions of every container, network and volume carrying all of ``labels``."""

    @abc.abstractmethod
    def create_network(self, name: str, labels: dict[str, str]) -> None:
        """A network agentbox did not create, that sandboxes can join by name."""

    @abc.abstractmethod
    def sidecar(self, name: str, network: str, image: str, labels: dict[str, str]) -> None:
        """An HTTP server answering on port 8080 as ``name`` on ``network``, ready when this returns."""

    @abc.abstractmethod
    def sweep(self, labels: dict[str, str]) -> None:
        """Remove everything carrying all of ``labels`` (end of session, whatever the tests left)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the probe's connections."""


class DockerProbe(EngineProbe):
    """The Docker engine, through the docker SDK."""

    def __init__(self) -> None:
        from agentbox.engine import docker_client

        self.client = docker_client()

    def _filters(self, labels: dict[str, str]) -> dict[str, list[str]]:
        return {"label": [f"{k}={v}" for k, v in labels.items()]}

    def leftovers(self, labels: dict[str, str]) -> list[str]:
        api, filters = self.client.api, self._filters(labels)
        found = [f"container {c['Id'][:12]}" for c in api.containers(all=True, filters=filters)]
        found += [f"network {n['Name']}" for n in api.networks(filters=filters)]
        found += [f"volume {v['Name']}" for v in api.volumes(filters=filters).get("Volumes") or []]
        return found

    def create_network(self, name: str, labels: dict[str, str]) -> None:
        self.client.api.create_network(name, driver="bridge", labels=labels)

    def sidecar(self, name: str, network: str, image: str, labels: dict[str, str]) -> None:
        container = self.client.containers.run(
            image, entrypoint=["python3", "-u", "-m", "http.server", "8080"], command=[], name=name,
            network=network, labels=labels, detach=True, user="nobody", working_dir="/tmp",
        )
        from agentbox.backends.docker.lifecycle import close_stream

        log = container.logs(stream=True, follow=True)
        try:
            for line in log:  # ready when it listens: no sleeping
                if b"Serving HTTP" in line:
                    return
        finally:
            close_stream(log)  # else its docker.sock connection stays open until collected
        raise AssertionError(f"sidecar {name} exited: {container.logs().decode(errors='replace')}")

    def sweep(self, labels: dict[str, str]) -> None:
        from docker.errors import APIError

        api, filters = self.client.api, self._filters(labels)
        for c in api.containers(all=True, filters=filters):
            with contextlib.suppress(APIError):
                api.remove_container(c["Id"], force=True, v=True)
        for n in api.networks(filters=filters):
            with contextlib.suppress(APIError):
                api.remove_network(n["Id"])
        for v in api.volumes(filters=filters).get("Volumes") or []:
            with contextlib.suppress(APIError):
                api.remove_volume(v["Name"])

    def close(self) -> None:
        self.client.close()


class SwarmProbe(EngineProbe):
    """A Docker Swarm: services, overlays and the manager's containers, volumes on every node."""

    def __init__(self) -> None:
        import docker

        self.manager = docker.DockerClient(base_url=os.environ["SANDBOX_SWARM_MANAGER"])
        urls = json.loads(os.environ["SANDBOX_SWARM_NODES"]).values()
        self.nodes = [docker.DockerClient(base_url=url) for url in urls]

    def _filters(self, labels: dict[str, str]) -> dict[str, list[str]]:
        return {"label": [f"{k}={v}" for k, v in labels.items()]}

    def leftovers(self, labels: dict[str, str]) -> list[str]:
        api, filters = self.manager.api, self._filters(labels)
        found = [f"service {s['Spec']['Name']}" for s in api.services(filters=filters)]
        found += [f"network {n['Name']}" for n in api.networks(filters=filters)]
        for node in self.nodes:
            found += [f"container {c['Id'][:12]}" for c in node.api.containers(all=True, filters=filters)]
            found += [f"volume {v['Name']}" for v in node.api.volumes(filters=filters).get("Volumes") or []]
        return found

    def create_network(self, name: str, labels: dict[str, str]) -> None:
        self.manager.api.create_network(name, driver="overlay", attachable=True, labels=labels)

    def sidecar(self, name: str, network: str, image: str, labels: dict[str, str]) -> None:
        from docker.types import ContainerSpec, EndpointSpec, RestartPolicy, TaskTemplate

        spec = ContainerSpec(image, command=["python3", "-u", "-m", "http.server", "8080"], user="nobody",
                             workdir="/tmp", labels=labels, init=True)
        self.manager.api.create_service(
            TaskTemplate(spec, restart_policy=RestartPolicy(condition="none"), networks=[{"Target": network}]),
            name=name, labels=labels, endpoint_spec=EndpointSpec(mode="dnsrr"),
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # ready when it listens
            for node in self.nodes:
                for c in node.api.containers(filters={"label": f"com.docker.swarm.service.name={name}"}):
                    if b"Serving HTTP" in node.api.logs(c["Id"]):
                        return
            time.sleep(0.1)
        raise AssertionError(f"sidecar {name} did not start on the swarm")

    def sweep(self, labels: dict[str, str]) -> None:
        from docker.errors import APIError

        api, filters = self.manager.api, self._filters(labels)
        for svc in api.services(filters=filters):
            with contextlib.suppress(APIError):
                api.remove_service(svc["ID"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            node.api.containers(all=True, filters=filters) for node in self.nodes
        ):
            time.sleep(0.2)
        for n in api.networks(filters=filters):
            with contextlib.suppress(APIError):
                api.remove_network(n["Id"])
        for node in self.nodes:
            for v in node.api.volumes(filters=filters).get("Volumes") or []:
                with contextlib.suppress(APIError):
                    node.api.remove_volume(v["Name"])

    def close(self) -> None:
        self.manager.close()
        for node in self.nodes:
            node.close()


#: Every backend the contract runs against, with the marker that says what it needs.
BACKENDS = [
    pytest.param("docker", marks=pytest.mark.docker, id="docker"),
    pytest.param("swarm", marks=pytest.mark.swarm, id="swarm"),
]
PROBES: dict[str, Callable[[], EngineProbe]] = {"docker": DockerProbe, "swarm": SwarmProbe}


def swarm_cluster(request: pytest.FixtureRequest) -> Any:
    """The three-node swarm of this test process (tests/swarm/swarm_cluster.py), with agentbox pointed at
    it; a swarm that cannot come up fails the tests with the reason, never skips them."""
    here = str(Path(__file__).resolve().parents[1] / "swarm")
    if here not in sys.path:
        sys.path.insert(0, here)
    import swarm_cluster as cluster_module

    from agentbox.backends import get_backend
    from agentbox.config import SandboxConfig

    image = os.environ.get("AGENTBOX_TEST_IMAGE") or get_backend("docker").resolve_image(SandboxConfig())
    try:
        return cluster_module.shared(request.config.add_cleanup, [image])
    except Exception as exc:
        pytest.fail(f"the three-node swarm fixture did not come up: {exc}", pytrace=False)


@pytest.fixture(scope="session", params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    """The backend under test."""
    name = str(request.param)
    if name == "swarm":
        swarm_cluster(request)
    if name == "docker":
        from agentbox.engine import engine_available

        if not engine_available():
            pytest.skip("no Docker engine answers (run `agentbox doctor --fix`)")
    return name


@pytest.fixture(scope="session")
def backend(backend_name: str) -> Backend:
    """The process-wide backend of that name (as `Sandbox` gets it from the ``backend`` key)."""
    return get_backend(backend_name)


@pytest.fixture(scope="session")
def probe(backend_name: str) -> Iterator[EngineProbe]:
    """The engine probe of that backend; sweeps this session's labels at the end."""
    engine = PROBES[backend_name]()
    try:
        yield engine
    finally:
        engine.sweep(SESSION_LABELS)
        engine.close()


@pytest.fixture(scope="session")
def image(backend: Backend) -> str:
    """The runtime image (``AGENTBOX_TEST_IMAGE``, or the default one, built if missing)."""
    return os.environ.get("AGENTBOX_TEST_IMAGE") or backend.resolve_image(SandboxConfig())


@pytest.fixture()
def labels() -> dict[str, str]:
    """Labels of everything this test makes: the session's, plus a case label of its own."""
    return {**SESSION_LABELS, CASE_LABEL: uuid.uuid4().hex[:12]}


@pytest.fixture()
def unique() -> Callable[[str], str]:
    """A name unique to this run: unique("net") -> "abxc-net-1a2b3c4d"."""
    return lambda stem: f"abxc-{stem}-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def sandbox(
    request: pytest.FixtureRequest, backend: Backend, image: str, labels: dict[str, str], probe: EngineProbe
) -> Iterator[Callable[..., Sandbox]]:
    """Factory of started sandboxes on the backend under test; all removed after the test."""
    made: list[Sandbox] = []

    def make(start: bool = True, **settings: Any) -> Sandbox:
        settings.setdefault("runtime_container_image", image)
        sb = Sandbox(backend=backend, labels=labels, **settings)
        made.append(sb)
        if start:
            sb.start()
        return sb

    try:
        yield make
    finally:
        for sb in made:
            with contextlib.suppress(Exception):
                sb.remove()


@pytest.fixture()
def owner_uid() -> Callable[[Path], int]:
    """``owner_uid(folder)``: the uid to run a sandbox as so that what it writes in ``folder`` proves the
    uid switch: another uid than ours when we can hand the folder to it (root), else ours."""

    def give(folder: Path) -> int:
        if os.geteuid() == 0:
            os.chown(folder, 1234, 1234)
            return 1234
        return os.geteuid()

    return give
