"""A network namespace of a test's own, joined to the host by one veth pair, to run a daemon in.

A second dockerd in the host's network namespace changes the host's networking: dockerd 20.10 deletes the
host's ``docker0`` (the default engine's bridge) with ``--bridge none`` at once (moby's
removeDefaultBridgeInterface) and with a bridge of its own when it restarts, and the bridges of its
networks stay on the host after its data root is gone. In a namespace of its own it sees only its own
links and its own firewall, and all of them go with the namespace::

    host: veth abxt<id>h 10.215.X.1/30 ──── netns abxt<id>: veth eth0 10.215.X.2/30 (and lo)

The host reaches the namespace's address over the veth, routed, never bridged on the host (a host bridge
would put the traffic through the host firewall's FORWARD chain, DROP where dockerd runs; see
tests/swarm/swarm_cluster.py and shared/design/swarm-on-one-machine.md, whose three-node fixture wires
namespaces the same way). ``ip netns exec`` gives its command a mount namespace of its own (a slave of the
host's: nothing mounted there shows on the host) with a fresh sysfs, which hides the host's cgroup mounts;
:meth:`Netns.popen` mounts them again there first, as the swarm fixture does, so a dockerd finds its
cgroups.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shlex
import signal
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["CGROUP_ROOT", "NETNS_RANGE", "Netns", "host_networks", "run"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Where the /30 of each namespace's veth pair is taken from (a free one, checked against the host's routes).
NETNS_RANGE = ipaddress.IPv4Network("10.215.0.0/16")


def run(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure (``check``) raise with its stderr, which says more than an exit status."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def host_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks the host has an address or a route in (what a new address must not overlap)."""
    found: list[ipaddress.IPv4Network] = []
    for line in run("ip", "-4", "-o", "addr", "show").stdout.splitlines():
        found.append(ipaddress.IPv4Interface(line.split()[3]).network)
    for line in run("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        words = line.split()
        if words and words[0] in ("local", "broadcast", "unicast"):
            words = words[1:]
        with contextlib.suppress(ValueError, IndexError):
            if words[0] != "default":
                found.append(ipaddress.IPv4Network(words[0], strict=False))
    return found


def _free_slash30() -> ipaddress.IPv4Network:
    taken = host_networks()
    subnets = list(NETNS_RANGE.subnets(new_prefix=30))
    # Random, so that two test runs at once (a CI clone beside a developer's run) rarely even look at the same.
    for net in random.sample(subnets, len(subnets)):
        if not any(net.overlaps(other) for other in taken):
            return net
    raise RuntimeError(f"no free /30 left in {NETNS_RANGE} on this host")


def _cgroup_remount_script() -> str:
    """Shell lines that mount the host's cgroup filesystems again (``ip netns exec`` hides them)."""
    lines = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        source, point, fstype, options = line.split()[:4]
        if point != str(CGROUP_ROOT) and not point.startswith(f"{CGROUP_ROOT}/"):
            continue
        if fstype == "tmpfs":  # a fresh tmpfs that holds the mount points: writable, whatever the host's is
            options = ",".join("rw" if o == "ro" else o for o in options.split(","))
        fstype, options, source, point = map(shlex.quote, (fstype, options, source, point))
        lines += [f"mkdir -p {point}", f"mount -t {fstype} -o {options} {source} {point}"]
    return "\n".join(lines)


@dataclass(frozen=True)
class Netns:
    """One namespace and its veth pair; :meth:`create` makes them, :meth:`remove` takes everything away."""

    name: str
    host_veth: str
    network: ipaddress.IPv4Network

    @property
    def host_address(self) -> str:
        """The host's end of the veth pair."""
        return str(self.network.network_address + 1)

    @property
    def address(self) -> str:
        """The namespace's end: where the host reaches what listens inside."""
        return str(self.network.network_address + 2)

    @classmethod
    def create(cls) -> Netns:
        """A new namespace with ``lo`` up and a veth pair to the host (both ends up and addressed)."""
        name = f"abxt{uuid.uuid4().hex[:8]}"  # the host veth's name adds one: at most 15 characters
        made = cls(name=name, host_veth=f"{name}h", network=_free_slash30())
        try:
            run("ip", "netns", "add", name)
            run("ip", "-n", name, "link", "set", "lo", "up")
            run("ip", "link", "add", made.host_veth, "type", "veth", "peer", "name", "eth0", "netns", name)
            run("ip", "addr", "add", f"{made.host_address}/30", "dev", made.host_veth)
            run("ip", "link", "set", made.host_veth, "up")
            run("ip", "-n", name, "addr", "add", f"{made.address}/30", "dev", "eth0")
            run("ip", "-n", name, "link", "set", "eth0", "up")
        except BaseException:
            made.remove()
            raise
        return made

    @classmethod
    @contextlib.contextmanager
    def scoped(cls) -> Iterator[Netns]:
        """:meth:`create` ... :meth:`remove`, even when the body fails."""
        made = cls.create()
        try:
            yield made
        finally:
            made.remove()

    def popen(self, argv: Sequence[str], *, log: IO[bytes]) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the namespace, with the host's cgroups mounted, in a session of its own.

        No process stands between: ``ip netns exec`` and the shell both exec, so the returned process is
        ``argv`` itself (signal it to stop the daemon)."""
        script = f'set -e\n{_cgroup_remount_script()}\nexec "$@"'
        return subprocess.Popen(
            ["ip", "netns", "exec", self.name, "sh", "-c", script, "sh", *argv],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip

    def pids(self) -> set[int]:
        """The processes in the namespace (every one of them was started for it)."""
        proc = run("ip", "netns", "pids", self.name, check=False)
        return {int(p) for p in proc.stdout.split() if p.isdigit()} - {os.getpid()}

    def remove(self) -> None:
        """Kill what still runs in the namespace, delete it and the veth pair (idempotent)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run("ip", "link", "del", self.host_veth, check=False)  # both ends: no wait for the namespace to go
        run("ip", "netns", "del", self.name, check=False)

    def leftovers(self) -> list[str]:
        """What of this namespace is still on the machine (empty after :meth:`remove`)."""
        found = []
        if self.name in run("ip", "netns", "list").stdout.split():
            found.append(f"netns {self.name}")
        if run("ip", "link", "show", self.host_veth, check=False).returncode == 0:
            found.append(f"link {self.host_veth}")
        return found
