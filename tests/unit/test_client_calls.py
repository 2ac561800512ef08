"""What the client refuses before sending, and how transport failures are reported (no server needed)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from agentbox.client import AsyncRuntimeClient, RuntimeClient, _Calls
from agentbox.errors import AgentboxError, BadRequestError, SandboxError, SandboxTimeoutError, ServerTimeoutError
from agentbox.protocol import SessionInfo, SessionList

SURROGATE = "bad\ud800text"


@pytest.fixture
def closed_port_client() -> Iterator[RuntimeClient]:
    """A client of a port nobody listens on: anything actually sent fails with a connection error."""
    with RuntimeClient("http://127.0.0.1:9", "k", timeout=5, sandbox_id="sb-1") as client:
        yield client


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.run(SURROGATE), "command"),
        (lambda c: c.write_file(SURROGATE, "x"), "path"),
        (lambda c: c.write_file("x", SURROGATE), "content"),
        (lambda c: c.write_file(SURROGATE, b"bytes"), "path"),
        (lambda c: c.read_bytes(SURROGATE), "path"),
        (lambda c: c.create_session("s", env={"K": SURROGATE}), "env"),
        (lambda c: c.create_session("s", env={SURROGATE: "v"}), "env"),
        (lambda c: c.background_info(SURROGATE), "bg_id"),
        (lambda c: c.send_keys(["C-c", SURROGATE]), "keys"),
        (lambda c: c.download(SURROGATE, "/tmp/never-written"), "path"),
    ],
)
def test_lone_surrogates_are_refused_before_sending(
    closed_port_client: RuntimeClient, call: Callable[[RuntimeClient], Any], field: str
) -> None:
    with pytest.raises(BadRequestError, match=field) as info:
        call(closed_port_client)
    assert "surrogate" in str(info.value)


def test_invalid_arguments_are_bad_requests_chained_to_the_validation_error(closed_port_client: RuntimeClient) -> None:
    with pytest.raises(BadRequestError, match="timeout") as info:
        closed_port_client.run("true", timeout=-1)
    assert info.value.__cause__ is not None
    with pytest.raises(BadRequestError, match="mode"):
        closed_port_client.write_file("x", b"data", mode=0o10000)


def test_connection_errors_carry_the_sandbox_and_the_cause(closed_port_client: RuntimeClient) -> None:
    with pytest.raises(SandboxError, match="cannot connect") as info:
        closed_port_client.alive()
    assert info.value.sandbox_id == "sb-1"
    assert isinstance(info.value.__cause__, httpx.ConnectError)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_host_side_timeout_is_a_sandbox_timeout_and_a_timeout_error(silent_server: str) -> None:
    with RuntimeClient(silent_server, "k", timeout=0.2) as client, pytest.raises(TimeoutError) as info:
        client.info()
    assert isinstance(info.value, SandboxTimeoutError)
    assert not isinstance(info.value, ServerTimeoutError)  # the host gave up; the server said nothing
    assert isinstance(info.value.__cause__, httpx.TimeoutException)


def test_async_host_side_timeout_is_a_sandbox_timeout(silent_server: str) -> None:
    async def main() -> None:
        async with AsyncRuntimeClient(silent_server, "k", timeout=0.2) as client:
            await client.info()

    with pytest.raises(SandboxTimeoutError) as info:
        asyncio.run(main())
    assert isinstance(info.value.__cause__, httpx.TimeoutException)


def test_calls_parse_to_their_declared_types() -> None:
    info = SessionInfo(name="default", pid=1, cwd="/", busy=False)
    body = SessionList(sessions=[info]).model_dump_json().encode()
    assert _Calls.list_sessions().result(200, body) == [info]
    assert _Calls.command_output("c1").result(200, b"out\xff") == "out\ufffd"
    with pytest.raises(AgentboxError):  # an unexpected body is an agentbox error, not a pydantic one
        _Calls.list_sessions().result(200, b'{"unexpected": 1}')


def test_which_calls_are_retried_when_a_kept_alive_connection_is_closed() -> None:
    assert _Calls.info().idempotent and _Calls.read_bytes("f", "default").idempotent
    assert _Calls.view("f", None, "default").idempotent
    assert not _Calls.run("true", "default", None, None, None).idempotent
    assert not _Calls.write_bytes("f", True, None, "default").idempotent  # appending twice is not once
    assert _Calls.write_bytes("f", False, None, "default").idempotent
    assert not _Calls.upload("f", "default", False).idempotent  # a streamed body cannot be sent again
