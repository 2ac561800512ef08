"""Recovery on a real engine: a handle whose server went away notices it and start() brings it back.

Faults made here: the server killed inside the container, ``docker restart`` of the container, the shared
default network removed between two starts. An engine (dockerd) restart is not made here: the engine is
shared with other processes; test_dockerd_restart.py makes it on a private engine of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agentbox.backends.base import SandboxState
from agentbox.backends.docker import DockerBackend
from agentbox.errors import SandboxError
from agentbox.sandbox import Sandbox

pytestmark = pytest.mark.docker


def _kill_everything_but_init(docker_client: Any, container_id: str) -> None:
    """``kill -KILL -1`` as root inside: every process but tini (pid 1), so the server dies and tini with it."""
    exec_id = docker_client.api.exec_create(container_id, ["kill", "-KILL", "-1"], user="root")["Id"]
    docker_client.api.exec_start(exec_id)
    docker_client.api.wait(container_id, timeout=60)  # tini exits with its child: the container stops


def test_a_killed_server_is_noticed_and_start_recovers_it(sandboxes: Callable[..., Any], docker_client: Any) -> None:
    sb = sandboxes()
    sb.write_file("/workspace/kept.txt", "kept")
    _kill_everything_but_init(docker_client, sb.container_id)
    with pytest.raises(SandboxError):
        sb.run("true")  # the old address answers no more
    assert sb.refresh() is SandboxState.STOPPED
    with pytest.raises(SandboxError, match="stopped"):
        sb.run("true")  # a clear state, not a stale URL
    sb.start()  # the key is delivered again
    assert sb.state is SandboxState.RUNNING
    assert sb.run("cat /workspace/kept.txt").output.strip() == "kept"


def test_a_call_that_loses_its_server_says_the_sandbox_stopped(
    sandboxes: Callable[..., Any], docker_client: Any
) -> None:
    # Sandbox._calling is the guard the runtime forwards (run, read_file...) go through.
    sb = sandboxes()
    _kill_everything_but_init(docker_client, sb.container_id)
    with pytest.raises(SandboxError, match="stopped") as err, sb._calling():
        sb.client.run("true")
    assert err.value.sandbox_id == sb.id and err.value.__cause__ is not None
    assert sb.state is SandboxState.STOPPED  # noticed: no stale "running" at the old address
    sb.start()
    assert sb.run("echo back").output.strip() == "back"


def test_start_on_a_stale_running_handle_recovers_without_refresh(
    sandboxes: Callable[..., Any], docker_client: Any
) -> None:
    sb = sandboxes()
    old_url = sb.url
    _kill_everything_but_init(docker_client, sb.container_id)
    assert sb.state is SandboxState.RUNNING  # the handle has not asked yet
    sb.start()
    assert sb.run("echo back").output.strip() == "back"
    assert sb.url != old_url or sb.client.alive().status == "ok"


def test_docker_restart_is_recovered_with_the_key_delivered_again(
    sandboxes: Callable[..., Any], docker_client: Any
) -> None:
    sb = sandboxes()
    sb.run("echo before > /tmp/marker")
    docker_client.api.restart(sb.container_id, timeout=5)
    sb.start()  # notices (the old port is gone, or nobody answers there) and hands the key over again
    assert sb.state is SandboxState.RUNNING
    r = sb.run("cat /tmp/marker; echo after")
    assert r.output.split() == ["before", "after"], r.output
    assert docker_client.api.inspect_container(sb.container_id)["State"]["Running"]


def test_docker_restart_is_recovered_by_a_reconnect(sandboxes: Callable[..., Any], docker_client: Any) -> None:
    sb = sandboxes()
    docker_client.api.restart(sb.container_id, timeout=5)
    again = Sandbox.connect(sb.id, take_ownership=False)
    try:
        if again.state is SandboxState.STOPPED:
            again.start()  # it had already exited by itself: a plain restart
        assert again.run("echo reconnected").output.strip() == "reconnected"
    finally:
        again.detach()


@pytest.fixture()
def private_default_network(unique: Callable[[str], str], docker_client: Any) -> Iterator[tuple[DockerBackend, str]]:
    """A backend whose shared default network is this test's own (removing ``agentbox-net`` itself would
    pull it from under other processes' sandboxes)."""
    name = unique("default-net")
    backend = DockerBackend(default_network=name)
    try:
        yield backend, name
    finally:
        from docker.errors import APIError

        with contextlib.suppress(APIError):
            docker_client.api.remove_network(name)
        backend.close()


def test_a_removed_default_network_is_made_again_on_the_next_start(
    private_default_network: tuple[DockerBackend, str], runtime_image: str, labels: dict[str, str],
    docker_client: Any,
) -> None:
    backend, name = private_default_network
    with Sandbox(backend=backend, runtime_container_image=runtime_image, labels=labels) as first:
        assert first.run("echo one").output.strip() == "one"
    docker_client.api.remove_network(name)  # e.g. `docker network prune` while this process runs
    for word in ("two", "three"):  # before the fix, every later start in the process failed
        with Sandbox(backend=backend, runtime_container_image=runtime_image, labels=labels) as sb:
            assert sb.run(f"echo {word}").output.strip() == word
            attached = docker_client.api.inspect_container(sb.container_id)["NetworkSettings"]["Networks"]
            assert set(attached) == {name}


def test_a_stopped_sandbox_whose_network_was_removed_starts_again(
    private_default_network: tuple[DockerBackend, str], runtime_image: str, labels: dict[str, str],
    docker_client: Any,
) -> None:
    backend, name = private_default_network
    sb = Sandbox(backend=backend, runtime_container_image=runtime_image, labels=labels).start()
    try:
        sb.stop()
        docker_client.api.remove_network(name)
        sb.start()
        assert sb.run("echo reattached").output.strip() == "reattached"
    finally:
        sb.remove()


# The engine (dockerd) restart is tested in test_dockerd_restart.py, on a private dockerd (opt-in).
