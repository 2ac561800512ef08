"""An unmodified OpenHands 0.62, configured only by environment, drives its sandboxes on agentbox.

OpenHands' client runs with OpenHands' own Python: the OpenHands image (``agentbox build --openhands``)
holds openhands-ai in its venv, so the client runs in a container of that image on the host's network
(it reaches the service on 127.0.0.1, as an OpenHands on the same host would). One environment, built
once and cached by the engine's content-hashed tag, serves the sandboxes and the client: nothing is
installed on the host, and a second run builds nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openhands_runner import run_client
from service_process import LABELS, ServiceProcess

from agentbox.images.openhands import DEFAULT_VERSION, ensure_openhands_images


@pytest.fixture(scope="session")
def openhands_images(docker_client: Any) -> tuple[str, ...]:
    """OpenHands' images under the names it runs, built from PyPI once (reused while the content is the same)."""
    return ensure_openhands_images(docker_client, DEFAULT_VERSION, pull=False).names


@pytest.fixture()
def service(services: Any) -> Iterator[tuple[ServiceProcess, str]]:
    svc = services()
    yield svc, svc.admin_token


def _openhands(docker_client: Any, image: str, svc: ServiceProcess, key: str, step: str, sid: str) -> dict[str, Any]:
    """Run one step of client_scenario.py with OpenHands' client against ``svc``."""
    return run_client(docker_client, image, f"{svc.url}/openhands", key, step, sid, labels=LABELS)


def test_openhands_v0_remote_runtime(service: tuple[ServiceProcess, str], openhands_images: tuple[str, ...],
                                     docker_client: Any) -> None:
    """V0 RemoteRuntime: connect, echo, cd state, exit code, timeout + C-c, files, IPython, copy in and out,
    a wrong session key refused; close pauses; the next connect resumes by session id; close stops."""
    svc, token = service
    image = openhands_images[0]
    main = _openhands(docker_client, image, svc, token, "main", "oh-conv-1")
    assert "hello-from-openhands" in main["echo"]["content"] and main["echo"]["exit_code"] == 0
    assert main["pwd"]["content"].strip() == "/workspace/sub"
    assert main["exit"]["exit_code"] == 3
    assert main["timeout"]["exit_code"] == -1 and "timed out" in main["timeout"]["suffix"]
    assert "recovered" in main["after"]["content"] and main["after"]["exit_code"] == 0
    assert main["read"].strip() == "hello world"
    assert "edited" in main["edit"] and main["edited"].strip() == "bye world"
    assert "42" in main["ipython"]
    assert main["copied"].strip() == "copied in"
    assert "in/" in main["listed"] and "a.txt" in main["listed"]
    assert main["copied_out"] == {"payload.txt": "copied in\n"}
    assert main["wrong_session_key"] != "accepted"
    rid = main["runtime_id"]
    assert main["url"] == f"{svc.url}/openhands/{rid}"
    with httpx.Client(base_url=f"{svc.url}/openhands", headers={"X-API-Key": token}, timeout=60) as api:
        assert api.get("/sessions/oh-conv-1").json()["status"] == "paused"  # close() paused it

        again = _openhands(docker_client, image, svc, token, "reattach", "oh-conv-1")
        assert again["runtime_id"] == rid  # reattached, not a new runtime
        assert again["pwd"]["content"].strip() == "/workspace/sub"  # the shell survived pause and resume
        assert "again" in again["echo"]["content"]
        assert api.get("/sessions/oh-conv-1").status_code == 404  # close() with keep-alive off stopped it
    assert docker_client.api.containers(all=True, filters={"label": f"agentbox.sandbox={rid}"}) == []


def test_openhands_refuses_a_wrong_api_key(service: tuple[ServiceProcess, str], openhands_images: tuple[str, ...],
                                           docker_client: Any) -> None:
    """OpenHands with a wrong SANDBOX_API_KEY gets no runtime."""
    svc, _ = service
    refused = _openhands(docker_client, openhands_images[0], svc, "abx_not-a-token", "wrong-key", "oh-conv-2")
    assert refused["refused"] and "401" in refused["refused"]


def test_openhands_v1_agent_server(service: tuple[ServiceProcess, str], openhands_images: tuple[str, ...]) -> None:
    """V1: the agent-server image starts through the same API (as the app server asks) and answers ``/health``
    and a bash command with its session key, and nothing without it."""
    svc, token = service
    body = {
        "image": openhands_images[1], "command": ["/usr/local/bin/openhands-agent-server", "--port", "60000"],
        "working_dir": "/workspace", "environment": {"OH_CONVERSATIONS_PATH": "/workspace/conversations"},
        "session_id": "v1-conv", "resource_factor": 1, "run_as_user": 10001, "run_as_group": 10001,
        "fs_group": 10001,
    }
    with httpx.Client(base_url=f"{svc.url}/openhands", headers={"X-API-Key": token}, timeout=120) as api, \
            httpx.Client(timeout=120) as plain:
        record = api.post("/start", json=body).json()
        for _ in range(300):  # the app server polls /sessions/{id} the same way
            record = api.get("/sessions/v1-conv").json()
            if record["pod_status"] == "ready":
                break
            time.sleep(0.5)
        assert record["pod_status"] == "ready", record
        url, key = record["url"], record["session_api_key"]
        assert plain.get(f"{url}/health").status_code == 200
        command = {"command": "echo v1-says-hi && pwd", "cwd": "/tmp", "timeout": 30}
        ran = plain.post(f"{url}/api/bash/execute_bash_command", json=command, headers={"X-Session-API-Key": key})
        assert ran.status_code == 200, ran.text
        assert ran.json()["exit_code"] == 0 and "v1-says-hi\n/tmp" in ran.json()["stdout"]
        assert plain.post(f"{url}/api/bash/execute_bash_command", json=command).status_code == 401
        assert api.post("/stop", json={"runtime_id": record["runtime_id"]}).status_code == 200


def _pool_free(admin: httpx.Client, pool: str) -> float:
    for line in admin.get("/metrics").text.splitlines():
        if line.startswith(f'agentbox_pool_free{{pool="{pool}"}}'):
            return float(line.split()[-1])
    return -1


def openhands_pool_toml(launch: dict[str, Any], name: str = "openhands", size: int = 1) -> str:
    """A ``[[pool]]`` of OpenHands runtimes for the launch OpenHands posts (JSON strings and arrays are TOML)."""
    env = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in launch["environment"].items())
    return (
        f'[[pool]]\nname = "{name}"\nsize = {size}\n[pool.openhands]\nimage = {json.dumps(launch["image"])}\n'
        f'command = {json.dumps(launch["command"])}\nworking_dir = {json.dumps(launch["working_dir"])}\n'
        f"environment = {{ {env} }}\n"
    )


def openhands_launch(docker_client: Any, image: str) -> dict[str, Any]:
    """What OpenHands' RemoteRuntime posts to /start with the scenario's configuration, computed by its own
    code (nothing is contacted)."""
    return run_client(docker_client, image, "http://127.0.0.1:9/openhands", "unused", "launch", "oh-launch",
                      labels=LABELS)


def test_openhands_connects_to_a_runtime_from_a_pool(services: Any, openhands_images: tuple[str, ...],
                                                     docker_client: Any, tmp_path: Path) -> None:
    """An operator's ``[pool.openhands]`` profile made of what OpenHands 0.62 posts: its client connects to
    a runtime booted before it asked, runs a command, and a web app the sandbox runs on a work port answers
    through the URL in ``work_hosts``."""
    image = openhands_images[0]
    launch = openhands_launch(docker_client, image)
    assert launch["image"] == image and "openhands.runtime.action_execution_server" in launch["command"]
    config = tmp_path / "service.toml"
    config.write_text(openhands_pool_toml(launch, "oh"))
    svc = services("--config", str(config))
    with svc.client(svc.admin_token) as admin:
        for _ in range(1500):  # until the pool's runtime answers (Jupyter boots); bounded by count
            if _pool_free(admin, "oh") == 1:
                break
            time.sleep(0.2)
        assert _pool_free(admin, "oh") == 1, "the OpenHands pool never filled"
        (waiting,) = [c["Labels"]["agentbox.sandbox"]
                      for c in docker_client.api.containers(filters={"label": "agentbox.service-pool=oh"})]
        out = run_client(docker_client, image, f"{svc.url}/openhands", svc.admin_token, "pooled", "oh-conv-pool",
                         labels=LABELS)
        assert out["runtime_id"] == waiting
        assert "from-the-pool" in out["echo"]["content"] and out["echo"]["exit_code"] == 0
        assert 'agentbox_sandbox_creates_total{outcome="pooled"} 1.0' in admin.get("/metrics").text
        assert sorted(out["web_hosts"].values()) == [12000, 12001]
        assert all(url.startswith(f"{svc.url}/v1/sandboxes/{waiting}/ports/") for url in out["web_hosts"])
        assert out["work_port"] == {"status": 200, "body": "served-from-a-work-port\n"}
    assert docker_client.api.containers(all=True, filters={"label": f"agentbox.sandbox={waiting}"}) == []


#: On OpenHands' image (its venv has websockets): /alive on 60000 for readiness, a WebSocket echo on 12000.
WS_APP = r"""
import asyncio
from websockets.asyncio.server import serve
def alive(connection, request):
    return connection.respond(200, "ok\n")
async def echo(ws):
    async for message in ws:
        await ws.send("echo:" + message)
async def main():
    async with serve(echo, "0.0.0.0", 60000, process_request=alive), serve(echo, "0.0.0.0", 12000):
        await asyncio.Future()
asyncio.run(main())
"""


def test_work_port_websockets_reach_the_runtime(service: tuple[ServiceProcess, str],
                                                openhands_images: tuple[str, ...]) -> None:
    """A WebSocket to a work_hosts URL reaches the app on that port in the runtime (straight to its network
    address: an OpenHands runtime has no agentbox port forward); a port nothing listens on is refused."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from agentbox.images.openhands import VENV

    svc, token = service
    body = {"image": openhands_images[0], "command": [f"{VENV}/bin/python", "-u", "-c", WS_APP],
            "session_id": "ws-conv"}
    with httpx.Client(base_url=f"{svc.url}/openhands", headers={"X-API-Key": token}, timeout=120) as api:
        record = api.post("/start", json=body).json()
        for _ in range(300):
            record = api.get(f"/runtime/{record['runtime_id']}").json()
            if record["pod_status"] == "ready":
                break
            time.sleep(0.2)
        assert record["pod_status"] == "ready", record
        hosts = {port: url for url, port in record["work_hosts"].items()}
        bearer = {"Authorization": f"Bearer {token}"}
        with connect(hosts[12000].replace("http://", "ws://", 1), additional_headers=bearer, open_timeout=30) as ws:
            ws.send("hi")
            assert ws.recv(timeout=30) == "echo:hi"
        with pytest.raises(InvalidStatus) as refused:
            connect(hosts[12001].replace("http://", "ws://", 1), additional_headers=bearer, open_timeout=30)
        assert refused.value.response.status_code == 502 and b"port_closed" in refused.value.response.body
        assert api.post("/stop", json={"runtime_id": record["runtime_id"]}).status_code == 200
