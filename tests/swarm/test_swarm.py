"""What is particular to Swarm: placement, bind mounts pinned to a node, isolation, the key's delivery, and
a node lost (last: it kills and restarts a node)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import swarm_cluster

from agentbox.backends.base import SandboxState
from agentbox.backends.swarm import SwarmBackend
from agentbox.config import SandboxConfig
from agentbox.errors import ConfigError, SandboxError
from agentbox.sandbox import Sandbox

Make = Callable[..., Sandbox]


def _node(backend: SwarmBackend, sb: Sandbox) -> str:
    info = backend.find(sb.id)
    task = backend._tasks(info.container_id, desired="running")[info.container_id]
    return backend.nodes()[task.node_id].hostname


def _load(backend: SwarmBackend) -> dict[str, int]:
    """Sandboxes meant to run on each node now (other tests' may still be there: compare, do not assume)."""
    nodes = backend.nodes()
    load = {n.hostname: 0 for n in nodes.values() if n.state == "ready"}
    for task in backend._tasks().values():
        if task.desired == "running" and task.node_id in nodes and nodes[task.node_id].hostname in load:
            load[nodes[task.node_id].hostname] += 1
    return load


def test_sandboxes_spread_across_the_nodes(sandbox: Make, backend: SwarmBackend) -> None:
    sbs = []
    for _ in range(3):
        before = _load(backend)
        sb = sandbox()
        # Each new sandbox goes to a node that was among the least busy when it was placed.
        assert before[_node(backend, sb)] == min(before.values()), before
        sbs.append(sb)
    assert all(sb.run("echo up").output.strip() == "up" for sb in sbs)


def test_a_bind_mount_pins_the_sandbox_to_the_node_that_has_the_path(
    sandbox: Make, backend: SwarmBackend, tmp_path: Path
) -> None:
    (tmp_path / "in.txt").write_text("from the host")
    sb = sandbox(volumes=[f"{tmp_path}:/data"])
    assert _node(backend, sb) == "node2"  # the only node labelled agentbox.paths=/tmp
    assert sb.run("cat /data/in.txt").output.strip() == "from the host"


def test_a_bind_mount_no_node_has_is_refused_before_anything_is_made(sandbox: Make, backend: SwarmBackend) -> None:
    before = {i.id for i in backend.list()}
    with pytest.raises(ConfigError, match="no swarm node has the host path"):
        sandbox(volumes=["/srv/agentbox-nowhere:/data"])
    assert {i.id for i in backend.list()} == before


def test_two_sandboxes_cannot_reach_each_other(sandbox: Make) -> None:
    a, b = sandbox(), sandbox()
    probe = (
        "python3 -c \"import socket,sys\ntry:\n socket.create_connection((sys.argv[1], 49983), timeout=3)\n"
        " print('reached')\nexcept OSError as e:\n print('unreachable', type(e).__name__)\" {}"
    )
    assert b.run(probe.format(f"agentbox-{b.id}")).output.startswith("reached")  # control: its own server
    assert a.run(probe.format(f"agentbox-{b.id}")).output.startswith("unreachable")


def test_the_session_key_is_in_no_inspect(sandbox: Make, backend: SwarmBackend, cluster: swarm_cluster.Cluster) -> None:
    sb = sandbox()
    assert sb._key and sb.run("echo ok").output.strip() == "ok"
    service = cluster.docker(1, "service", "inspect", f"agentbox-{sb.id}").stdout
    node = _node(backend, sb)
    i = int(node[-1])
    container = cluster.docker(i, "ps", "-q", "--filter", f"label=agentbox.sandbox={sb.id}").stdout.strip()
    inspected = cluster.docker(i, "inspect", container).stdout
    assert sb.id in service and sb.id in inspected  # control: these are its inspects
    assert sb._key not in service and sb._key not in inspected


def test_a_killed_node_makes_its_sandbox_lost_and_never_restarted(
    sandbox: Make, image: str, cluster: swarm_cluster.Cluster
) -> None:
    pinned = SwarmBackend(SandboxConfig(
        placement=["node.hostname==node3"], swarm_manager=os.environ["SANDBOX_SWARM_MANAGER"],
        swarm_nodes=json.loads(os.environ["SANDBOX_SWARM_NODES"]),
    ))
    try:
        sb = sandbox(pinned)
        assert pinned.find(sb.id).state is SandboxState.RUNNING
        cluster.kill_node(3)
        killed = time.monotonic()
        while pinned.find(sb.id).state is not SandboxState.LOST and time.monotonic() - killed < 10:
            time.sleep(0.2)
        assert pinned.find(sb.id).state is SandboxState.LOST  # within 10 s (1 s dispatcher heartbeat)
        with pytest.raises(SandboxError, match="node3"):
            sb.pause()
        # Never started again elsewhere: still one task, on node3.
        info = pinned.find(sb.id)
        tasks = pinned.api.tasks(filters={"service": info.container_id})
        assert [t["NodeID"] for t in tasks] == [next(n.id for n in pinned.nodes().values() if n.hostname == "node3")]
        cluster.restart_node(3)
        sb.remove()
        assert cluster.docker(3, "ps", "-aq", "--filter", f"label=agentbox.sandbox={sb.id}").stdout.strip() == ""
    finally:
        if cluster.dockerd_pid(3) is None:
            cluster.restart_node(3)
        pinned.close()
