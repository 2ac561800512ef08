"""Lost sandboxes in the control plane, and ``POST /v1/sandboxes/{id}/replace``, on the Docker backend.

One engine never loses a node, so the loss comes from a backend that reports one through the interface
the service follows (:meth:`Backend.events`), on top of the real Docker backend: everything else (the
records, the proxy, the replacement's container, the lost one's removal) is real. The real node loss is
in tests/swarm/test_swarm_control_plane.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_servers import serve
from service_process import ServiceProcess

from agentbox.backends.docker import DockerBackend
from agentbox.backends.events import BackendEvent, EventStream, QueuedEvents
from agentbox.service.app import ADMIN_TOKEN_FILE, create_app
from agentbox.service.settings import ServiceSettings

pytestmark = pytest.mark.docker

Services = Callable[..., ServiceProcess]


class LosingDocker(DockerBackend):
    """The Docker backend, whose event stream also carries the node losses a test announces."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: list[QueuedEvents] = []

    def events(self, labels: Mapping[str, str]) -> EventStream:
        docker_events = super().events(labels)
        stream = QueuedEvents(on_close=docker_events.close)
        self.streams.append(stream)
        return stream

    def lose(self, sandbox_id: str, node: str) -> None:
        for stream in self.streams:
            stream.put(BackendEvent(sandbox_id, "lost", node=node))


def _create(client: httpx.Client, labels: dict[str, str], **config: Any) -> dict[str, Any]:
    r = client.post("/v1/sandboxes", json={"config": config, "labels": labels})
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_replace_refuses_a_live_sandbox_and_another_tokens(
    services: Services, service_config: Callable[..., Path], labels: dict[str, str]
) -> None:
    svc = services("--config", str(service_config()))
    with svc.client(svc.admin_token) as admin:
        tokens = {}
        for name in ("alice", "bob"):
            r = admin.post("/v1/tokens", json={"name": name})
            assert r.status_code == 201, r.text
            tokens[name] = r.json()["token"]
        with svc.client(tokens["alice"]) as alice, svc.client(tokens["bob"]) as bob:
            sid = _create(alice, labels)["id"]
            r = bob.post(f"/v1/sandboxes/{sid}/replace")
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
            for client in (alice, admin):
                r = client.post(f"/v1/sandboxes/{sid}/replace")
                assert r.status_code == 409, r.text
                assert "running, not lost" in r.json()["error"]["message"]
            assert admin.post("/v1/sandboxes/nosuchsandbox/replace").status_code == 404
            # Refused means untouched: the same sandbox, still running, and no second one.
            assert [s["id"] for s in alice.get("/v1/sandboxes").json()["sandboxes"]] == [sid]
            r = alice.post(f"/v1/sandboxes/{sid}/runtime/sessions/default/run", json={"command": "echo still"})
            assert r.status_code == 200 and r.json()["output"] == "still\n", r.text
            assert alice.delete(f"/v1/sandboxes/{sid}").status_code == 200


def test_a_lost_sandbox_is_shown_refused_by_the_proxy_and_replaced(
    tmp_path: Path, runtime_image: str, labels: dict[str, str], docker_client: Any
) -> None:
    backend = LosingDocker()
    settings = ServiceSettings(data_dir=tmp_path / "data", port=0,
                               sandbox_defaults={"runtime_container_image": runtime_image})
    settings.data_dir.mkdir(mode=0o700)

    async def scenario() -> None:
        app = create_app(settings, backend=backend)
        server, task, port = await serve(app)
        token = (settings.data_dir / ADMIN_TOKEN_FILE).read_text().strip()
        made: list[str] = []
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120,
                                         headers={"Authorization": f"Bearer {token}"}) as client:
                r = await client.post("/v1/sandboxes", json={"labels": labels, "config": {"env": {"WHO": "first"}}})
                assert r.status_code == 201, r.text
                old = r.json()
                made.append(old["id"])
                async with client.stream("GET", "/v1/events") as stream:
                    lines = stream.aiter_lines()
                    assert await anext(lines) == ": connected"
                    backend.lose(old["id"], "node7")
                    async for line in lines:
                        if line.startswith("data: "):
                            event = json.loads(line[6:])
                            break
                assert (event["id"], event["state"]) == (old["id"], "lost") and "node7" in event["reason"]
                record = (await client.get(f"/v1/sandboxes/{old['id']}")).json()
                assert record["state"] == "lost" and "node node7 went down" in record["reason"]
                listed = (await client.get("/v1/sandboxes")).json()["sandboxes"]
                assert [(s["id"], s["state"]) for s in listed] == [(old["id"], "lost")]
                # A call through the proxy: a clear 409 naming the node, not a 502.
                r = await client.post(f"/v1/sandboxes/{old['id']}/runtime/sessions/default/run",
                                      json={"command": "true"})
                assert r.status_code == 409 and "node7" in r.json()["error"]["message"], r.text
                r = await client.post(f"/v1/sandboxes/{old['id']}/pause")
                assert r.status_code == 409 and "node7" in r.json()["error"]["message"], r.text

                r = await client.post(f"/v1/sandboxes/{old['id']}/replace")
                assert r.status_code == 201, r.text
                new = r.json()
                made.append(new["id"])
                assert new["id"] != old["id"] and new["state"] == "running"
                assert (new["owner"], new["labels"], new["config"]) == (old["owner"], old["labels"], old["config"])
                r = await client.post(f"/v1/sandboxes/{new['id']}/runtime/sessions/default/run",
                                      json={"command": "echo $WHO"})
                assert r.status_code == 200 and r.json()["output"] == "first\n", r.text
                # The lost one is gone: its record, its container; the audit log says by what.
                assert (await client.get(f"/v1/sandboxes/{old['id']}")).status_code == 404
                gone = docker_client.api.containers(all=True, filters={"label": f"agentbox.sandbox={old['id']}"})
                assert gone == []
                entries = (await client.get("/v1/audit")).json()["entries"]
                seen = {(e["action"], e["target"], e["detail"]) for e in entries}
                assert ("engine.lost", old["id"], "node node7 is down") in seen
                assert ("replace", old["id"], f"replaced by {new['id']}") in seen
                assert ("create", new["id"], f"replaces lost sandbox {old['id']}") in seen
                assert (await client.post(f"/v1/sandboxes/{new['id']}/replace")).status_code == 409
                assert (await client.delete(f"/v1/sandboxes/{new['id']}")).status_code == 200
        finally:
            server.should_exit = True
            await task
            for sid in made:
                for c in docker_client.api.containers(all=True, filters={"label": f"agentbox.sandbox={sid}"}):
                    docker_client.api.remove_container(c["Id"], force=True, v=True)
            backend.close()

    asyncio.run(scenario())
