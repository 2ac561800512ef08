"""OpenHands' remote runtime API, exercised over HTTP exactly as OpenHands' clients call it, against a
stand-in server that behaves like OpenHands' servers where the API depends on them: it listens on 60000,
answers ``/alive`` and ``/health`` without a key and everything else only with ``SESSION_API_KEY``, and
echoes what reached it (headers, whether it has a key) so the proxy's work can be checked. It also runs
an agent's web application on work port 12000 (echoing the path and headers it got).

The runs with OpenHands' own client and images are in test_openhands_client.py.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from service_process import ServiceProcess

#: The stand-in server: python3's http.server, on OpenHands' port.
STAND_IN = r"""
import json, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
KEY = os.environ.get("SESSION_API_KEY")
class H(BaseHTTPRequestHandler):
    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path not in ("/alive", "/health") and self.headers.get("X-Session-API-Key") != KEY:
            code, out = 401, {"detail": "bad key"}
        else:
            code, out = 200, {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                              "has_key": bool(KEY), "cwd": os.getcwd(), "env": os.environ.get("OH_TEST", ""),
                              "argv": sys.argv[1:], "body": body.decode()}
        data = json.dumps(out).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    do_GET = do_POST = _answer
    def log_message(self, *a): pass
class W(BaseHTTPRequestHandler):
    def do_GET(self):
        heard = {k.lower(): v for k, v in self.headers.items()}
        data = json.dumps({"work": self.path, "headers": heard}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a): pass
threading.Thread(target=ThreadingHTTPServer(("0.0.0.0", 12000), W).serve_forever, daemon=True).start()
ThreadingHTTPServer(("0.0.0.0", 60000), H).serve_forever()
"""
COMMAND = ["python3", "-u", "-c", STAND_IN, "openhands.runtime.action_execution_server", "60000"]
#: Readiness is polled as OpenHands does (V0 every 2 s); bounded by count, not asserted on time.
POLLS = 150


def _client(svc: ServiceProcess, key: str | None) -> httpx.Client:
    headers = {"X-API-Key": key} if key else {}
    return httpx.Client(base_url=svc.url + "/openhands", headers=headers, timeout=120)


def _wait_ready(api: httpx.Client, runtime_id: str) -> dict[str, Any]:
    for _ in range(POLLS):
        r = api.get(f"/runtime/{runtime_id}")
        assert r.status_code == 200, r.text
        record: dict[str, Any] = r.json()
        if record["pod_status"] == "ready":
            return record
        time.sleep(0.2)
    raise AssertionError(f"runtime {runtime_id} never became ready: {record}")


def _start(api: httpx.Client, image: str, session_id: str, **extra: Any) -> dict[str, Any]:
    body = {"image": image, "command": COMMAND, "working_dir": "/tmp", "environment": {"OH_TEST": "seed"},
            "session_id": session_id, "resource_factor": 1, **extra}
    r = api.post("/start", json=body)
    assert r.status_code == 200, r.text
    record: dict[str, Any] = r.json()
    return record


@pytest.fixture()
def service(services: Any) -> Iterator[tuple[ServiceProcess, str, str]]:
    """A service, its admin token, and a second token (another tenant)."""
    svc = services()
    with svc.client(svc.admin_token) as admin:
        r = admin.post("/v1/tokens", json={"name": "other"})
        assert r.status_code == 201, r.text
        other = r.json()["token"]
    yield svc, svc.admin_token, other


def test_runtime_lifecycle_through_the_api(service: tuple[ServiceProcess, str, str], runtime_image: str,
                                           docker_client: Any) -> None:
    """start (idempotent) -> ready -> sandbox URL with its key -> pause (503) -> resume (same key) -> stop."""
    svc, token, other = service
    with _client(svc, token) as api, _client(svc, other) as stranger, httpx.Client(timeout=120) as plain:
        record = _start(api, runtime_image, "conv-1")
        rid = record["runtime_id"]
        assert set(record) >= {"runtime_id", "session_id", "url", "session_api_key", "status", "pod_status",
                               "work_hosts", "restart_count", "restart_reasons"}
        assert record["session_id"] == "conv-1" and record["status"] == "running"
        assert record["url"] == f"{svc.url}/openhands/{rid}"
        key = record["session_api_key"]
        assert _start(api, runtime_image, "conv-1")["runtime_id"] == rid  # idempotent per session id
        ready = _wait_ready(api, rid)
        assert ready["session_api_key"] == key and ready["status"] == "running"

        # One record shape everywhere.
        assert api.get("/sessions/conv-1").json() == ready
        assert api.get("/sessions/batch", params={"ids": ["conv-1", "nope"]}).json() == [ready]
        assert api.get("/list").json() == {"runtimes": [ready]}
        with svc.client(token) as v1:  # a runtime is a sandbox of its token, on /v1 too
            listed = v1.get("/v1/sandboxes").json()["sandboxes"]
            assert [(s["id"], s["state"], s["labels"]["openhands.session-id"]) for s in listed] == [
                (rid, "running", "conv-1")]

        # Another token sees none of it.
        assert stranger.get(f"/runtime/{rid}").status_code == 404
        assert stranger.get("/sessions/conv-1").status_code == 404
        assert stranger.get("/list").json() == {"runtimes": []}
        assert stranger.post("/stop", json={"runtime_id": rid}).status_code == 404

        # The sandbox URL: liveness without a key, the rest only with it; the token never reaches the server.
        url = record["url"]
        assert plain.get(f"{url}/alive").status_code == 200
        seen = plain.post(f"{url}/execute_action", json={"action": {"action": "run"}},
                          headers={"X-Session-API-Key": key, "X-API-Key": token}).json()
        assert seen["path"] == "/execute_action" and seen["has_key"] is True
        assert "x-api-key" not in seen["headers"]
        assert json.loads(seen["body"]) == {"action": {"action": "run"}}
        assert (seen["cwd"], seen["env"]) == ("/tmp", "seed")
        assert plain.post(f"{url}/execute_action", headers={"X-Session-API-Key": "wrong"}).status_code == 401
        assert plain.post(f"{url}/execute_action").status_code == 401

        # The key is in the server's environment, not in the container's configuration.
        container = docker_client.api.containers(filters={"label": f"agentbox.sandbox={rid}"})[0]
        attrs = docker_client.api.inspect_container(container["Id"])
        assert key not in json.dumps(attrs)
        assert not any(e.startswith("SESSION_API_KEY") for e in attrs["Config"]["Env"] or [])
        assert not any(p.get("PublicPort") for p in container["Ports"])  # nothing published on the host

        # Pause: the sandbox URL answers 503 (OpenHands then resumes); resume keeps the key.
        assert api.post("/pause", json={"runtime_id": rid}).json()["status"] == "paused"
        assert plain.get(f"{url}/alive").status_code == 503
        assert api.get(f"/runtime/{rid}").json()["pod_status"] != "ready"
        assert api.post("/resume", json={"runtime_id": rid}).status_code == 200
        assert _wait_ready(api, rid)["session_api_key"] == key
        assert plain.post(f"{url}/execute_action", headers={"X-Session-API-Key": key}).status_code == 200

        # Stop ends it: the session has no runtime any more, and its container is gone.
        assert api.post("/stop", json={"runtime_id": rid}).status_code == 200
        assert api.get("/sessions/conv-1").status_code == 404
        assert plain.get(f"{url}/alive").status_code == 404
        assert docker_client.api.containers(all=True, filters={"label": f"agentbox.sandbox={rid}"}) == []
        assert api.post("/stop", json={"runtime_id": None}).status_code == 200  # V0's close() after a failure


def test_v1_start_with_a_string_command_is_ready_on_health(service: tuple[ServiceProcess, str, str],
                                                           runtime_image: str) -> None:
    """The SDK's shape: ``command`` as a string, extra V1 fields; readiness is the server's ``/health``."""
    svc, token, _ = service
    v1 = [*COMMAND[:4], "/usr/local/bin/openhands-agent-server", "--port", "60000"]
    with _client(svc, token) as api, httpx.Client(timeout=120) as plain:
        record = _start(api, runtime_image, "v1-conv", command=shlex.join(v1), run_as_user=10001,
                        run_as_group=10001, fs_group=10001, image_pull_policy="Never", runtime_class="sysbox-runc")
        ready = _wait_ready(api, record["runtime_id"])
        seen = plain.get(f"{ready['url']}/api/bash", headers={"X-Session-API-Key": ready["session_api_key"]}).json()
        assert seen["argv"][-3:] == ["/usr/local/bin/openhands-agent-server", "--port", "60000"]


def test_refusals_leave_nothing(service: tuple[ServiceProcess, str, str], runtime_image: str,
                                docker_client: Any) -> None:
    """Wrong or missing X-API-Key: 401; a bad body: 422 naming the field; a missing image: 422, nothing left."""
    svc, token, _ = service
    with _client(svc, "abx_wrong") as wrong, _client(svc, None) as anonymous, _client(svc, token) as api:
        for client in (wrong, anonymous):
            assert client.get("/list").status_code == 401
            r = client.post("/start", json={"image": runtime_image, "command": COMMAND, "session_id": "s"})
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "unauthorized"
        r = api.post("/start", json={"image": runtime_image, "command": COMMAND})
        assert r.status_code == 422 and "session_id" in r.text
        r = api.post("/start", json={"image": "abxt-no-such-image:0", "command": COMMAND, "session_id": "s"})
        assert r.status_code == 422 and "agentbox build --openhands" in r.text
        assert api.get("/list").json() == {"runtimes": []}
        with svc.client(token) as v1:
            assert v1.get("/v1/sandboxes").json()["sandboxes"] == []
        assert api.get("/sessions/s").status_code == 404


def test_images_and_builds(service: tuple[ServiceProcess, str, str], runtime_image: str) -> None:
    """/registry_prefix, /image_exists (the local engine; nothing pulled), /build answered FAILURE."""
    svc, token, _ = service
    with _client(svc, token) as api:
        assert api.get("/registry_prefix").json()["registry_prefix"]
        found = api.get("/image_exists", params={"image": runtime_image}).json()
        assert found["exists"] is True and found["image"]["image_size_bytes"] > 0 and found["image"]["upload_time"]
        assert api.get("/image_exists", params={"image": "abxt-no-such-image:0"}).json()["exists"] is False
        build_id = api.post("/build", files={"context": ("context.tar.gz", b"x")},
                            data={"target_image": "x", "tags": ["a"]}).json()["build_id"]
        status = api.get("/build_status", params={"build_id": build_id}).json()
        assert status["status"] == "FAILURE" and "agentbox build --openhands" in status["error"]


def _pool_free(admin: httpx.Client, pool: str) -> float:
    for line in admin.get("/metrics").text.splitlines():
        if line.startswith(f'agentbox_pool_free{{pool="{pool}"}}'):
            return float(line.split()[-1])
    return -1


def _wait_pool(admin: httpx.Client, pool: str) -> None:
    """Until the pool has a ready runtime (bounded by count, not asserted on time)."""
    for _ in range(POLLS * 5):
        if _pool_free(admin, pool) == 1:
            return
        time.sleep(0.2)
    raise AssertionError(f"pool {pool} never filled")


def test_start_is_served_from_an_openhands_pool(services: Any, runtime_image: str, docker_client: Any,
                                                tmp_path: Any) -> None:
    """A ``[pool.openhands]`` profile equal to what OpenHands posts: the runtime is booted before the
    ``/start``, which takes it (ready at once, key delivered as for a cold one); a start that differs in
    what is fixed at creation (its environment) is made cold; the pool refills."""
    config = tmp_path / "service.toml"
    config.write_text(  # JSON strings and arrays are TOML too
        f'[[pool]]\nname = "oh"\nsize = 1\n[pool.openhands]\nimage = "{runtime_image}"\n'
        f'command = {json.dumps(COMMAND)}\nworking_dir = "/tmp"\nenvironment = {{ OH_TEST = "seed" }}\n'
    )
    svc = services("--config", str(config))
    token = svc.admin_token
    with svc.client(token) as admin, _client(svc, token) as api, httpx.Client(timeout=120) as plain:
        _wait_pool(admin, "oh")
        (waiting,) = [c["Labels"]["agentbox.sandbox"]
                      for c in docker_client.api.containers(filters={"label": "agentbox.service-pool=oh"})]
        assert api.get("/list").json() == {"runtimes": []}  # nobody's until taken

        record = _start(api, runtime_image, "conv-pooled")
        assert record["runtime_id"] == waiting and record["session_id"] == "conv-pooled"
        assert record["pod_status"] == "ready"  # its server answered before anyone asked
        assert 'agentbox_sandbox_creates_total{outcome="pooled"} 1.0' in admin.get("/metrics").text
        key = record["session_api_key"]
        seen = plain.post(f"{record['url']}/execute_action", headers={"X-Session-API-Key": key}).json()
        assert seen["has_key"] is True and (seen["cwd"], seen["env"]) == ("/tmp", "seed")
        assert plain.post(f"{record['url']}/execute_action", headers={"X-Session-API-Key": "x"}).status_code == 401
        attrs = docker_client.api.inspect_container(
            docker_client.api.containers(filters={"label": f"agentbox.sandbox={waiting}"})[0]["Id"])
        assert key not in json.dumps(attrs)
        assert _start(api, runtime_image, "conv-pooled")["runtime_id"] == waiting  # still idempotent

        cold = _start(api, runtime_image, "conv-cold", environment={"OH_TEST": "other"})
        pooled_now = {c["Labels"]["agentbox.sandbox"]
                      for c in docker_client.api.containers(all=True, filters={"label": "agentbox.service-pool=oh"})}
        assert cold["runtime_id"] != waiting and cold["runtime_id"] not in pooled_now
        assert 'agentbox_sandbox_creates_total{outcome="ok"} 1.0' in admin.get("/metrics").text
        _wait_pool(admin, "oh")  # refilled with a new one
        assert {c["Labels"]["agentbox.sandbox"]
                for c in docker_client.api.containers(filters={"label": "agentbox.service-pool=oh"})} - {waiting}
        for rid in (waiting, cold["runtime_id"]):
            assert api.post("/stop", json={"runtime_id": rid}).status_code == 200


def test_work_hosts_reach_the_runtime_app_ports(service: tuple[ServiceProcess, str, str], runtime_image: str,
                                                docker_client: Any) -> None:
    """``work_hosts`` are paths of the /v1 port proxy: a web app listening on a work port in the runtime
    answers there (with the token, never given the session key); nothing is published on the host."""
    svc, token, other = service
    with _client(svc, token) as api, httpx.Client(timeout=120) as plain:
        ready = _wait_ready(api, _start(api, runtime_image, "conv-web")["runtime_id"])
        rid = ready["runtime_id"]
        hosts = {port: url for url, port in ready["work_hosts"].items()}
        assert sorted(hosts) == [12000, 12001]
        assert hosts[12000] == f"{svc.url}/v1/sandboxes/{rid}/ports/12000/"
        bearer = {"Authorization": f"Bearer {token}"}
        got = plain.get(hosts[12000] + "page?q=1", headers={**bearer, "X-Session-API-Key": "leak?"})
        assert got.status_code == 200, got.text
        assert got.json()["work"] == "/page?q=1"
        assert not {"authorization", "x-session-api-key"} & set(got.json()["headers"])
        assert plain.get(hosts[12000]).status_code == 401  # /v1: a token is needed
        assert plain.get(hosts[12000], headers={"Authorization": f"Bearer {other}"}).status_code == 404
        closed = plain.get(hosts[12001], headers=bearer)  # nothing listens there
        assert closed.status_code == 502 and closed.json()["error"]["code"] == "port_closed"
        container = docker_client.api.containers(filters={"label": f"agentbox.sandbox={rid}"})[0]
        assert not any(p.get("PublicPort") for p in container["Ports"])
        assert api.post("/stop", json={"runtime_id": rid}).status_code == 200
