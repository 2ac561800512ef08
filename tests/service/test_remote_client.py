"""The SDK and the CLI in remote mode against a real ``agentbox serve`` process: explicit ``server=`` /
``--server``, policy refusals as clear errors, image-build progress over the SSE create, tokens that see
only their own sandboxes."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from service_process import AGENTBOX, ServiceProcess

from agentbox.backends.base import SandboxState
from agentbox.errors import ConfigError, SandboxError, SandboxNotFoundError
from agentbox.sandbox import AsyncSandbox, Sandbox

pytestmark = pytest.mark.docker

Services = Callable[..., ServiceProcess]


def _token(svc: ServiceProcess, name: str) -> str:
    with svc.client(svc.admin_token) as admin:
        r = admin.post("/v1/tokens", json={"name": name})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


def _cli(svc: ServiceProcess, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTBOX_", "SANDBOX_"))}
    return subprocess.run(
        [AGENTBOX, "--server", svc.url, "--token", token, *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_cli_run_start_exec_ls_pause_resume_rm_through_the_service(
    services: Services, service_config: Callable[..., Path], labels: dict[str, str]
) -> None:
    svc = services("--config", str(service_config()))
    token = _token(svc, "cli")
    label_args = [arg for k, v in labels.items() for arg in ("--label", f"{k}={v}")]

    ran = _cli(svc, token, "run", *label_args, "--json", "--", "cd /tmp && echo remote $((6*7)) && (exit 3)")
    assert ran.returncode == 3, ran.stderr
    result = json.loads(ran.stdout)
    assert result["output"] == "remote 42\n" and result["cwd"] == "/tmp"
    # `run` removed its sandbox again
    with svc.client(token) as client:
        assert client.get("/v1/sandboxes").json()["sandboxes"] == []

    started = _cli(svc, token, "start", *label_args, "--json")
    assert started.returncode == 0, started.stderr
    sid = json.loads(started.stdout)["id"]
    assert _cli(svc, token, "exec", sid, "--", "cd /opt && echo execd").stdout == "execd\n"
    listed = json.loads(_cli(svc, token, "ls", "--json").stdout)
    assert [(s["id"], s["state"]) for s in listed] == [(sid, "running")]
    assert _cli(svc, token, "pause", sid).returncode == 0
    assert json.loads(_cli(svc, token, "ls", "--json").stdout)[0]["state"] == "paused"
    assert _cli(svc, token, "resume", sid).returncode == 0
    again = _cli(svc, token, "exec", sid, "--json", "--", "pwd")
    assert json.loads(again.stdout)["output"] == "/opt\n"  # the same shell, across pause and resume
    assert "agentbox-server ready on" in _cli(svc, token, "logs", sid).stdout
    refused = _cli(svc, token, "rm", sid)
    assert refused.returncode == 1 and "running" in refused.stderr
    removed = _cli(svc, token, "rm", "-f", sid)
    assert removed.returncode == 0, removed.stderr
    assert json.loads(_cli(svc, token, "ls", "--json").stdout) == []

    # Another token sees nothing of it; a wrong token and a refused configuration are usage errors (2).
    gone = _cli(svc, token, "exec", sid, "--", "true")
    assert gone.returncode == 1 and sid in gone.stderr
    wrong = _cli(svc, "abx_not-a-token", "ls")
    assert wrong.returncode == 2 and "refused the token" in wrong.stderr
    host = _cli(svc, token, "run", *label_args, "--network", "host", "--", "true")
    assert host.returncode == 2 and "policy networks" in host.stderr
    local = _cli(svc, token, "reap")
    assert local.returncode == 2 and "--server" in local.stderr


def test_sdk_with_explicit_server_and_token(
    services: Services, service_config: Callable[..., Path], labels: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTBOX_SERVER", raising=False)
    monkeypatch.delenv("AGENTBOX_TOKEN", raising=False)
    svc = services("--config", str(service_config()))
    alice, bob = _token(svc, "alice"), _token(svc, "bob")
    where = {"server": svc.url, "token": alice}
    lines: list[str] = []
    # progress set: the create goes over the service's event stream
    with Sandbox(labels=labels, env={"GREETING": "hi there"}, progress=lines.append, **where) as sb:
        assert sb.run("echo $GREETING").output == "hi there\n"
        assert sb.config.env == {"GREETING": "hi there"}  # the service's effective configuration
        assert sb.container_id == sb.id and sb.url == f"{svc.url}/v1/sandboxes/{sb.id}/runtime"
        assert [i.id for i in Sandbox.list(**where)] == [sb.id]
        assert Sandbox.list(server=svc.url, token=bob) == []
        with pytest.raises(SandboxNotFoundError):
            Sandbox.connect(sb.id, server=svc.url, token=bob)
        # Paused behind the handle's back (the service's idle policy, another client): a clear error, and
        # resume() continues where it was.
        sb.run("cd /tmp")
        Sandbox.connect(sb.id, **where).pause()
        with pytest.raises(SandboxError, match=r"paused behind this handle's back .* resume\(\) continues it"):
            sb.run("true")
        assert sb.state is SandboxState.PAUSED
        sb.resume()
        assert sb.run("pwd").output == "/tmp\n"
        sb.stop()
        assert Sandbox.connect(sb.id, **where).state is SandboxState.STOPPED
        sb.start()  # the service starts it again and hands the key over
        assert sb.run("echo again").output == "again\n"
    assert sb.state is SandboxState.REMOVED
    assert Sandbox.list(**where) == []


def test_refusals_are_clear_errors_and_leave_nothing(
    services: Services, service_config: Callable[..., Path], labels: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AGENTBOX_SERVER", raising=False)
    svc = services("--config", str(service_config()))
    token = _token(svc, "carol")
    where = {"server": svc.url, "token": token}
    with pytest.raises(ConfigError, match="policy volume_roots") as err:
        Sandbox(labels=labels, volumes=[f"{tmp_path}:/workspace"], **where).start()
    assert err.value.sandbox_id is None  # refused before any sandbox existed
    with pytest.raises(ConfigError, match="swarm_manager: set by the service's operator"):
        Sandbox(labels=labels, swarm_manager="tcp://10.0.0.1:2376", **where).start()
    with pytest.raises(ConfigError, match="allow_docker_socket"):
        Sandbox(allow_docker_socket=True, **where)
    with pytest.raises(ConfigError, match=r"either server= .* or backend="):
        Sandbox(backend=Sandbox().backend, **where)
    with pytest.raises(ConfigError, match="AGENTBOX_TOKEN"):
        Sandbox(server=svc.url, token="").start()
    # An image that does not exist fails during the create, reported through the event stream.
    with pytest.raises(ConfigError, match="no-such-tag"):
        Sandbox(labels=labels, runtime_container_image="agentbox-runtime:no-such-tag", progress=print, **where).start()
    assert Sandbox.list(**where) == []


def test_async_sandbox_through_the_service(
    services: Services, service_config: Callable[..., Path], labels: dict[str, str]
) -> None:
    import asyncio

    svc = services("--config", str(service_config()))
    where = {"server": svc.url, "token": _token(svc, "dave")}

    async def main() -> tuple[str, list[str]]:
        async with AsyncSandbox(labels=labels, **where) as sb:
            await sb.run("cd /tmp")
            other = await AsyncSandbox.connect(sb.id, **where)
            out = (await other.run("pwd")).output
            await other.detach()
            return out, [i.id for i in await AsyncSandbox.list(**where)]

    out, ids = asyncio.run(main())
    assert out == "/tmp\n" and len(ids) == 1
