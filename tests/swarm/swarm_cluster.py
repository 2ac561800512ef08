"""A real three-node Docker Swarm on this one machine, for the swarm tests and bench; leaves nothing behind.

Each node is a ``dockerd`` of its own in a network namespace of its own (own data root, exec root,
containerd, hostname and cgroup parent), beside the default engine, which is never touched::

    host: veth abxs-host 10.79.0.254 ─┐
    netns abxs-lan: br0 10.79.0.1 ────┴─ veths ─ netns abxs-n1 10.79.0.11 dockerd node1 (manager)
                                               ─ netns abxs-n2 10.79.0.12 dockerd node2 (worker)
                                               ─ netns abxs-n3 10.79.0.13 dockerd node3 (worker)

The bridge lives in its own namespace (an empty firewall) because the host's FORWARD policy is DROP and
bridged packets go through it (br_netfilter); the host firewall, /etc/docker/daemon.json and the default
dockerd stay as they are. The host gets one veth into that bridge so it can reach the manager's address
(where agentbox's relay publishes its port), the way a control plane on the LAN reaches a real swarm.

What this kernel lacks (IPVS, ESP): services use ``--endpoint-mode dnsrr`` and no ingress mesh; without a
registry every node runs with ``DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1``. See
shared/design/swarm-on-one-machine.md (facts copied from it, not its script).

``Cluster.up()`` builds it; ``Cluster.down()`` removes every process (only ours: checked by command line),
namespace, cgroup and directory, and is safe to call after a partial ``up`` or a killed node.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

N = 3
LAN = "abxs-lan"
SUBNET = "10.79.0"
HOST_VETH = "abxs-host"
HOST_ADDR = f"{SUBNET}.254"
DATA = Path("/var/lib/agentbox-swarmtest")
RUN = Path("/run/agentbox-swarmtest")
POOL = "10.212.0.0/16"
CGROUP_ROOT = Path("/sys/fs/cgroup")


#: The pid of the process that built the fixture: a later run clears the remains once that one is gone.
OWNER = RUN / "owner"


def _owner() -> int | None:
    """The live process (not this one) that built the fixture on the machine, if any."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(OWNER.read_text())
        if pid != os.getpid() and Path(f"/proc/{pid}").exists():
            return pid
    return None


class ClusterError(RuntimeError):
    """The swarm could not be built; the message says which step and why."""


def _run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def ns(i: int) -> str:
    return f"abxs-n{i}"


def sock(i: int) -> str:
    return f"unix://{RUN}/node{i}.sock"


def addr(i: int) -> str:
    return f"{SUBNET}.1{i}"


def _ours(pid: int) -> bool:
    """True when ``pid`` is one of this fixture's dockerds (never signal anything else by pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return cmdline.startswith("dockerd ") and f"--exec-root {RUN}/node" in cmdline


@dataclass
class Cluster:
    """The three nodes; ``docker(i, ...)`` runs the docker CLI against node ``i``."""

    nodes: int = N
    images: list[str] = field(default_factory=list)
    started: bool = False

    @property
    def manager(self) -> str:
        return sock(1)

    @property
    def node_engines(self) -> dict[str, str]:
        """Node hostname -> engine URL (what agentbox's ``swarm_nodes`` setting takes)."""
        return {f"node{i}": sock(i) for i in range(1, self.nodes + 1)}

    def docker(self, i: int, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run("docker", "-H", sock(i), *args, timeout=timeout, check=check)

    # -- up ------------------------------------------------------------------------------------------------

    def up(self) -> Cluster:
        """Namespaces, three dockerds, the swarm (1 s dispatcher heartbeat), and ``images`` in every node."""
        self.started = True
        for tool in ("ip", "unshare", "dockerd", "docker", "setsid"):
            if shutil.which(tool) is None:
                raise ClusterError(f"{tool} is not installed (iproute2, util-linux, docker.io)")
        if self.leftovers():
            owner = _owner()
            if owner is not None:
                raise ClusterError(f"a swarm fixture is in use by process {owner} ({LAN}, {RUN}); if that is not "
                                   f"a test run, remove it with: python {__file__} down")
            # A killed run's remains (its teardown never ran; its dockerds may still run): ours to clear.
            self.down()
        (DATA / "logs").mkdir(parents=True, exist_ok=True)
        RUN.mkdir(parents=True, exist_ok=True)
        OWNER.write_text(str(os.getpid()))
        _run("ip", "netns", "add", LAN)
        _run("ip", "-n", LAN, "link", "set", "lo", "up")
        _run("ip", "-n", LAN, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", LAN, "addr", "add", f"{SUBNET}.1/24", "dev", "br0")
        _run("ip", "-n", LAN, "link", "set", "br0", "up")
        # The host's way in: one veth, its peer on the bridge.
        _run("ip", "link", "add", HOST_VETH, "type", "veth", "peer", "name", "uplink", "netns", LAN)
        _run("ip", "-n", LAN, "link", "set", "uplink", "master", "br0", "up")
        _run("ip", "addr", "add", f"{HOST_ADDR}/24", "dev", HOST_VETH)
        _run("ip", "link", "set", HOST_VETH, "up")
        mounts = [
            line.split()[:4] for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1] == str(CGROUP_ROOT) or line.split()[1].startswith(f"{CGROUP_ROOT}/")
        ]
        (RUN / "cgroup-mounts").write_text("".join(f"{t} {o} {s} {p}\n" for s, p, t, o in mounts))
        for i in range(1, self.nodes + 1):
            _run("ip", "netns", "add", ns(i))
            _run("ip", "-n", ns(i), "link", "set", "lo", "up")
            _run("ip", "-n", LAN, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0", "netns", ns(i))
            _run("ip", "-n", LAN, "link", "set", f"p{i}", "master", "br0", "up")
            _run("ip", "-n", ns(i), "addr", "add", f"{addr(i)}/24", "dev", "eth0")
            _run("ip", "-n", ns(i), "link", "set", "eth0", "up")
            _run("ip", "-n", ns(i), "route", "add", "default", "via", f"{SUBNET}.1")  # a dead end: no uplink
            (DATA / f"node{i}").mkdir(parents=True, exist_ok=True)
            (RUN / f"node{i}").mkdir(parents=True, exist_ok=True)
            (RUN / f"node{i}" / "daemon.json").write_text("{}")  # never /etc/docker/daemon.json
            self.start_node(i)
        for i in range(1, self.nodes + 1):
            self.wait_engine(i)
        self.docker(1, "swarm", "init", "--advertise-addr", addr(1), "--listen-addr", f"{addr(1)}:2377",
                    "--data-path-addr", addr(1), "--default-addr-pool", POOL, "--dispatcher-heartbeat", "1s")
        token = self.docker(1, "swarm", "join-token", "-q", "worker").stdout.strip()
        for i in range(2, self.nodes + 1):
            self.docker(i, "swarm", "join", "--token", token, "--advertise-addr", addr(i),
                        "--listen-addr", f"{addr(i)}:2377", "--data-path-addr", addr(i), f"{addr(1)}:2377")
        self.load_images()
        self.wait_ready()
        return self

    def start_node(self, i: int) -> None:
        """Start (or restart, after a kill) node ``i``'s dockerd, detached, in its namespace."""
        script = (
            f'while read t o s p; do mkdir -p "$p"; mount -t "$t" -o "$o" "$s" "$p"; done < {RUN}/cgroup-mounts\n'
            f"hostname node{i}\n"
            "exec env DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 dockerd"
            f" --config-file {RUN}/node{i}/daemon.json --data-root {DATA}/node{i} --exec-root {RUN}/node{i}"
            f" --pidfile {RUN}/node{i}/dockerd.pid -H {sock(i)} --bip 172.29.{i}.1/24"
            f" --cgroup-parent /abxs-node{i} --storage-driver overlay2"
        )
        # setsid --fork: dockerd runs on in a child of setsid, which itself exits at once and is reaped
        # here (a Popen dropped while its process runs is a ResourceWarning, and a zombie until then).
        with open(DATA / "logs" / f"node{i}.log", "ab") as log:
            subprocess.run(
                ["setsid", "--fork", "ip", "netns", "exec", ns(i), "unshare", "--uts", "sh", "-c", script],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True, check=True, timeout=30,
            )

    def wait_engine(self, i: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.docker(i, "version", "--format", "{{.Server.Version}}", check=False, timeout=10).returncode:
            if time.monotonic() > deadline:
                tail = (DATA / "logs" / f"node{i}.log").read_text(errors="replace")[-2000:]
                raise ClusterError(f"node{i}'s dockerd did not answer in {timeout:.0f}s; its log ends:\n{tail}")
            time.sleep(0.2)

    def node_state(self, name: str) -> str:
        out = self.docker(1, "node", "inspect", name, "--format", "{{.Status.State}}", check=False)
        return out.stdout.strip()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while any(self.node_state(f"node{i}") != "ready" for i in range(1, self.nodes + 1)):
            if time.monotonic() > deadline:
                raise ClusterError(f"not every node is ready: {self.docker(1, 'node', 'ls').stdout}")
            time.sleep(0.2)

    def load_images(self) -> None:
        """``docker save`` once from the default engine, ``docker load`` into every node (in parallel)."""
        if not self.images:
            return
        tar = DATA / "images.tar"
        _run("docker", "save", "-o", str(tar), *self.images, timeout=600)
        with ThreadPoolExecutor(self.nodes) as pool:
            list(pool.map(lambda i: self.docker(i, "load", "-i", str(tar), timeout=600), range(1, self.nodes + 1)))
        tar.unlink()

    # -- node loss -----------------------------------------------------------------------------------------

    def dockerd_pid(self, i: int) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int((RUN / f"node{i}" / "dockerd.pid").read_text().strip())
            return pid if _ours(pid) else None
        return None

    def kill_node(self, i: int) -> None:
        """SIGKILL node ``i``'s dockerd (its containerd dies with it; its task processes survive)."""
        pid = self.dockerd_pid(i)
        if pid is None:
            raise ClusterError(f"node{i}'s dockerd is not running")
        os.kill(pid, signal.SIGKILL)
        while _ours(pid):
            time.sleep(0.05)
        # Killed, it may linger as a zombie until its reaper (init) gets to it; a dockerd started meanwhile
        # refuses to run while the pid in its pid file is still in /proc. It is this fixture's, and dead.
        (RUN / f"node{i}" / "dockerd.pid").unlink(missing_ok=True)

    def restart_node(self, i: int) -> None:
        """Start a killed node again (same data root: it rejoins) and wait until the manager sees it ready."""
        self.start_node(i)
        self.wait_engine(i)
        self.wait_ready()

    # -- down ----------------------------------------------------------------------------------------------

    def _leftover_pids(self, i: int) -> set[int]:
        pids: set[int] = set()
        proc = _run("ip", "netns", "pids", ns(i), check=False)
        pids.update(int(p) for p in proc.stdout.split() if p.isdigit())
        for procs in CGROUP_ROOT.glob(f"*/abxs-node{i}/**/cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
        pids.discard(os.getpid())
        return pids

    def down(self) -> None:
        """Stop and remove everything ``up`` made (idempotent; works after a partial up or a killed node)."""
        pids = {i: self.dockerd_pid(i) for i in range(1, self.nodes + 1)}
        for i, pid in pids.items():
            if pid is not None:
                self.docker(i, "swarm", "leave", "--force", check=False, timeout=20)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)  # dockerd stops its containers, then its containerd
        deadline = time.monotonic() + 20
        for pid in pids.values():
            while pid is not None and _ours(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        # What is left (after a SIGKILL) is ours by construction: processes in our namespaces or cgroups.
        for i in range(1, self.nodes + 1):
            for pid in self._leftover_pids(i):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        for i in range(1, self.nodes + 1):
            _run("ip", "netns", "del", ns(i), check=False)
        _run("ip", "link", "del", HOST_VETH, check=False)
        _run("ip", "netns", "del", LAN, check=False)
        for i in range(1, self.nodes + 1):
            for top in CGROUP_ROOT.glob(f"*/abxs-node{i}"):
                for sub in sorted(top.glob("**/"), key=lambda p: len(p.parts), reverse=True):
                    with contextlib.suppress(OSError):
                        sub.rmdir()
        # Overlay mounts of a killed node may still be mounted in the host namespace: unmount before rm.
        for line in Path("/proc/self/mounts").read_text().splitlines():
            point = line.split()[1]
            if point.startswith((str(DATA), str(RUN))):
                _run("umount", "-l", point, check=False)
        shutil.rmtree(DATA, ignore_errors=True)
        shutil.rmtree(RUN, ignore_errors=True)
        self.started = False
        left = self.leftovers()
        if left:
            raise ClusterError(f"the swarm fixture left {', '.join(left)} behind (python {__file__} down)")

    def leftovers(self) -> list[str]:
        """What of this fixture still exists on the machine (empty after ``down``)."""
        found = []
        netns = _run("ip", "netns", "list", check=False).stdout
        found += [n for n in [LAN, *(ns(i) for i in range(1, self.nodes + 1))] if n in netns]
        if _run("ip", "link", "show", HOST_VETH, check=False).returncode == 0:
            found.append(f"link {HOST_VETH}")
        found += [str(p) for p in (DATA, RUN) if p.exists()]
        found += [str(c) for i in range(1, self.nodes + 1) for c in CGROUP_ROOT.glob(f"*/abxs-node{i}")]
        return found


_shared: Cluster | None = None


def shared(add_cleanup: Callable[[Callable[[], None]], None], images: list[str]) -> Cluster:
    """The one cluster of this test process (built on first use, torn down by ``add_cleanup`` at the end),
    with agentbox pointed at it through the environment (subprocesses of tests inherit it)."""
    global _shared
    if _shared is None:
        cluster = Cluster(images=images)
        add_cleanup(cluster.down)
        try:
            cluster.up()
        except BaseException:
            with contextlib.suppress(ClusterError):  # the cleanup registered above says what is left
                cluster.down()
            raise
        # Bind mounts: node2 says it has /tmp (here every node shares the host's files; one is chosen).
        cluster.docker(1, "node", "update", "--label-add", "agentbox.paths=/tmp", "node2")
        os.environ["SANDBOX_SWARM_MANAGER"] = cluster.manager
        os.environ["SANDBOX_SWARM_NODES"] = json.dumps(cluster.node_engines)
        _shared = cluster
    return _shared


if __name__ == "__main__":  # python tests/swarm/swarm_cluster.py up|down|status
    import sys

    cluster = Cluster()
    cmd = sys.argv[1] if len(sys.argv) > 1 else "status"
    if cmd == "up":
        cluster.images = sys.argv[2:]
        cluster.up()
        print(json.dumps({"manager": cluster.manager, "nodes": cluster.node_engines}))
    elif cmd == "down":
        cluster.down()
        print("left:", cluster.leftovers())
    else:
        print("left:", cluster.leftovers())
