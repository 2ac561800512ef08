"""Fixtures for the runtime server tests: in-process services on a fresh event loop, and a real server process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agentbox.client import RuntimeClient
from agentbox.protocol import READY_LINE_PREFIX
from agentbox.server.procs import ChildReaper
from agentbox.server.settings import ServerSettings
from agentbox.server.shell import ShellManager

API_KEY = "test-key-" + os.urandom(8).hex()
T = TypeVar("T")


def settings_for(tmp_path: Path, **overrides: Any) -> ServerSettings:
    """Settings for in-process tests: private work and state dirs, short kill grace."""
    work = tmp_path / "work"
    state = tmp_path / "state"
    work.mkdir(exist_ok=True)
    state.mkdir(exist_ok=True)
    values: dict[str, Any] = {"api_key": "k", "work_dir": str(work), "state_dir": str(state), "kill_grace_s": 0.5}
    values.update(overrides)
    return ServerSettings(**values)


@contextlib.asynccontextmanager
async def shells(tmp_path: Path, **overrides: Any) -> AsyncIterator[ShellManager]:
    """A started ShellManager (with its ``default`` session), closed afterwards."""
    reaper = ChildReaper()
    reaper.start(asyncio.get_running_loop())
    manager = ShellManager(settings_for(tmp_path, **overrides), reaper)
    manager.start()
    try:
        yield manager
    finally:
        manager.close_all()
        reaper.close()


class ServerProcess:
    """A real ``python -m agentbox.server`` process."""

    def __init__(self, proc: subprocess.Popen[str], url: str, work_dir: Path) -> None:
        self.proc = proc
        self.url = url
        self.work_dir = work_dir

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid


def start_server(work_dir: Path, *extra: str) -> ServerProcess:
    """Start a server on a free port with the key on stdin, and wait for its ready line."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentbox.server",
            "--port",
            "0",
            "--work-dir",
            str(work_dir),
            "--api-key-stdin",
            *extra,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(API_KEY + "\n")
    proc.stdin.close()
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(30)
    if not lines or not lines[0].startswith(READY_LINE_PREFIX):
        proc.kill()
        raise RuntimeError(f"server did not print its ready line: {lines!r}")
    return ServerProcess(proc, lines[0].strip()[len(READY_LINE_PREFIX) :], work_dir)


def stop_server(server: ServerProcess) -> None:
    """SIGTERM the server and wait for it."""
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server process for the whole session."""
    srv = start_server(tmp_path_factory.mktemp("server-work"))
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="session")
def session_client(server: ServerProcess) -> Iterator[RuntimeClient]:
    """A sync client of the session server."""
    with RuntimeClient(server.url, API_KEY, timeout=30) as c:
        yield c


@pytest.fixture
def client(session_client: RuntimeClient, server: ServerProcess) -> RuntimeClient:
    """The session client, with the default session idle and back in the work dir for each test."""
    for info in session_client.list_sessions():
        if info.busy:
            session_client.interrupt(session=info.name)
    session_client.run(f"cd {server.work_dir}")
    return session_client


@pytest.fixture
def aio() -> Callable[[Coroutine[Any, Any, T]], T]:
    """Run a coroutine on a fresh event loop (in-process service tests)."""
    return asyncio.run


@pytest.fixture
def make_shells() -> Callable[..., contextlib.AbstractAsyncContextManager[ShellManager]]:
    """``async with make_shells(tmp_path, **settings) as manager``: in-process shell sessions."""
    return shells
