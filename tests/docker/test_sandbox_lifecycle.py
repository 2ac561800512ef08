"""Lifecycle on a real engine: pause/resume, reattach from another process, list, logs, close, reap.

Tests taking ``sdk_mode`` run twice: locally and through an ``agentbox serve`` process (see conftest).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from agentbox.backends.base import SandboxState
from agentbox.backends.labels import LABELS
from agentbox.errors import SandboxError
from agentbox.protocol import OutputChunk
from agentbox.sandbox import AsyncSandbox, Sandbox, reap

pytestmark = pytest.mark.docker


def test_pause_and_resume_keep_processes_and_shell_state(sandboxes: Callable[..., Any], sdk_mode: str) -> None:
    sb = sandboxes()
    sb.run("mkdir -p /tmp/deep/dir && cd /tmp/deep/dir && export KEPT=yes")
    started = sb.run("sleep 1000 & echo $!")
    pid = started.output.strip().splitlines()[-1]
    sb.pause()
    assert sb.state is SandboxState.PAUSED
    with pytest.raises(SandboxError, match="paused"):
        sb.run("true")
    sb.resume()
    assert sb.state is SandboxState.RUNNING
    r = sb.run(f"pwd; echo $KEPT; ps -o comm= -p {pid}")
    assert r.output.split() == ["/tmp/deep/dir", "yes", "sleep"], r.output
    assert r.cwd == "/tmp/deep/dir"


def test_a_non_owning_handle_detaches_without_removing_or_taking_over(sandboxes: Callable[..., Any]) -> None:
    sb = sandboxes()  # not keep-alive: its owner's close() would remove it
    store = sb.backend.store
    record = store.load(sb.id)
    record.owner_pid = owner_before = 1  # as if another, still living, process owned it
    store.save(record)
    visitor = Sandbox.connect(sb.id, take_ownership=False)
    assert visitor.run("echo visiting").output.strip() == "visiting"
    visitor.detach()
    assert visitor.state is SandboxState.CLOSED
    with pytest.raises(SandboxError):
        visitor.run("true")
    assert sb.run("echo still here").output.strip() == "still here"
    assert store.load(sb.id).owner_pid == owner_before


def test_reattach_by_id_from_a_new_process(sandboxes: Callable[..., Any], sdk_mode: str) -> None:
    sb = sandboxes()
    sb.run("cd /tmp && export FROM_FIRST=1")
    code = (
        "import json, sys\n"
        "from agentbox.sandbox import Sandbox\n"
        "sb = Sandbox.connect(sys.argv[1])\n"
        "r = sb.run('pwd; echo $FROM_FIRST')\n"
        "print(json.dumps({'out': r.output.split(), 'state': sb.state.value, 'url': sb.url}))\n"
        "sb.client.close()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, sb.id], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert data == {"out": ["/tmp", "1"], "state": "running", "url": sb.url}
    if sdk_mode == "service":
        return  # no key on this side (the service holds it); the service tests check its records
    # the key is nowhere in docker inspect
    import docker

    attrs = docker.from_env().api.inspect_container(sb.container_id)
    record = json.loads((sb.backend.store.path(sb.id)).read_text())
    assert record["key"] not in json.dumps(attrs)


def test_the_session_key_is_not_in_docker_inspect_and_env_reaches_commands(
    sandboxes: Callable[..., Any], docker_client: Any
) -> None:
    sb = sandboxes(env={"MY_SECRET": "s3cr3t value"})
    assert sb.run("echo $MY_SECRET").output.strip() == "s3cr3t value"
    assert sb.run("ls -A /run/agentbox").output.strip() == ""  # key and env files deleted once read
    dumped = json.dumps(docker_client.api.inspect_container(sb.container_id))
    assert "s3cr3t" not in dumped
    assert sb._key not in dumped


def test_list_logs_stop_start_and_close(sandboxes: Callable[..., Any], docker_client: Any, sdk_mode: str) -> None:
    sb = sandboxes()
    infos = {i.id: i for i in Sandbox.list()}
    info = infos[sb.id]
    assert info.container_id == sb.container_id
    assert info.state is SandboxState.RUNNING
    # The owner: this process locally; through the service, the token (no process owns it).
    assert info.owner_pid == (os.getpid() if sdk_mode == "local" else None)
    assert info.url == (f"unix:{sb.uds}" if sb.uds else sb.url)
    assert sb.id in {i.id for i in Sandbox.list(all_owners=False)}
    assert "agentbox-server ready on" in sb.logs()
    sb.stop()
    assert sb.state is SandboxState.STOPPED
    sb.start()  # runs again, with the key handed over anew
    assert sb.run("echo again").output.strip() == "again"
    sb.close()
    assert sb.state is SandboxState.REMOVED
    assert docker_client.api.containers(all=True, filters={"label": f"{LABELS.SANDBOX}={sb.id}"}) == []
    assert sb.id not in {i.id for i in Sandbox.list()}
    if sdk_mode == "local":
        assert not sb.backend.store.path(sb.id).exists()


def test_keep_runtime_alive_survives_close(sandboxes: Callable[..., Any], sdk_mode: str) -> None:
    sb = sandboxes(keep_runtime_alive=True)
    sb.close()
    assert sb.state is SandboxState.CLOSED
    again = Sandbox.connect(sb.id)
    assert again.run("echo alive").output.strip() == "alive"
    again.remove()


def test_reap_removes_orphans_of_dead_owners_only(
    sandboxes: Callable[..., Any], runtime_image: str, docker_client: Any, labels: dict[str, str]
) -> None:
    mine = sandboxes()
    code = (
        "import json, sys\n"
        "from agentbox.sandbox import Sandbox\n"
        "sb = Sandbox(runtime_container_image=sys.argv[1], labels=json.loads(sys.argv[2])).start()\n"
        "print(sb.id)\n"
    )  # exits without closing: an orphan
    proc = subprocess.run(
        [sys.executable, "-c", code, runtime_image, json.dumps(labels)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    orphan = proc.stdout.strip().splitlines()[-1]
    # Only what this test run labelled: other processes' orphans on a shared engine are not ours to remove.
    assert orphan in reap(dry_run=True, labels=labels)
    assert docker_client.api.containers(all=True, filters={"label": f"{LABELS.SANDBOX}={orphan}"}) != []
    assert reap(labels={**labels, "agentbox.test-other": "1"}) == []  # the filter really filters
    reaped = reap(labels=labels)
    assert orphan in reaped and mine.id not in reaped
    assert docker_client.api.containers(all=True, filters={"label": f"{LABELS.SANDBOX}={orphan}"}) == []
    assert mine.run("echo still").output.strip() == "still"


def test_async_sandbox(runtime_image: str, labels: dict[str, str], sdk_mode: str) -> None:
    import asyncio

    async def main() -> tuple[str, str, list[str], bool]:
        async with AsyncSandbox(runtime_container_image=runtime_image, labels=labels) as sb:
            r = await sb.run("echo async")
            w = await sb.write_file("a.txt", "x")
            again = await AsyncSandbox.connect(sb.id, take_ownership=False)
            chunks = [e.text async for e in again.stream("echo streamed") if isinstance(e, OutputChunk)]
            await again.detach()
            listed = sb.id in {i.id for i in await AsyncSandbox.list()}
            return r.output.strip(), w.path, chunks, listed

    assert asyncio.run(main()) == ("async", "/workspace/a.txt", ["streamed\n"], True)


def _leftovers(docker_client: Any, error: Any) -> list[Any]:
    """What is left labelled with the sandbox the error is about (the error must name one)."""
    sandbox_id = error.sandbox_id
    assert sandbox_id and sandbox_id in str(error)
    api = docker_client.api
    found = list(api.containers(all=True, filters={"label": f"{LABELS.SANDBOX}={sandbox_id}"}))
    found += api.networks(filters={"label": f"{LABELS.CREATED_FOR}={sandbox_id}"})
    found += api.volumes(filters={"label": f"{LABELS.CREATED_FOR}={sandbox_id}"}).get("Volumes") or []
    return found


def test_a_server_that_exits_fails_with_its_log_and_leaves_nothing(
    sandboxes: Callable[..., Any], docker_client: Any, tmp_path: Any
) -> None:
    from agentbox.errors import SandboxStartError

    broken = tmp_path / "entrypoint"
    broken.write_text("#!/bin/sh\necho 'boom: the server cannot start' >&2\nexit 3\n")
    broken.chmod(0o755)
    with pytest.raises(SandboxStartError) as err:
        sandboxes(volumes=[f"{broken}:/opt/agentbox/bin/agentbox-entrypoint:ro"])
    message = str(err.value)
    assert "exited (code 3)" in message and "Last log lines" in message
    assert "boom: the server cannot start" in message  # the container's own words, from its log
    assert _leftovers(docker_client, err.value) == []


def test_a_missing_image_fails_clearly_and_leaves_nothing(sandboxes: Callable[..., Any], docker_client: Any) -> None:
    from agentbox.errors import ImageNotFoundError

    with pytest.raises(ImageNotFoundError, match="agentbox doctor") as err:
        sandboxes(runtime_container_image="agentbox-runtime:no-such-tag")
    assert _leftovers(docker_client, err.value) == []
