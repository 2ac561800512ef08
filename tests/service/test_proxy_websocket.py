"""WebSocket relaying of the runtime proxy, against a tiny WebSocket echo app (the runtime server has no
WebSocket endpoint yet). Both ends are real uvicorn servers on real sockets; no engine needed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from asgi_servers import free_port, serve
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from agentbox.backends.base import Endpoint
from agentbox.protocol import API_KEY_HEADER
from agentbox.service.proxy import RuntimeProxy
from agentbox.service.sandboxes import Target

KEY = "echo-key"


async def _echo(websocket: WebSocket) -> None:
    # Like the runtime server: no key, no service.
    if websocket.headers.get(API_KEY_HEADER) != KEY or "authorization" in websocket.headers:
        await websocket.close(code=1008)
        return
    await websocket.accept(subprotocol=(websocket.scope.get("subprotocols") or [None])[0])
    await websocket.send_text(f"path={websocket.url.path} query={websocket.url.query}")
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "bye":
            await websocket.close(code=4000)
            return
        if message.get("text") is not None:
            await websocket.send_text("echo:" + message["text"])
        else:
            await websocket.send_bytes(b"echo:" + message["bytes"])


@contextlib.asynccontextmanager
async def proxied(upstream_port: int | None = None) -> AsyncIterator[str]:
    """A proxy app relaying /ws/{path} to the echo app, as the service does for a sandbox; yields its URL."""
    echo_server, echo_task, echo_port = await serve(Starlette(routes=[WebSocketRoute("/{path:path}", _echo)]))
    proxy = RuntimeProxy()
    port_of_sandbox = echo_port if upstream_port is None else upstream_port
    target = Target("sb1", Endpoint(f"http://127.0.0.1:{port_of_sandbox}", "published"), KEY)

    async def relay(websocket: WebSocket) -> None:
        await proxy.forward_websocket(websocket, target, websocket.path_params["path"])

    server, task, port = await serve(Starlette(routes=[WebSocketRoute("/ws/{path:path}", relay)]))
    try:
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        await proxy.aclose()
        for s, t in ((server, task), (echo_server, echo_task)):
            s.should_exit = True
            await t


def test_websocket_messages_are_relayed_both_ways() -> None:
    async def scenario() -> None:
        async with proxied() as url, connect(
            url + "/deep/path?x=1",
            subprotocols=[Subprotocol("chat")],
            additional_headers={"Authorization": "Bearer secret"},
        ) as ws:
            assert ws.subprotocol == "chat"
            # The echo app saw the session key, no client credentials, and the path and query as sent.
            assert await ws.recv() == "path=/deep/path query=x=1"
            await ws.send("hello")
            assert await ws.recv() == "echo:hello"
            await ws.send(b"\x00\x01")
            assert await ws.recv() == b"echo:\x00\x01"
            # The upstream's close, with its code, reaches the client.
            await ws.send("bye")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000

    asyncio.run(scenario())


def test_unreachable_upstream_refuses_the_upgrade() -> None:
    async def scenario() -> None:
        async with proxied(upstream_port=free_port()) as url:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url + "/x"):
                    pass
            assert refused.value.response.status_code == 403

    asyncio.run(scenario())
