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
    """Sandboxes placed on each ready node now (other tests' may still be there: compare, do not assume)."""
    placed = backend.load()
    return {n.hostname: placed.get(n.id, 0) for n in backend.nodes().values() if n.state == "ready"}


def _backend(**settings: object) -> SwarmBackend:
    """Another SwarmBackend on the test swarm, with other operator settings."""
    return SwarmBackend(SandboxConfig.model_validate({
        "swarm_manager": os.environ["SANDBOX_SWARM_MANAGER"],
        "swarm_nodes": json.loads(os.environ["SANDBOX_SWARM_NODES"]), **settings,
    }))


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


def test_per_node_capacity_refuses_a_create_when_the_nodes_are_full(sandbox: Make, backend: SwarmBackend) -> None:
    room = _load(backend)["node1"] + 1  # node1 takes exactly one more
    capped = _backend(placement=["node.hostname==node1"], swarm_max_per_node=room)
    try:
        first = sandbox(capped)
        assert _node(backend, first) == "node1"
        before = {i.id for i in backend.list()}
        with pytest.raises(SandboxError, match=rf"the swarm is full.*swarm_max_per_node={room}.*node1 \({room}\)"):
            sandbox(capped)
        assert {i.id for i in backend.list()} == before  # nothing made for the refused one
        first.stop()  # a stopped sandbox holds no place
        second = sandbox(capped)
        assert second.run("echo placed").output.strip() == "placed"
    finally:
        capped.close()


def test_runsc_is_refused_up_front_naming_why(sandbox: Make, backend: SwarmBackend) -> None:
    before = {i.id for i in backend.list()}
    with pytest.raises(ConfigError, match="runtime='runsc' cannot be used on Swarm: a Swarm service cannot choose"):
        sandbox(runtime="runsc")
    assert {i.id for i in backend.list()} == before


# Each attempt, as root in the sandbox, reports whether it changed anything under /opt/agentbox.
ATTACK = r"""
attempt() {
    name=$1; shift
    if sh -c "$*" </dev/null >/dev/null 2>&1; then echo "$name=changed"; else echo "$name=refused"; fi
}
attempt create 'echo planted > /opt/agentbox/planted'
attempt append 'echo "# planted" >> /opt/agentbox/bin/agentbox-entrypoint'
attempt server-code 'echo "raise SystemExit" >> /opt/agentbox/src/agentbox/server/app.py'
attempt delete 'rm -f /opt/agentbox/server-requirements.txt'
attempt chmod 'chmod 0777 /opt/agentbox/src'
attempt umount 'umount -l /opt/agentbox'
attempt remount 'mount -o remount,rw /opt/agentbox'
"""


def test_root_in_the_sandbox_cannot_change_the_server_code(sandbox: Make) -> None:
    sb = sandbox(user_id=0)
    assert sb.run("id -u").output.strip() == "0"
    sb.write_file("/tmp/attack.sh", ATTACK)
    result = sb.run("sh /tmp/attack.sh", timeout=60)
    outcomes = dict(line.split("=", 1) for line in result.output.split() if "=" in line)
    assert len(outcomes) == 7 and set(outcomes.values()) == {"refused"}, outcomes
    # A read-only mount holds it, not permissions: the mount says so.
    options = sb.run("awk '$5 == \"/opt/agentbox\" {print $6}' /proc/self/mountinfo").output.split()
    assert options and options[0].split(",")[0] == "ro", options
    assert sb.run("echo still-serving").output.strip() == "still-serving"


def test_a_killed_node_makes_its_sandbox_lost_and_never_restarted(
    sandbox: Make, image: str, cluster: swarm_cluster.Cluster
) -> None:
    pinned = _backend(placement=["node.hostname==node3"])
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
        # Its stale copy kept running on node3 meanwhile (split brain); once node3 is back it is removed,
        # and the sandbox stays lost: not started again there either.
        stale = f"label=agentbox.sandbox={sb.id}"
        cluster.restart_node(3)
        back = time.monotonic()
        while cluster.docker(3, "ps", "-aq", "--filter", stale).stdout.strip() and time.monotonic() - back < 30:
            assert pinned.find(sb.id).state is SandboxState.LOST  # each look also settles it
            time.sleep(0.2)
        assert cluster.docker(3, "ps", "-aq", "--filter", stale).stdout.strip() == ""
        assert pinned.find(sb.id).state is SandboxState.LOST
        assert [i.state for i in pinned.list(labels={"agentbox.sandbox": sb.id})] == [SandboxState.LOST]
        tasks = pinned.api.tasks(filters={"service": info.container_id})
        assert [t for t in tasks if t["DesiredState"] == "running"] == []
        with pytest.raises(SandboxError, match="lost: its node node3 went down"):
            sb.pause()
        sb.remove()
        assert cluster.docker(3, "ps", "-aq", "--filter", stale).stdout.strip() == ""
        assert cluster.docker(3, "volume", "ls", "-q", "--filter", f"label=agentbox.created-for={sb.id}").stdout == ""
    finally:
        if cluster.dockerd_pid(3) is None:
            cluster.restart_node(3)
        pinned.close()
