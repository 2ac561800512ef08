"""The control plane on the swarm: a real ``agentbox serve`` process (backend = "swarm") creating sandboxes
as swarm services, proxying commands to them through the relay, and removing them; its warm pool too; and
a node killed under it (its sandbox shown lost, replaced on request, nothing stale left once it is back)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import swarm_cluster

from agentbox.backends.swarm import SwarmBackend
from agentbox.errors import SandboxError, SandboxNotFoundError
from agentbox.sandbox import Sandbox
from agentbox.service.app import ADMIN_TOKEN_FILE, READY_PREFIX

AGENTBOX = str(Path(sys.executable).with_name("agentbox"))


class Service:
    """One ``agentbox serve`` process (it inherits the environment that points agentbox at the swarm)."""

    def __init__(self, data_dir: Path, config: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [AGENTBOX, "serve", "--port", "0", "--data-dir", str(data_dir), "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
        )
        self.stderr: list[str] = []
        ready = threading.Event()

        def read() -> None:  # to the end: a pipe nobody reads would block the service once full
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr.append(line)
                if line.startswith(READY_PREFIX):
                    ready.set()
            ready.set()
            self.proc.stderr.close()  # EOF: the pipe is ours to close (unclosed, it warns when collected)

        threading.Thread(target=read, daemon=True).start()
        ready.wait(180)
        found = [ln.strip()[len(READY_PREFIX):] for ln in self.stderr if ln.startswith(READY_PREFIX)]
        if not found:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"agentbox serve did not come up: {''.join(self.stderr)}")
        self.url = found[0]

    def admin(self) -> httpx.Client:
        token = (self.data_dir / ADMIN_TOKEN_FILE).read_text().strip()
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=180)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture()
def serve(
    tmp_path: Path, image: str, backend: SwarmBackend, labels: dict[str, str]
) -> Iterator[Callable[..., Service]]:
    """Start a service on the swarm with ``extra`` TOML (and ``env``, e.g. the backend's own settings);
    stopped, and its sandboxes removed, after."""
    made: list[Service] = []

    def start(extra: str = "", env: dict[str, str] | None = None) -> Service:
        config = tmp_path / "service.toml"
        config.write_text(f'[sandbox]\nbackend = "swarm"\nruntime_container_image = "{image}"\n{extra}\n')
        svc = Service(tmp_path / "data", config, env)
        made.append(svc)
        return svc

    try:
        yield start
    finally:
        for svc in made:
            svc.stop()
            print("".join(svc.stderr)[-4000:])  # shown when the test fails
        for info in backend.list(labels=labels):
            if info.labels.get("agentbox.service"):
                with contextlib.suppress(Exception):
                    backend.remove(info.container_id, purge_volumes=True)


def _create(client: httpx.Client, labels: dict[str, str]) -> dict[str, Any]:
    r = client.post("/v1/sandboxes", json={"labels": labels})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _run(client: httpx.Client, sandbox_id: str, command: str) -> str:
    r = client.post(f"/v1/sandboxes/{sandbox_id}/runtime/sessions/default/run", json={"command": command})
    assert r.status_code == 200, r.text
    return str(r.json()["output"])


def _on_node(backend: SwarmBackend, sandbox_id: str) -> str:
    info = backend.find(sandbox_id)
    task = backend._tasks(info.container_id, desired="running")[info.container_id]
    return backend.nodes()[task.node_id].hostname


def test_the_service_serves_sandboxes_from_the_swarm(
    serve: Callable[[str], Service], backend: SwarmBackend, labels: dict[str, str]
) -> None:
    svc = serve("")
    with svc.admin() as client:
        made = _create(client, labels)
        sid = made["id"]
        assert made["state"] == "running"
        assert _on_node(backend, sid) in {"node1", "node2", "node3"}  # a swarm service, placed by agentbox
        assert _run(client, sid, "cd /tmp && echo $((6*7))") == "42\n"
        assert client.post(f"/v1/sandboxes/{sid}/pause").json()["state"] == "paused"
        assert client.post(f"/v1/sandboxes/{sid}/resume").json()["state"] == "running"
        assert _run(client, sid, "pwd") == "/tmp\n"  # the same shell: pause froze it on its node
        logs = client.get(f"/v1/sandboxes/{sid}/logs", params={"tail": 50})
        assert logs.status_code == 200 and "agentbox-server ready on" in logs.text
        # A client cannot point the service at another swarm.
        r = client.post("/v1/sandboxes", json={"labels": labels, "config": {"swarm_manager": "tcp://evil:2375"}})
        assert r.status_code in (403, 422), r.text
        assert client.delete(f"/v1/sandboxes/{sid}").status_code == 200
        assert client.get(f"/v1/sandboxes/{sid}").status_code == 404
    with pytest.raises(SandboxNotFoundError):
        backend.find(sid)
    assert svc.proc.poll() is None  # it served all of that without dying


def test_the_service_pool_works_on_the_swarm(
    serve: Callable[[str], Service], backend: SwarmBackend, labels: dict[str, str]
) -> None:
    pool_labels = ", ".join(f'"{k}" = "{v}"' for k, v in labels.items())
    svc = serve(f'[[pool]]\nname = "warm"\nsize = 1\nlabels = {{ {pool_labels} }}\n')
    with svc.admin() as client:
        deadline = time.monotonic() + 180  # bounded: a hang fails, the time taken is not asserted
        while not backend.list(labels={"agentbox.service-pool": "warm", **labels}):
            assert time.monotonic() < deadline, "the pool did not fill"
            time.sleep(0.2)
        waiting = backend.list(labels={"agentbox.service-pool": "warm", **labels})[0].id
        while _pool_free(client) != 1:
            assert time.monotonic() < deadline, "the pool did not report its sandbox ready"
            time.sleep(0.2)
        got = _create(client, labels)
        assert got["id"] == waiting and got["state"] == "running"
        assert _run(client, waiting, "echo from-pool") == "from-pool\n"
        assert client.delete(f"/v1/sandboxes/{waiting}").status_code == 200


def _pool_free(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('agentbox_pool_free{pool="warm"}'):
            return float(line.split()[-1])
    return -1


def test_a_node_lost_under_the_service_is_shown_and_its_sandbox_replaced(
    serve: Callable[..., Service], backend: SwarmBackend, cluster: swarm_cluster.Cluster, labels: dict[str, str]
) -> None:
    # On a worker: the manager (node1) must stay up to tell the loss. (Placement is the backend's setting.)
    svc = serve(env={"SANDBOX_PLACEMENT": '["node.role==worker"]'})
    killed_node: int | None = None
    try:
        with svc.admin() as client:
            sid = _create(client, labels)["id"]
            node = _on_node(backend, sid)
            assert node in ("node2", "node3")
            seen: queue.Queue[dict[str, Any]] = queue.Queue()
            connected = threading.Event()

            def follow() -> None:
                # Until the service stops at the end of the test (which cuts the stream).
                with contextlib.suppress(httpx.HTTPError), svc.admin() as watcher, \
                        watcher.stream("GET", "/v1/events") as stream:
                    for line in stream.iter_lines():
                        connected.set()
                        if line.startswith("data: "):
                            seen.put(json.loads(line[6:]))

            threading.Thread(target=follow, daemon=True).start()
            assert connected.wait(30)
            killed_node = int(node[-1])
            cluster.kill_node(killed_node)
            killed = time.monotonic()
            # The promise: lost within 10 s (1 s heartbeat). Looked at until then, not after.
            record = client.get(f"/v1/sandboxes/{sid}").json()
            while record["state"] != "lost" and time.monotonic() - killed < 10:
                time.sleep(0.2)
                record = client.get(f"/v1/sandboxes/{sid}").json()
            assert record["state"] == "lost", record
            print(f"lost {time.monotonic() - killed:.1f} s after node {node} was killed")
            assert f"node {node} went down" in record["reason"]
            listed = {s["id"]: s["state"] for s in client.get("/v1/sandboxes").json()["sandboxes"]}
            assert listed[sid] == "lost"
            event = seen.get(timeout=30)  # recorded already: the stream has it (bounded: a hang fails)
            while event["id"] != sid:
                event = seen.get(timeout=30)
            assert event["state"] == "lost" and node in event["reason"]
            audit = client.get("/v1/audit").json()["entries"]
            assert {"action": "engine.lost", "target": sid, "detail": f"node {node} is down"} in [
                {k: e[k] for k in ("action", "target", "detail")} for e in audit
            ]
            # A call through the proxy: a clear 409 naming the node.
            r = client.post(f"/v1/sandboxes/{sid}/runtime/sessions/default/run", json={"command": "true"})
            assert r.status_code == 409 and node in r.json()["error"]["message"], r.text
            # The SDK through the service: the same, as an error naming the node; then a replacement.
            token = (svc.data_dir / ADMIN_TOKEN_FILE).read_text().strip()
            sb = Sandbox.connect(sid, server=svc.url, token=token)
            with pytest.raises(SandboxError, match=f"lost: node {node} went down"):
                sb.run("true")
            sb.replace()
            try:
                new = sb.id
                assert new != sid
                assert sb.run("echo $((6*7))").output == "42\n"
                assert _on_node(backend, new) not in (node, "node1")  # placed by the swarm on the live worker
            finally:
                sb.detach()
            record = client.get(f"/v1/sandboxes/{new}").json()
            assert record["state"] == "running" and record["labels"] == labels
            assert client.get(f"/v1/sandboxes/{sid}").status_code == 404
            audit = client.get("/v1/audit").json()["entries"]
            assert {"action": "replace", "target": sid, "detail": f"replaced by {new}"} in [
                {k: e[k] for k in ("action", "target", "detail")} for e in audit
            ]
            # The node comes back: nothing of the lost sandbox is left on it.
            cluster.restart_node(killed_node)
            killed_node = None
            back = time.monotonic()

            def stale() -> list[str]:
                containers = cluster.docker(int(node[-1]), "ps", "-aq", "--filter", f"label=agentbox.sandbox={sid}")
                volumes = cluster.docker(int(node[-1]), "volume", "ls", "-q", "--filter",
                                         f"label=agentbox.created-for={sid}")
                return (containers.stdout + volumes.stdout).split()

            while stale() and time.monotonic() - back < 60:  # bounded: what is left after that is a leak
                time.sleep(0.5)
            assert stale() == []
            print(f"nothing stale left {time.monotonic() - back:.1f} s after node {node} was back")
            assert backend.api.services(filters={"label": f"agentbox.sandbox={sid}"}) == []
            assert client.delete(f"/v1/sandboxes/{new}").status_code == 200
    finally:
        if killed_node is not None:
            cluster.restart_node(killed_node)
