"""The runtime server's ``/pty`` WebSocket: a real server app on a real socket, a real bash on a real PTY.

No engine needed: the app runs in-process under uvicorn, as it runs inside a sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agentbox.protocol import API_KEY_HEADER
from agentbox.server.app import create_app
from agentbox.server.settings import ServerSettings

KEY = "pty-test-key"


@contextlib.asynccontextmanager
async def runtime_server(tmp_path: Path) -> AsyncIterator[str]:
    """The runtime server app on a free port; yields its ws:// base URL."""
    work = tmp_path / "work"
    work.mkdir()
    settings = ServerSettings(api_key=KEY, work_dir=str(work), state_dir=str(tmp_path / "state"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=port, log_level="warning",
                                           lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def read_until(ws: ClientConnection, needle: bytes, limit: float = 20, after: bytes = b"") -> bytes:
    """Terminal output until ``needle`` shows (after ``after``), bounded so a broken PTY fails, not hangs."""
    seen = b""
    async with asyncio.timeout(limit):
        while after not in seen or needle not in seen[seen.index(after) + len(after):]:
            data = await ws.recv()
            assert isinstance(data, bytes), "terminal output comes as binary frames"
            seen += data
    return seen


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_pty_echo_resize_and_work_dir(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with runtime_server(tmp_path) as base, connect(
            base + "/pty?cols=100&rows=30", additional_headers={API_KEY_HEADER: KEY}
        ) as ws:
            await ws.send(b"echo hi-$((40+2)); pwd\r")
            await read_until(ws, str(tmp_path / "work").encode(), after=b"hi-42")
            await ws.send(json.dumps({"type": "resize", "cols": 123, "rows": 45}))
            await ws.send(b"stty size\r")
            await read_until(ws, b"45 123")
            await ws.send(b"tty\r")
            await read_until(ws, b"/dev/pts/")

    run(scenario())


def test_pty_closing_the_socket_kills_the_shell_and_its_children(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with runtime_server(tmp_path) as base:
            async with connect(base + "/pty", additional_headers={API_KEY_HEADER: KEY}) as ws:
                await ws.send(b"sleep 1000 & echo PID=$!. | tr P Q\r")  # QID: not in the echoed input
                out = await read_until(ws, b".\r\n", after=b"QID=")
                pid = int(out.split(b"QID=")[-1].split(b".")[0])
                assert os.path.exists(f"/proc/{pid}")
            async with asyncio.timeout(10):
                while os.path.exists(f"/proc/{pid}") and b"Z" not in _state(pid):
                    await asyncio.sleep(0.05)

    run(scenario())


def _state(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        return b"Z"


def test_pty_exit_closes_the_socket_normally(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with runtime_server(tmp_path) as base, connect(
            base + "/pty", additional_headers={API_KEY_HEADER: KEY}
        ) as ws:
            await ws.send(b"exit\r")
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(10):
                    while True:
                        await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000

    run(scenario())


@pytest.mark.parametrize("headers", [{}, {API_KEY_HEADER: "wrong"}])
def test_pty_refuses_a_missing_or_wrong_key(tmp_path: Path, headers: dict[str, str]) -> None:
    async def scenario() -> None:
        async with runtime_server(tmp_path) as base:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(base + "/pty", additional_headers=headers):
                    pass
            assert refused.value.response.status_code == 403

    run(scenario())


def test_pty_refuses_a_bad_size(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with runtime_server(tmp_path) as base:
            with pytest.raises(InvalidStatus):
                async with connect(base + "/pty?cols=0&rows=x", additional_headers={API_KEY_HEADER: KEY}):
                    pass

    run(scenario())
