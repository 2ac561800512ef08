"""Where a sandbox goes (pure: no swarm needed): constraints as Swarm reads them, bind paths, spreading,
and the per-node capacity (``swarm_max_per_node``)."""

from __future__ import annotations

import pytest

from agentbox.backends.swarm.placement import PATHS_LABEL, Node, choose, matches, pinned_node
from agentbox.config import SandboxConfig
from agentbox.errors import ConfigError, SandboxError

N1 = Node("id1", "node1", "ready", "10.0.0.11", {}, role="manager", os="linux", arch="x86_64")
N2 = Node("id2", "node2", "ready", "10.0.0.12", {PATHS_LABEL: "/srv,/tmp", "pool": "agents"}, role="worker")
N3 = Node("id3", "node3", "ready", "10.0.0.13", {"pool": "agents"}, role="worker",
          engine_labels={"gpu": "yes"})
NODES = [N1, N2, N3]


def _choose(load: dict[str, int] | None = None, *, constraints: tuple[str, ...] = (), binds: tuple[str, ...] = (),
            max_per_node: int | None = None, nodes: list[Node] = NODES) -> str:
    return choose(nodes, load or {}, constraints=constraints, bind_paths=binds, max_per_node=max_per_node).hostname


def test_constraints_match_as_swarm_reads_them() -> None:
    assert matches(N2, "node.role==worker") and not matches(N1, "node.role==worker")
    assert matches(N1, "node.role != worker")
    assert matches(N1, "node.hostname==NODE1")  # Swarm compares values without regard to case
    assert matches(N3, "node.labels.pool==agents") and not matches(N1, "node.labels.pool==agents")
    assert matches(N1, "node.labels.pool!=agents")  # a missing label equals nothing
    assert matches(N3, "engine.labels.gpu==yes") and matches(N1, "node.platform.os==linux")
    with pytest.raises(ConfigError, match="not a Swarm constraint key"):
        matches(N1, "node.colour==blue")


def test_the_least_busy_eligible_node_is_chosen() -> None:
    assert _choose() == "node1"  # ties: by hostname
    assert _choose({"id1": 2, "id2": 1, "id3": 1}) == "node2"
    assert _choose({"id2": 0, "id3": 5}, constraints=("node.labels.pool==agents",)) == "node2"
    assert _choose(binds=("/srv/data",)) == "node2"  # the only node that has the path
    down = Node("id4", "node4", "down", "", {})
    assert _choose({"id1": 1, "id2": 1, "id3": 1}, nodes=[*NODES, down]) == "node1"  # never a down node


def test_per_node_capacity_is_enforced_with_a_clear_error() -> None:
    assert _choose({"id1": 1, "id2": 1}, max_per_node=1) == "node3"
    with pytest.raises(SandboxError, match=r"the swarm is full.*swarm_max_per_node=1.*node2 \(1\), node3 \(1\)"):
        _choose({"id2": 1, "id3": 1}, constraints=("node.role==worker",), max_per_node=1)
    assert _choose({"id2": 1, "id3": 1}, constraints=("node.role==worker",), max_per_node=2) == "node2"


def test_placement_that_no_node_can_satisfy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no ready swarm node satisfies"):
        _choose(constraints=("node.hostname==node9",))
    with pytest.raises(ConfigError, match="no swarm node has the host path"):
        _choose(binds=("/home/x",))


def test_the_pin_is_read_back_from_a_service_constraint() -> None:
    assert pinned_node(["node.role==worker", "node.id==abc"]) == "abc"
    assert pinned_node(["node.role==worker"]) is None


def test_capacity_setting_parses_and_must_be_positive() -> None:
    assert SandboxConfig.model_validate({"swarm_max_per_node": "3"}).swarm_max_per_node == 3
    with pytest.raises(ValueError, match="must be > 0"):
        SandboxConfig.model_validate({"swarm_max_per_node": 0})
