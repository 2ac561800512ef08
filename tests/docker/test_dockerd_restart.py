"""An engine restart (issue 11): dockerd stopped and started again exactly as it was, under a sandbox.

The machine's own dockerd is shared with other processes and is never touched: the test starts a private
dockerd of its own (own data root, exec root, pidfile, socket, cgroup parent and address pool) in a
network namespace of its own (tests/support/netns.py: one veth pair to the host; there the engine's
bridges and firewall rules are its own, and the host's ``docker0`` is out of its reach). It loads the
runtime image into that engine, runs a sandbox on it, then stops that dockerd (SIGTERM, as
``systemctl restart docker`` does) and starts it again with the same arguments in the same namespace.

The sandbox publishes its server port on the namespace's end of the veth pair
(``runtime_binding_address``), so the URL the backend reads back is ``http://<that address>:<port>``,
which the host reaches over the veth route, as it would reach an engine on another machine.

Everything of the private engine (its containers, its containerd, its files, its cgroups, the namespace
and the veth pair) is removed in a ``finally``, and the test checks the host is as it found it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentbox.backends.base import SandboxState
from agentbox.errors import AgentboxError
from agentbox.sandbox import Sandbox
from support.netns import CGROUP_ROOT, Netns, host_networks

pytestmark = pytest.mark.docker

# Inside the namespace nothing else lives, so any private range does; one apart from the veth range
# keeps the two easy to tell apart (and lets the test check none of it shows on the host).
_BIP = "10.216.255.1/24"
_POOL = "base=10.216.0.0/17,size=24"
_PRIVATE = ipaddress.ip_network("10.216.0.0/16")


class PrivateEngine:
    """A dockerd of this test's own in ``netns``; ``start`` and ``stop`` may repeat (same arguments)."""

    def __init__(self, root: Path, netns: Netns) -> None:
        self.root = root
        self.netns = netns
        self.cgroup_parent = f"abxt-dd-{uuid.uuid4().hex[:8]}"
        self.url = f"unix://{root}/d.sock"
        self.argv = [
            "dockerd",
            "--data-root", str(root / "data"),
            "--exec-root", str(root / "x"),
            "--pidfile", str(root / "d.pid"),
            "--config-file", str(root / "daemon.json"),  # never /etc/docker/daemon.json
            "-H", self.url,
            "--bip", _BIP,
            "--default-address-pool", _POOL,
            "--cgroup-parent", f"/{self.cgroup_parent}",
            "--storage-driver", "overlay2",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        (self.root / "daemon.json").write_text("{}")
        with open(self.root / "dockerd.log", "ab") as log:
            self.proc = self.netns.popen(self.argv, log=log)
        deadline = time.monotonic() + 90
        while self.cli("version", check=False, timeout=10).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log_tail = (self.root / "dockerd.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the private dockerd did not come up; its log ends:\n{log_tail}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM and wait: dockerd stops its containers, then its containerd, then exits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "--host", self.url, *args], capture_output=True, text=True, check=check, timeout=timeout
        )

    def load(self, image: str) -> None:
        """The image from the machine's engine, piped (no copy on disk)."""
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        assert save.stdout is not None
        try:
            loaded = subprocess.run(
                ["docker", "--host", self.url, "load"], stdin=save.stdout, capture_output=True, timeout=600
            )
        finally:
            save.stdout.close()
            save.wait(timeout=60)
        if loaded.returncode or save.returncode:
            raise RuntimeError(f"loading {image} into the private engine failed: {loaded.stderr.decode()}")

    def remove(self) -> None:
        """Remove every container, stop the engine, kill what is left, delete its files and cgroups."""
        if self.proc is not None and self.proc.poll() is None:
            ids = self.cli("ps", "-aq", check=False, timeout=60).stdout.split()
            if ids:
                self.cli("rm", "-f", "-v", *ids, check=False, timeout=120)
        self.stop()
        # After a failed stop: the container processes (their own namespaces, our cgroup parent) and the
        # shims (our namespace) can only be this engine's.
        for procs in CGROUP_ROOT.glob(f"*/{self.cgroup_parent}/**/cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        self.netns.remove()
        shutil.rmtree(self.root, ignore_errors=True)
        for top in CGROUP_ROOT.glob(f"*/{self.cgroup_parent}"):
            for sub in sorted(top.glob("**/"), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    sub.rmdir()

    def leftovers(self) -> list[str]:
        found = [str(self.root)] if self.root.exists() else []
        # dockerd, its containerd and the shims all name a path under the root on their command lines.
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                if str(self.root).encode() in cmdline.read_bytes():
                    found.append(f"process {cmdline.parent.name}")
        found += [str(c) for c in CGROUP_ROOT.glob(f"*/{self.cgroup_parent}")]
        return found + self.netns.leftovers()


def _docker0() -> list[str] | None:
    """The host's docker0 IPv4 addresses (None when it does not exist)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "docker0"], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return sorted(line.split()[3] for line in out.stdout.splitlines())


@pytest.fixture()
def private_engine(docker_client: Any, runtime_image: str) -> Iterator[PrivateEngine]:
    if any(shutil.which(tool) is None for tool in ("dockerd", "ip")) or os.geteuid() != 0:
        pytest.skip("needs dockerd, ip (iproute2) and root to run a private engine in a network namespace")
    docker0 = _docker0()
    netns = Netns.create()
    # Short: containerd's socket path under the exec root must fit a unix socket address (108 bytes).
    engine = PrivateEngine(Path(tempfile.mkdtemp(prefix="abxt-dd-")), netns)
    try:
        engine.start()
        engine.load(runtime_image)
        yield engine
    finally:
        engine.remove()
    # The host as the test found it: its own namespace, veth pair, processes, files and cgroups gone, the
    # default engine's bridge untouched, and no address of the private engine's (nor of the veth pair) on
    # a host link. Only what is this test's is compared: other runs may add links and namespaces meanwhile.
    assert engine.leftovers() == []
    assert _docker0() == docker0
    assert [n for n in host_networks() if n.overlaps(_PRIVATE) or n.overlaps(netns.network)] == []


def test_a_dockerd_restart_is_noticed_and_recovered(
    private_engine: PrivateEngine, runtime_image: str, labels: dict[str, str], tmp_path: Path
) -> None:
    import docker
    from agentbox.backends.docker import DockerBackend

    client = docker.DockerClient(base_url=private_engine.url, timeout=60)
    backend = DockerBackend(client=client)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    workspace.chmod(0o777)  # whatever uid the sandbox runs as
    sb = Sandbox(
        backend=backend,
        runtime_container_image=runtime_image,
        labels=labels,
        volumes=[f"{workspace}:/workspace"],
        # Published on the namespace's end of the veth pair: the URL read back is one the host routes to.
        runtime_binding_address=private_engine.netns.address,
    )
    try:
        sb.start()
        assert sb.url.startswith(f"http://{private_engine.netns.address}:"), sb.url  # over the veth route
        sb.write_file("/workspace/kept.txt", "kept across the engine restart")
        in_flight: dict[str, BaseException | object] = {}

        def call() -> None:
            try:
                in_flight["result"] = sb.run("touch /workspace/running; sleep 120", timeout=300)
            except BaseException as exc:  # the outcome under test
                in_flight["error"] = exc

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 60  # bounded wait until the command runs inside
        while not (workspace / "running").exists() and caller.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (workspace / "running").exists(), in_flight

        private_engine.stop()
        caller.join(timeout=120)
        assert not caller.is_alive()
        error = in_flight.get("error")
        # A clear error that says what happened (the server answers it as it stops), not a bare "HTTP 500".
        assert isinstance(error, AgentboxError), in_flight
        assert "HTTP 500" not in str(error) and "server is stopping" in str(error), str(error)

        with pytest.raises(AgentboxError) as down:
            sb.refresh()  # the engine itself is away: said so, not a raw requests error
        assert "engine" in str(down.value).lower(), str(down.value)

        private_engine.start()  # exactly as it was
        assert sb.refresh() is SandboxState.STOPPED  # the handle notices: no stale "running"
        sb.start()  # recovered: the key delivered again
        assert sb.state is SandboxState.RUNNING
        assert sb.read_file("/workspace/kept.txt").content == "kept across the engine restart"
        assert sb.run("echo back").output.strip() == "back"
        assert (workspace / "kept.txt").read_text() == "kept across the engine restart"
    finally:
        with contextlib.suppress(Exception):
            sb.remove()
        backend.close()
        client.close()
    assert private_engine.cli("ps", "-aq").stdout.split() == []  # nothing left on the private engine
