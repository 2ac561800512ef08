"""The server's streamed response: body and disconnect listener in plain asyncio (no anyio backend)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest

from agentbox.server.streaming import StreamingResponse

SCOPE: dict[str, Any] = {"type": "http", "asgi": {"spec_version": "2.3"}}


def _run(response: StreamingResponse, receive: Any) -> list[MutableMapping[str, Any]]:
    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(response(SCOPE, receive, send), 30))
    return sent


async def _never_disconnects() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def test_body_is_sent_whole_then_the_response_ends() -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in (b"a", b"b"):
            yield part

    sent = _run(StreamingResponse(body()), _never_disconnects)
    assert [m.get("body") for m in sent if m["type"] == "http.response.body"] == [b"a", b"b", b""]


def test_client_disconnect_stops_an_endless_body() -> None:
    stopped = []

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"x"
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            stopped.append(True)
            raise

    async def disconnect_soon() -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"type": "http.disconnect"}

    _run(StreamingResponse(endless()), disconnect_soon)
    assert stopped == [True]


def test_an_error_in_the_body_reaches_the_caller() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"x"
        raise ValueError("disk gone")

    with pytest.raises(ValueError, match="disk gone"):
        _run(StreamingResponse(broken()), _never_disconnects)


def test_no_anyio_backend_is_loaded_by_a_stream() -> None:
    # Loading it cost the first stream of every new sandbox 20-250 ms; checked in a fresh interpreter.
    code = (
        "import sys; from tests.server.test_streaming_response import test_body_is_sent_whole_then_the_response_ends"
        " as t; t(); print('anyio._backends._asyncio' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
