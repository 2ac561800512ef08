"""The HTTP client of a control plane's REST API v1 (``agentbox serve``), and the one place its errors
become agentbox errors.

Every answer that is not a success is ``{"error": {"code", "message"}}``; :data:`_ERRORS` maps each
wire code to the exception the same failure raises locally, so code written against a local sandbox
catches the same classes through the service (a policy refusal or a bad value is a ConfigError, an
unknown id a SandboxNotFoundError...).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx

from agentbox.errors import (
    AgentboxError,
    ConfigError,
    EngineError,
    EngineUnavailableError,
    SandboxError,
    SandboxNotFoundError,
    SandboxStartError,
    SandboxTimeoutError,
)

__all__ = ["ServiceApi", "error_from_service"]

#: wire code of the service -> the agentbox error a local caller would get for the same failure.
_ERRORS: dict[str, type[AgentboxError]] = {
    "bad_request": ConfigError,
    "validation_error": ConfigError,
    "policy_denied": ConfigError,
    "unauthorized": ConfigError,
    "forbidden": ConfigError,
    "not_found": SandboxNotFoundError,
    "method_not_allowed": AgentboxError,
    "conflict": SandboxError,
    "start_failed": SandboxStartError,
    "sandbox_unreachable": SandboxError,
    "timeout": SandboxTimeoutError,
    "engine_unavailable": EngineUnavailableError,
    "engine_error": EngineError,
    "internal": AgentboxError,
}


def error_from_service(status: int, content: bytes, where: str) -> AgentboxError:
    """The agentbox error for a service's error answer (any body: a proxy in between may send HTML)."""
    try:
        detail = json.loads(content)["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        text = content[:200].decode(errors="replace")
        return AgentboxError(f"HTTP {status} from the agentbox service at {where}: {text}")
    if code in ("unauthorized", "forbidden"):
        message = f"the agentbox service at {where} refused the token ({message}); check --token / AGENTBOX_TOKEN"
    elif code == "method_not_allowed" or code not in _ERRORS:
        message = f"the agentbox service at {where} answered {code}: {message}"
    return _ERRORS.get(code, AgentboxError)(message)


class ServiceApi:
    """Synchronous client of one service, authenticated by one bearer token (one keep-alive pool)."""

    def __init__(self, server: str, token: str, *, timeout: float = 60.0) -> None:
        self.server = server.rstrip("/")
        self._http = httpx.Client(
            base_url=self.server,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            # Headers and body in one segment: without TCP_NODELAY every call waits on a delayed ACK.
            transport=httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]),
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _transport_error(self, exc: httpx.HTTPError) -> AgentboxError:
        if isinstance(exc, httpx.TimeoutException):
            return SandboxTimeoutError(f"the agentbox service at {self.server} did not answer in time ({exc!r})")
        return EngineUnavailableError(f"the agentbox service at {self.server} does not answer ({exc!r})")

    def call(self, method: str, path: str, *, body: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        """One JSON call; the parsed answer (text for a text/plain one), or the translated error."""
        try:
            resp = self._http.request(method, path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        if resp.status_code >= 400:
            raise error_from_service(resp.status_code, resp.content, self.server)
        if resp.headers.get("content-type", "").startswith("text/plain"):
            return resp.text
        return resp.json()

    def create(self, body: Mapping[str, Any], progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """``POST /v1/sandboxes``; with ``progress``, as a server-sent event stream that reports the image
        build line by line. Returns the sandbox record once its runtime server answers."""
        if progress is None:
            # No read timeout: a first create may build an image; the service bounds the start itself.
            try:
                resp = self._http.post("/v1/sandboxes", json=body, timeout=httpx.Timeout(30.0, read=None))
            except httpx.HTTPError as exc:
                raise self._transport_error(exc) from exc
            if resp.status_code >= 400:
                raise error_from_service(resp.status_code, resp.content, self.server)
            record: dict[str, Any] = resp.json()
            return record
        try:
            with self._http.stream(
                "POST", "/v1/sandboxes", json=body, headers={"Accept": "text/event-stream"},
                timeout=httpx.Timeout(30.0, read=None),
            ) as resp:
                if resp.status_code >= 400:
                    raise error_from_service(resp.status_code, resp.read(), self.server)
                for event, data in _sse_events(resp.iter_lines()):
                    if event == "progress":
                        progress(str(json.loads(data).get("line", "")))
                    elif event == "sandbox":
                        sandbox: dict[str, Any] = json.loads(data)
                        return sandbox
                    elif event == "error":
                        raise error_from_service(400, data.encode(), self.server)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        raise SandboxError(f"the agentbox service at {self.server} ended the create stream without a sandbox")


def _sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of a server-sent event stream (comments and keep-alives skipped)."""
    event = "message"
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
    if data:
        yield event, "\n".join(data)
