"""Real uvicorn servers for in-process proxy tests (a module of its own so test files can share it)."""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from starlette.types import ASGIApp


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(app: ASGIApp) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """Start ``app`` on a free port in this loop; returns the server, its task and the port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", ws="websockets-sansio"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, port
