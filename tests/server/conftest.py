"""Fixtures for the runtime server tests: in-process services on a fresh event loop, and a real server process."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from server_process import API_KEY, ServerProcess, start_server, stop_server

from agentbox.client import RuntimeClient
from agentbox.server.procs import ChildReaper
from agentbox.server.settings import ServerSettings
from agentbox.server.shell import ShellManager

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


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid``, from /proc."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if fields[0] not in (b"Z", b"X") and int(fields[3]) == sid:
                found.append(int(name))
    return found


@pytest.fixture(name="session_pids")
def session_pids_fixture() -> Callable[[int], list[int]]:
    """``session_pids(sid)``: the live processes of a session, read from /proc."""
    return session_pids
