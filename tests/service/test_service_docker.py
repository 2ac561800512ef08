"""The service for real: its own process, a real SQLite file, the real Docker engine."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from service_process import AGENTBOX, SESSION_LABEL, ServiceProcess

pytestmark = pytest.mark.docker

Services = Callable[..., ServiceProcess]


def _create(client: httpx.Client, labels: dict[str, str], **config: Any) -> dict[str, Any]:
    r = client.post("/v1/sandboxes", json={"config": config, "labels": labels})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _token(admin: httpx.Client, name: str, **quota: Any) -> str:
    r = admin.post("/v1/tokens", json={"name": name, **quota})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def _run(client: httpx.Client, sandbox_id: str, command: str) -> dict[str, Any]:
    r = client.post(f"/v1/sandboxes/{sandbox_id}/runtime/sessions/default/run", json={"command": command})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_tokens_see_only_their_own_sandboxes(services: Services, service_config: Callable[..., Path],
                                             labels: dict[str, str]) -> None:
    svc = services("--config", str(service_config()))
    with svc.client(svc.admin_token) as admin:
        alice_token, bob_token = _token(admin, "alice"), _token(admin, "bob")
        with svc.client(alice_token) as alice, svc.client(bob_token) as bob:
            made = _create(alice, labels)
            sid = made["id"]
            assert made["owner"] == "alice" and made["state"] == "running"
            assert [s["id"] for s in alice.get("/v1/sandboxes").json()["sandboxes"]] == [sid]
            assert bob.get("/v1/sandboxes").json()["sandboxes"] == []
            # Another token's id answers exactly like an id that does not exist.
            for method, path in [("GET", ""), ("DELETE", ""), ("POST", "/pause"), ("GET", "/logs"),
                                 ("POST", "/runtime/sessions/default/run")]:
                r = bob.request(method, f"/v1/sandboxes/{sid}{path}", json={"command": "id"})
                assert r.status_code == 404, (method, path, r.text)
                assert r.json()["error"]["code"] == "not_found"
            assert sid in [s["id"] for s in admin.get("/v1/sandboxes").json()["sandboxes"]]
            # Non-admins cannot manage tokens.
            assert bob.get("/v1/tokens").status_code == 403
            assert bob.post("/v1/tokens", json={"name": "eve"}).status_code == 403
            assert _run(alice, sid, "echo hello")["output"] == "hello\n"
            # The audit log has who did what.
            entries = admin.get("/v1/audit").json()["entries"]
            assert {"actor": "alice", "action": "create", "target": sid} in [
                {k: e[k] for k in ("actor", "action", "target")} for e in entries
            ]
            assert alice.delete(f"/v1/sandboxes/{sid}").json()["state"] == "removed"
            assert alice.get(f"/v1/sandboxes/{sid}").status_code == 404
    assert svc.proc.poll() is None


def test_proxy_runs_commands_and_streams_sse_unbuffered(services: Services, service_config: Callable[..., Path],
                                                        labels: dict[str, str], docker_client: Any) -> None:
    svc = services("--config", str(service_config()))
    with svc.client(svc.admin_token) as client:
        sid = _create(client, labels)["id"]
        result = _run(client, sid, "cd /tmp && echo $((6*7))")
        assert result["output"] == "42\n" and result["cwd"] == "/tmp"
        # No session key leaks to the client, and the client's bearer token is not forwarded inside.
        assert "x-session-api-key" not in {k.lower() for k in client.get(f"/v1/sandboxes/{sid}/runtime/info").headers}
        # The stream prints "first", then waits until a file appears; the file is written through the
        # proxy only once "first" was received. A buffering proxy would deadlock here (the test times out).
        events: list[dict[str, Any]] = []
        cmd = "echo first; while [ ! -f /tmp/go ]; do sleep 0.02; done; echo second"
        with client.stream("POST", f"/v1/sandboxes/{sid}/runtime/sessions/default/stream",
                           json={"command": cmd}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                events.append(event)
                if event.get("type") == "output" and "first" in event["text"] and not any(
                    "second" in e.get("text", "") for e in events
                ):
                    w = client.post(f"/v1/sandboxes/{sid}/runtime/files/write", json={"path": "/tmp/go", "content": ""})
                    assert w.status_code == 200, w.text
                if event.get("type") == "result":
                    break
        text = "".join(e.get("text", "") for e in events)
        assert "first" in text and "second" in text
        assert events[-1]["result"]["exit_code"] == 0
        # Runtime errors come back as the runtime server's own answer.
        r = client.post(f"/v1/sandboxes/{sid}/runtime/sessions/nope/run", json={"command": "true"})
        assert r.status_code == 404 and r.json()["code"] == "not_found"
        # Lifecycle: pause (the proxy refuses, 409), resume, stop, resume (restart: key handed over again).
        assert client.post(f"/v1/sandboxes/{sid}/pause").json()["state"] == "paused"
        r = client.post(f"/v1/sandboxes/{sid}/runtime/sessions/default/run", json={"command": "true"})
        assert r.status_code == 409 and "resume" in r.json()["error"]["message"]
        assert client.post(f"/v1/sandboxes/{sid}/pause").status_code == 409
        assert client.post(f"/v1/sandboxes/{sid}/resume").json()["state"] == "running"
        assert _run(client, sid, "pwd")["output"] == "/tmp\n"  # shell state survived the freeze
        assert client.post(f"/v1/sandboxes/{sid}/stop").json()["state"] == "stopped"
        assert client.post(f"/v1/sandboxes/{sid}/resume").json()["state"] == "running"
        assert _run(client, sid, "echo again")["output"] == "again\n"
        logs = client.get(f"/v1/sandboxes/{sid}/logs", params={"tail": 50})
        assert logs.status_code == 200 and "agentbox-server ready on" in logs.text
        metrics = client.get("/metrics").text
        assert 'agentbox_sandboxes{state="running"} 1.0' in metrics
        assert 'agentbox_sandbox_creates_total{outcome="ok"} 1.0' in metrics
        assert "agentbox_sandbox_create_seconds_count 1.0" in metrics
        assert 'agentbox_api_errors_total{code="conflict"}' in metrics
        container = docker_client.api.containers(filters={"label": f"agentbox.sandbox={sid}"})[0]
        # Owned by the service, not a process: a local `agentbox reap` must spare it.
        assert container["Labels"]["agentbox.keep-alive"] == "1"
        assert container["Labels"]["agentbox.service"] == client.get("/healthz").json()["service_id"]
        assert client.delete(f"/v1/sandboxes/{sid}").status_code == 200
        assert docker_client.api.containers(all=True, filters={"label": f"agentbox.sandbox={sid}"}) == []


def test_policy_refusals_are_4xx_naming_the_rule(services: Services, service_config: Callable[..., Path],
                                                  labels: dict[str, str], tmp_path: Path, docker_client: Any) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (tmp_path / "outside").mkdir()
    (allowed / "escape").symlink_to(tmp_path / "outside")
    svc = services("--config", str(service_config('[policy]\nnetworks = ["abxt-allowed-net"]')),
                   "--allow-volume-root", str(allowed))
    before = docker_client.api.containers(all=True, filters={"label": f"{SESSION_LABEL}={labels[SESSION_LABEL]}"})
    with svc.client(svc.admin_token) as admin:
        small = _token(admin, "small", max_sandboxes=0)
        capped = _token(admin, "capped", max_cpus=1.0, max_memory=256 * 1024**2)
        cases: list[tuple[str, dict[str, Any], dict[str, str], str]] = [
            (svc.admin_token, {"use_host_network": True}, labels, "host_network"),
            (svc.admin_token, {"volumes": ["/etc:/x"]}, labels, "volume_roots"),
            (svc.admin_token, {"volumes": [f"{allowed}/escape:/x"]}, labels, "volume_roots"),  # symlink out
            (svc.admin_token, {"volumes": ["cache:/cache"]}, labels, "named_volumes"),
            (svc.admin_token, {"network": "bridge"}, labels, "networks"),
            (svc.admin_token, {"additional_networks": ["host-net"]}, labels, "networks"),
            (svc.admin_token, {}, {**labels, "agentbox.owner-pid": "1"}, "labels"),
            (svc.admin_token, {}, {**labels, "agentbox.service": "forged"}, "labels"),
            (small, {}, labels, "quota.sandboxes"),
            (capped, {"memory": "128m"}, labels, "quota.cpus"),
            (capped, {"cpus": 2, "memory": "128m"}, labels, "quota.cpus"),
            (capped, {"cpus": 0.5, "memory": "1g"}, labels, "quota.memory"),
        ]
        for token, config, extra_labels, rule in cases:
            with svc.client(token) as c:
                r = c.post("/v1/sandboxes", json={"config": config, "labels": extra_labels})
            assert r.status_code == 403, (config, r.text)
            error = r.json()["error"]
            assert error["code"] == "policy_denied" and error["rule"] == rule, (config, error)
            assert error["message"].startswith(f"policy {rule}:")
        # Bad input is a 4xx naming the field, never a 5xx.
        for body, field in [
            ({"config": {"memory": "lots"}}, "config.memory"),
            ({"config": {"user_id": -1}}, "config.user_id"),
            ({"config": {"volumes": ["relative/path:/x"]}}, "volumes"),
            ({"config": {"bogus": 1}}, "config.bogus"),
            ({"config": {"runtime_container_image": "agentbox-no-such-image:never"}}, "agentbox-no-such-image"),
        ]:
            r = admin.post("/v1/sandboxes", json={**cast(dict[str, Any], body), "labels": labels})
            assert 400 <= r.status_code < 500, (body, r.text)
            assert field in r.json()["error"]["message"], (body, r.text)
        r = admin.post("/v1/sandboxes", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400
    # Nothing was created by any refused request, and no record was left either.
    after = docker_client.api.containers(all=True, filters={"label": f"{SESSION_LABEL}={labels[SESSION_LABEL]}"})
    assert len(after) == len(before)
    with svc.client(svc.admin_token) as admin:
        assert admin.get("/v1/sandboxes").json()["sandboxes"] == []


def test_kill_9_mid_create_then_restart_leaves_nothing_orphaned(
    services: Services, service_config: Callable[..., Path], labels: dict[str, str], docker_client: Any,
    tmp_path: Path,
) -> None:
    config = str(service_config())
    svc = services("--config", config)
    admin_token = svc.admin_token
    with svc.client(admin_token) as client:
        keep = _create(client, labels)["id"]
        _run(client, keep, "echo kept > /tmp/mark")
    # Watch the engine's own event stream for the next create, then kill -9 the service at that moment:
    # the container exists, the record says "creating", the client never got an answer.
    marker = {**labels, "abxt.kill": "1"}
    events = docker_client.events(
        decode=True, filters={"type": "container", "event": "create", "label": "abxt.kill=1"}
    )
    outcome: dict[str, Any] = {}

    def create() -> None:
        try:
            with svc.client(admin_token) as c:
                outcome["response"] = c.post("/v1/sandboxes", json={"labels": marker})
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=create)
    thread.start()
    try:
        event = next(iter(events))
    finally:
        events.close()
    svc.kill9()
    thread.join(60)
    assert "error" in outcome, outcome  # the request died with the service
    victim = event["Actor"]["Attributes"]["agentbox.sandbox"]
    db = sqlite3.connect(svc.data_dir / "service.db")
    # Killed between the engine's create and the server being ready: the record still says so.
    assert db.execute("SELECT state FROM sandboxes WHERE id = ?", (victim,)).fetchall() == [("creating",)]
    db.close()

    svc2 = services("--config", config, data_dir=svc.data_dir)
    assert "'removed': 1" in "".join(svc2.stderr), svc2.stderr
    with svc2.client(admin_token) as client:
        listed = {s["id"]: s for s in client.get("/v1/sandboxes").json()["sandboxes"]}
        assert set(listed) == {keep} and listed[keep]["state"] == "running"
        assert _run(client, keep, "cat /tmp/mark")["output"] == "kept\n"  # still usable, same session key
        service_id = client.get("/healthz").json()["service_id"]
    # Nothing orphaned: every container of this service has a record, and every record a container.
    containers = docker_client.api.containers(all=True, filters={"label": f"agentbox.service={service_id}"})
    assert sorted(c["Labels"]["agentbox.sandbox"] for c in containers) == [keep]
    assert docker_client.api.containers(all=True, filters={"label": "abxt.kill=1"}) == []
    with svc2.client(admin_token) as client:
        audit = [(e["action"], e["target"]) for e in client.get("/v1/audit").json()["entries"]]
    assert ("reconcile.remove", victim) in audit


def test_records_of_vanished_containers_are_marked_dead(services: Services, service_config: Callable[..., Path],
                                                        labels: dict[str, str], docker_client: Any) -> None:
    config = str(service_config())
    svc = services("--config", config)
    with svc.client(svc.admin_token) as client:
        sid = _create(client, labels)["id"]
    svc.stop()
    for c in docker_client.api.containers(all=True, filters={"label": f"agentbox.sandbox={sid}"}):
        docker_client.api.remove_container(c["Id"], force=True)
    svc2 = services("--config", config, data_dir=svc.data_dir)
    with svc2.client(svc2.admin_token) as client:
        record = client.get(f"/v1/sandboxes/{sid}").json()
        assert record["state"] == "dead" and "gone" in record["reason"]
        assert client.post(f"/v1/sandboxes/{sid}/resume").status_code == 409
        assert client.delete(f"/v1/sandboxes/{sid}").status_code == 200
        assert client.get("/v1/sandboxes").json()["sandboxes"] == []


def test_token_cli_on_the_data_dir(services: Services, service_config: Callable[..., Path]) -> None:
    svc = services("--config", str(service_config()))
    data = str(svc.data_dir)
    assert stat.S_IMODE(os.stat(svc.data_dir / "admin.token").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(svc.data_dir / "service.db").st_mode) == 0o600
    made = subprocess.run([AGENTBOX, "token", "create", "ci", "--max-sandboxes", "2", "--max-memory", "1g",
                           "--data-dir", data], capture_output=True, text=True, check=True)
    token = made.stdout.strip()
    assert token.startswith("abx_")
    # The secret is stored only as a digest.
    assert token.encode() not in (svc.data_dir / "service.db").read_bytes()
    with svc.client(token) as c:
        assert c.get("/v1/sandboxes").status_code == 200
    listed = subprocess.run([AGENTBOX, "token", "ls", "--json", "--data-dir", data], capture_output=True, text=True,
                            check=True)
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["ci"]["max_sandboxes"] == 2 and rows["ci"]["max_memory"] == 1024**3 and rows["admin"]["admin"]
    again = subprocess.run([AGENTBOX, "token", "create", "ci", "--data-dir", data], capture_output=True, text=True)
    assert again.returncode != 0 and "exists" in again.stderr
    subprocess.run([AGENTBOX, "token", "revoke", "ci", "--data-dir", data], check=True, capture_output=True)
    with svc.client(token) as c:
        r = c.get("/v1/sandboxes")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    # Revoked names are never reused (a new token must not inherit the old one's sandboxes).
    with svc.client(svc.admin_token) as admin:
        assert admin.post("/v1/tokens", json={"name": "ci"}).status_code == 409
        assert admin.delete("/v1/tokens/ci").status_code == 404
        assert {t["name"] for t in admin.get("/v1/tokens").json()["tokens"]} == {"admin"}




def _wait_for(predicate: Callable[[], bool], what: str, limit: float = 180) -> None:
    """Wait until ``predicate()`` (bounded; a hang is a failure, the time taken is not asserted)."""
    import time

    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def _pool_free(client: httpx.Client, pool: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'agentbox_pool_free{{pool="{pool}"}}'):
            return float(line.split()[-1])
    return -1


def test_pooled_create_is_served_from_the_pool(services: Services, service_config: Callable[..., Path],
                                               labels: dict[str, str], docker_client: Any) -> None:
    pool_labels = ", ".join(f'"{k}" = "{v}"' for k, v in labels.items())
    config = str(service_config(f'[[pool]]\nname = "warm"\nsize = 1\nlabels = {{ {pool_labels} }}\n'))
    svc = services("--config", config)
    with svc.client(svc.admin_token) as admin:
        _wait_for(lambda: _pool_free(admin, "warm") == 1, "the pool to fill")
        assert 'agentbox_pool_size{pool="warm"} 1.0' in admin.get("/metrics").text
        pooled = docker_client.api.containers(filters={"label": "agentbox.service-pool=warm"})
        assert len(pooled) == 1
        waiting = pooled[0]["Labels"]["agentbox.sandbox"]
        assert admin.get("/v1/sandboxes").json()["sandboxes"] == []  # nobody's yet: not listed
        assert admin.get(f"/v1/sandboxes/{waiting}").status_code == 404
        alice = _token(admin, "alice", max_sandboxes=1)
        with svc.client(alice) as c:
            got = _create(c, labels)
            assert got["id"] == waiting and got["owner"] == "alice" and got["state"] == "running"
            assert _run(c, waiting, "echo from-pool")["output"] == "from-pool\n"
            # The quota holds for pooled creates too.
            r = c.post("/v1/sandboxes", json={"labels": labels})
            assert r.status_code == 403 and r.json()["error"]["rule"] == "quota.sandboxes"
        assert 'agentbox_sandbox_creates_total{outcome="pooled"} 1.0' in admin.get("/metrics").text
        # The pool refills in the background with a new sandbox.
        _wait_for(lambda: _pool_free(admin, "warm") == 1, "the pool to refill")
        again = docker_client.api.containers(filters={"label": "agentbox.service-pool=warm"})
        assert {c["Labels"]["agentbox.sandbox"] for c in again} - {waiting}
        # A create that differs from the profile (other labels) is made cold.
        cold = _create(admin, {**labels, "extra": "1"})
        assert cold["id"] not in {c["Labels"]["agentbox.sandbox"] for c in again}
        assert 'agentbox_sandbox_creates_total{outcome="ok"} 1.0' in admin.get("/metrics").text
    svc.stop()
    # After a restart the waiting sandbox is adopted, not made again.
    svc2 = services("--config", config, data_dir=svc.data_dir)
    with svc2.client(svc2.admin_token) as admin:
        assert _pool_free(admin, "warm") == 1
        assert len(admin.get("/v1/sandboxes").json()["sandboxes"]) == 2
    assert len(docker_client.api.containers(all=True, filters={"label": "agentbox.service-pool=warm"})) == 2


def test_events_stream_state_changes_and_engine_deaths(services: Services, service_config: Callable[..., Path],
                                                       labels: dict[str, str], docker_client: Any) -> None:
    svc = services("--config", str(service_config()))
    with svc.client(svc.admin_token) as admin:
        alice, bob = _token(admin, "alice"), _token(admin, "bob")
    with svc.client(alice) as a, svc.client(bob) as b:
        sid = _create(a, labels)["id"]
        with a.stream("GET", "/v1/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            assert next(lines) == ": connected"

            def next_event() -> dict[str, Any]:
                for line in lines:
                    if line.startswith("data: "):
                        return dict(json.loads(line[6:]))
                raise AssertionError("the event stream ended")

            other = _create(b, labels)["id"]  # bob's: alice must not see it
            assert a.post(f"/v1/sandboxes/{sid}/pause").status_code == 200
            event = next_event()
            assert (event["id"], event["state"], event["owner"]) == (sid, "paused", "alice")
            assert a.post(f"/v1/sandboxes/{sid}/resume").status_code == 200
            assert next_event()["state"] == "running"
            # Killed behind the service's back: the engine's event stream tells it, no polling.
            docker_client.api.kill(docker_client.api.containers(filters={"label": f"agentbox.sandbox={sid}"})[0]["Id"])
            event = next_event()
            assert (event["id"], event["state"]) == (sid, "dead")
            assert "exited with code 137" in event["reason"]
        record = a.get(f"/v1/sandboxes/{sid}").json()
        assert record["state"] == "dead" and "137" in record["reason"]
        assert a.post(f"/v1/sandboxes/{sid}/runtime/sessions/default/run", json={"command": "true"}).status_code == 409
        assert b.get(f"/v1/sandboxes/{other}").json()["state"] == "running"
        assert a.delete(f"/v1/sandboxes/{sid}").status_code == 200


def test_idle_sandboxes_are_paused_and_old_ones_removed(services: Services, service_config: Callable[..., Path],
                                                        labels: dict[str, str]) -> None:
    config = service_config("[policy]\nidle_timeout = 600\nmax_lifetime = 3600\n")
    svc = services("--config", str(config))
    with svc.client(svc.admin_token) as client:
        r = client.post("/v1/sandboxes", json={"labels": labels, "idle_timeout": 601})
        assert r.status_code == 403 and r.json()["error"]["rule"] == "lifecycle"
        r = client.post("/v1/sandboxes", json={"labels": labels, "keep_alive": True})
        assert r.status_code == 403 and r.json()["error"]["rule"] == "lifecycle"
        made = client.post("/v1/sandboxes", json={"labels": labels, "idle_timeout": 4}).json()
        sid = made["id"]
        assert (made["idle_timeout"], made["max_lifetime"]) == (4, 3600)  # the service's maximum as default
        short = client.post("/v1/sandboxes", json={"labels": labels, "max_lifetime": 5}).json()["id"]
        with client.stream("GET", "/v1/events") as events:
            lines = events.iter_lines()
            assert next(lines) == ": connected"
            # A command streamed for longer than the idle timeout keeps the sandbox awake: an idle pause
            # would freeze it and this stream would never end.
            with client.stream("POST", f"/v1/sandboxes/{sid}/runtime/sessions/default/stream",
                               json={"command": "sleep 6; echo done"}) as r:
                body = "".join(r.iter_text())
            assert '"exit_code":0' in body and "done" in body
            seen: dict[str, str] = {}
            for line in lines:
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    seen[event["id"]] = event["state"]
                    if seen.get(sid) == "paused" and seen.get(short) == "removed":
                        break
        assert client.get(f"/v1/sandboxes/{sid}").json()["state"] == "paused"
        assert client.get(f"/v1/sandboxes/{short}").status_code == 404
        audit = {(e["actor"], e["action"], e["target"]) for e in client.get("/v1/audit").json()["entries"]}
        assert ("service", "pause", sid) in audit and ("service", "remove", short) in audit


def test_create_can_stream_its_progress(services: Services, service_config: Callable[..., Path],
                                        labels: dict[str, str]) -> None:
    svc = services("--config", str(service_config()))
    sse = {"Accept": "text/event-stream"}

    def events(client: httpx.Client, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        out = []
        with client.stream("POST", "/v1/sandboxes", json=body, headers=sse) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            name = ""
            for line in r.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    out.append((name, json.loads(line[6:])))
        return out

    with svc.client(svc.admin_token) as admin:
        got = events(admin, {"labels": labels})
        assert [n for n, _ in got if n != "progress"] == ["sandbox"]
        sid = got[-1][1]["id"]
        assert _run(admin, sid, "echo streamed")["output"] == "streamed\n"
        # A refusal by policy is still a plain 4xx before any stream starts...
        r = admin.post("/v1/sandboxes", json={"labels": labels, "config": {"use_host_network": True}}, headers=sse)
        assert r.status_code == 403 and r.json()["error"]["rule"] == "host_network"
        # ...while a failure found later (the quota, checked when the sandbox is reserved) ends the stream.
        none = _token(admin, "none", max_sandboxes=0)
    with svc.client(none) as c:
        got = events(c, {"labels": labels})
        assert got[-1][0] == "error" and got[-1][1]["error"]["rule"] == "quota.sandboxes"


def test_create_streams_image_progress(services: Services, labels: dict[str, str], runtime_image: str,
                                       tmp_path: Path) -> None:
    """Without a ready runtime image configured, the create resolves (builds if needed) one: its steps
    arrive as progress events before the record."""
    if os.environ.get("AGENTBOX_TEST_IMAGE"):
        pytest.skip("AGENTBOX_TEST_IMAGE: the default runtime image may not exist")
    svc = services(data_dir=tmp_path / "plain")
    with svc.client(svc.admin_token) as admin, admin.stream(
        "POST", "/v1/sandboxes", json={"labels": labels}, headers={"Accept": "text/event-stream"}
    ) as r:
        text = "".join(r.iter_text())
    assert "event: progress" in text and "runtime image" in text
    assert text.rstrip().splitlines()[-2] == "event: sandbox"
