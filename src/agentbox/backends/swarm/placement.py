"""Where a sandbox goes: the one node chosen for it, from the nodes, their load and the settings (pure).

Swarm's own spreading counts tasks per *service* first, and each sandbox is a service of its own, so it
would stack sandboxes on one node; and Swarm has no limit of tasks per node across services
(``--replicas-max-per-node`` counts one service's tasks). So agentbox picks the node itself and pins
the service to it (``node.id==``): among the ready nodes that satisfy every configured constraint and
have every bind-mounted host path, the one running the fewest sandboxes, unless each of them already
runs ``swarm_max_per_node``. The configured constraints stay in the service too: Swarm checks them again.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from agentbox.errors import ConfigError, SandboxError

__all__ = ["PATHS_LABEL", "Node", "choose", "matches", "pinned_node"]

#: Node label listing the host directories a node provides to bind mounts (comma-separated prefixes):
#: ``docker node update --label-add agentbox.paths=/srv/data,/home node2``.
PATHS_LABEL = "agentbox.paths"

#: The constraint keys Swarm knows (docker service create --constraint); label keys take a suffix.
_KEYS = ("node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch")
_LABEL_KEYS = ("node.labels.", "engine.labels.")


@dataclass(frozen=True)
class Node:
    id: str
    hostname: str
    state: str
    addr: str
    labels: Mapping[str, str]
    role: str = ""
    os: str = ""
    arch: str = ""
    engine_labels: Mapping[str, str] = field(default_factory=dict)


def _attribute(node: Node, key: str) -> str | None:
    """The node's value for a constraint key; None when the node has no such label."""
    values = {"node.id": node.id, "node.hostname": node.hostname, "node.role": node.role,
              "node.platform.os": node.os, "node.platform.arch": node.arch}
    if key in values:
        return values[key]
    for prefix, labels in (("node.labels.", node.labels), ("engine.labels.", node.engine_labels)):
        if key.startswith(prefix) and len(key) > len(prefix):
            return labels.get(key[len(prefix):])
    raise ConfigError(
        f"placement: {key!r} is not a Swarm constraint key (use one of {', '.join(_KEYS)}, "
        "node.labels.NAME or engine.labels.NAME)"
    )


def matches(node: Node, constraint: str) -> bool:
    """Whether ``node`` satisfies ``constraint`` (``key==value`` or ``key!=value``), as Swarm decides it:
    values compare without regard to case; a missing label equals nothing."""
    op = "==" if "==" in constraint else "!="
    key, _, value = (part.strip() for part in constraint.partition(op))
    actual = _attribute(node, key)
    equal = actual is not None and actual.lower() == value.lower()
    return equal if op == "==" else not equal


def _provides(node: Node, path: str) -> bool:
    prefixes = [p.strip().rstrip("/") for p in node.labels.get(PATHS_LABEL, "").split(",") if p.strip()]
    return any(path == p or path.startswith(p + "/") or p == "" for p in prefixes)


def pinned_node(constraints: Sequence[str]) -> str | None:
    """The node id a service was pinned to by :func:`choose` (its ``node.id==`` constraint), if any."""
    for c in constraints:
        key, _, value = c.replace(" ", "").partition("==")
        if key == "node.id" and value:
            return value
    return None


def choose(
    nodes: Collection[Node], load: Mapping[str, int], *, constraints: Sequence[str], bind_paths: Sequence[str],
    max_per_node: int | None,
) -> Node:
    """The node for a new sandbox: ready, matching ``constraints``, having ``bind_paths``, under
    ``max_per_node`` sandboxes (``load``: node id -> sandboxes placed there), least loaded first (then by
    hostname). ConfigError when no node can ever take it; SandboxError when the nodes that can are full."""
    ready = [n for n in nodes if n.state == "ready"]
    eligible = [n for n in ready if all(matches(n, c) for c in constraints)]
    if not eligible:
        raise ConfigError(
            f"no ready swarm node satisfies the placement constraints {list(constraints)} "
            f"(ready: {', '.join(sorted(n.hostname for n in ready)) or 'none'})"
        )
    able = [n for n in eligible if all(_provides(n, p) for p in bind_paths)]
    if not able:
        raise ConfigError(
            f"no swarm node has the host path(s) {', '.join(bind_paths)} for a bind mount: label the node that "
            f"has them (docker node update --label-add {PATHS_LABEL}=/path NODE) or add a placement constraint "
            "node.hostname==NODE; or use a named volume, which works on any node"
        )
    room = [n for n in able if max_per_node is None or load.get(n.id, 0) < max_per_node]
    if not room:
        busy = ", ".join(f"{n.hostname} ({load.get(n.id, 0)})" for n in sorted(able, key=lambda n: n.hostname))
        raise SandboxError(
            f"the swarm is full: every node this sandbox may run on already runs swarm_max_per_node="
            f"{max_per_node} sandboxes ({busy}); remove or stop one, raise swarm_max_per_node, or add a node"
        )
    return min(room, key=lambda n: (load.get(n.id, 0), n.hostname))
