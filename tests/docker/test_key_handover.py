"""How a sandbox gets its session key, on a real engine: through a mounted host directory when the engine
shares this host's files (the default here), else copied in through the engine; both survive
``docker restart``, and neither leaves the key anywhere once the server has read it."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentbox.backends.docker import DockerBackend
from agentbox.backends.labels import LABELS
from agentbox.backends.spec import RUN_MOUNT

pytestmark = pytest.mark.docker


def _run_mount(docker_client: Any, container_id: str) -> dict[str, Any] | None:
    attrs = docker_client.api.inspect_container(container_id)
    return next((m for m in attrs["Mounts"] if m["Destination"] == RUN_MOUNT), None)


def test_a_local_sandbox_gets_its_key_through_a_private_directory_that_goes_with_it(
    sandboxes: Callable[..., Any], docker_client: Any
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the sandbox uid 1000 is another user of this host: only root hands it a directory")
    sb = sandboxes(user_id=1000, env={"GREETING": "hello there"})
    mount = _run_mount(docker_client, sb.container_id)
    assert mount is not None and mount["Type"] == "bind", "a local engine's sandbox gets its key by mount"
    directory = Path(mount["Source"])
    labels = docker_client.api.inspect_container(sb.container_id)["Config"]["Labels"]
    assert labels[LABELS.KEY_DIR] == str(directory) and directory.name == sb.id
    # Read and deleted by the server, env.sh sourced and deleted by the entrypoint: nothing is left, on
    # the host or inside. The directory is the sandbox user's (the server deletes the key as that user),
    # in a root-only parent no other user of this host can enter.
    assert os.listdir(directory) == []
    assert directory.stat().st_uid == 1000 and stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert directory.parent.stat().st_uid == 0 and stat.S_IMODE(directory.parent.stat().st_mode) == 0o700
    r = sb.run(f"echo $GREETING; ls -A {RUN_MOUNT}; id -u")
    assert r.output.split("\n")[:2] == ["hello there", "1000"], r.output
    # docker restart: the entrypoint waits for a new key, which is written into the same directory.
    docker_client.api.restart(sb.container_id, timeout=5)
    sb.start()
    assert sb.run("echo $GREETING").output.strip() == "hello there"
    assert os.listdir(directory) == []
    sb.remove()
    assert not directory.exists()


def test_a_key_copied_in_through_the_engine_works_the_same(
    sandboxes: Callable[..., Any], docker_client: Any
) -> None:
    # What a remote engine gets (and gVisor, and an image's own server): no host directory at all.
    backend = DockerBackend(mount_keys=False)
    try:
        sb = sandboxes(user_id=1000, env={"GREETING": "hello there"}, backend=backend)
        assert _run_mount(docker_client, sb.container_id) is None
        labels = docker_client.api.inspect_container(sb.container_id)["Config"]["Labels"]
        assert LABELS.KEY_DIR not in labels
        r = sb.run(f"echo $GREETING; ls -A {RUN_MOUNT}")
        assert r.output.strip() == "hello there", r.output  # the key and env.sh are gone from inside too
        docker_client.api.restart(sb.container_id, timeout=5)
        sb.start()
        assert sb.run("echo $GREETING").output.strip() == "hello there"
        sb.remove()
    finally:
        backend.close()
