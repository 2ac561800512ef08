"""An unmodified OpenHands 0.62, configured only by environment, drives its sandboxes on agentbox.

OpenHands' client runs with OpenHands' own Python: the OpenHands image (``agentbox build --openhands``)
holds openhands-ai in its venv, so the client runs in a container of that image on the host's network
(it reaches the service on 127.0.0.1, as an OpenHands on the same host would). One environment, built
once and cached by the engine's content-hashed tag, serves the sandboxes and the client: nothing is
installed on the host, and a second run builds nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
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
