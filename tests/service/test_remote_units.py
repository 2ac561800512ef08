"""The client side of the service without a service: error translation, the create's event stream, what a
create sends, and the bearer header of runtime calls (httpx mock transports, no engine)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from agentbox.backends.service import ServiceBackend
from agentbox.backends.service.api import error_from_service
from agentbox.backends.service.backend import settings_json
from agentbox.client import RuntimeClient
from agentbox.config import SandboxConfig
from agentbox.errors import (
    AgentboxError,
    ConfigError,
    EngineUnavailableError,
    SandboxError,
    SandboxNotFoundError,
    SandboxStartError,
)
from agentbox.protocol import API_KEY_HEADER
from agentbox.sandbox import Sandbox

RECORD = {
    "id": "0123456789ab", "owner": "alice", "state": "running", "reason": None,
    "config": {"runtime_container_image": "img:1", "env": {"A": "b"}, "work_dir": "/w", "swarm_manager": None},
    "labels": {"x": "y"}, "created": "2026-12-05T14:00:00+00:00", "last_activity": "2026-12-05T14:00:00+00:00",
    "idle_timeout": None, "max_lifetime": None, "keep_alive": False,
}


def _error(code: str, message: str = "why") -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


@pytest.mark.parametrize(
    ("code", "cls"),
    [("policy_denied", ConfigError), ("validation_error", ConfigError), ("unauthorized", ConfigError),
     ("not_found", SandboxNotFoundError), ("conflict", SandboxError), ("start_failed", SandboxStartError),
     ("engine_unavailable", EngineUnavailableError), ("something_new", AgentboxError)],
)
def test_service_error_codes_become_the_errors_a_local_caller_catches(code: str, cls: type[Exception]) -> None:
    error = error_from_service(403, _error(code, "policy volume_roots: /x is outside"), "http://svc")
    assert type(error) is cls
    assert "policy volume_roots" in str(error)


def test_a_non_json_error_answer_is_still_an_agentbox_error() -> None:
    error = error_from_service(502, b"<html>bad gateway</html>", "http://svc")
    assert type(error) is AgentboxError and "HTTP 502" in str(error) and "bad gateway" in str(error)


def _backend(handler: Any) -> ServiceBackend:
    backend = ServiceBackend("http://svc:1", "tok")
    backend._api._http = httpx.Client(base_url="http://svc:1", transport=httpx.MockTransport(handler),
                                      headers={"Authorization": "Bearer tok"})
    return backend


def test_create_with_progress_reads_the_event_stream() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = (
            ": connected\n\n"
            'event: progress\ndata: {"line": "step 1/2"}\n\n'
            'event: progress\ndata: {"line": "step 2/2"}\n\n'
            f"event: sandbox\ndata: {json.dumps(RECORD)}\n\n"
        )
        return httpx.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})

    lines: list[str] = []
    remote = _backend(handler).create_sandbox({"env": {"A": "b"}}, {"x": "y"}, lines.append)
    assert lines == ["step 1/2", "step 2/2"]
    assert remote.info.id == "0123456789ab" and remote.info.url == "http://svc:1/v1/sandboxes/0123456789ab/runtime"
    assert remote.config.env == {"A": "b"} and remote.config.work_dir == "/w"
    request = seen[0]
    assert request.headers["accept"] == "text/event-stream" and request.headers["authorization"] == "Bearer tok"
    assert json.loads(request.content) == {"config": {"env": {"A": "b"}}, "labels": {"x": "y"}}


def test_an_error_event_of_the_create_stream_is_raised() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = b"event: error\ndata: " + _error("validation_error", "image agentbox-runtime:nope not found") + b"\n\n"
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    with pytest.raises(ConfigError, match="agentbox-runtime:nope"):
        _backend(handler).create_sandbox({}, None, lambda line: None)


def test_a_create_only_sends_what_the_caller_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("SANDBOX_", "WORKSPACE_")) or name == "AGENTBOX_CONFIG":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no ./config.toml
    monkeypatch.setenv("SANDBOX_HARDENED", "true")
    sb = Sandbox(server="http://svc:1", token="t", cpus=1.5, volumes=["/srv/x:/workspace:ro"])
    body = settings_json(sb.config, sorted(sb._given))
    # Keywords and SANDBOX_* go; defaults (user_id, image...) are left to the service's operator.
    assert body == {"cpus": 1.5, "hardened": True, "volumes": ["/srv/x:/workspace:ro"]}
    given = SandboxConfig(memory="1g", env={"A": "b"})
    assert settings_json(given, sorted(given.model_fields_set)) == {"memory": 1024**3, "env": {"A": "b"}}
    with pytest.raises(ConfigError, match="swarm_nodes: set by the service's operator"):
        settings_json(SandboxConfig(swarm_nodes={"a": "tcp://a:1"}), ["swarm_nodes"])


def test_runtime_calls_through_the_service_carry_the_token_not_a_session_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "ok"})

    client = RuntimeClient("http://svc:1/v1/sandboxes/abc/runtime", "tok", auth="bearer")
    client._pool = httpx.MockTransport(handler)
    client._http = httpx.Client(base_url=client.base_url, headers=client._headers, transport=client._pool)
    client.alive()
    assert seen[0].url.path == "/v1/sandboxes/abc/runtime/alive"
    assert seen[0].headers["authorization"] == "Bearer tok" and API_KEY_HEADER not in seen[0].headers
    local = RuntimeClient("http://127.0.0.1:1", "key")
    assert local._headers == {API_KEY_HEADER: "key"}


def test_a_service_url_and_token_are_checked_before_any_call() -> None:
    with pytest.raises(ConfigError, match="expected http"):
        ServiceBackend("svc:1", "tok")
    with pytest.raises(ConfigError, match="AGENTBOX_TOKEN"):
        ServiceBackend("http://svc:1", "")
    backend = ServiceBackend("http://svc:1", "tok")
    for refused in (lambda: backend.store, lambda: backend.reap(), lambda: backend.resolve_image(SandboxConfig())):
        with pytest.raises(ConfigError, match="done by the agentbox service"):
            refused()
