"""Sandbox and AsyncSandbox forwards reach the runtime server with the caller's arguments (no Docker needed).

The handles are pointed at a local server process, as if started: what a container adds is tested in
tests/docker. test_parity.py pins the signatures; this pins that each forward passes them on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from server_process import API_KEY, ServerProcess

from agentbox.backends.base import Endpoint
from agentbox.errors import KernelUnavailableError, NotFoundError
from agentbox.protocol import OutputChunk, StreamEnd
from agentbox.sandbox import AsyncSandbox, Sandbox, SandboxState


@pytest.fixture
def sandbox(server: ServerProcess) -> Iterator[Sandbox]:
    sb = Sandbox()
    # As start() leaves a handle: an endpoint, a key, running. No container behind it.
    sb._endpoint = Endpoint(url=server.url, via="published")
    sb._key = API_KEY
    sb._state = SandboxState.RUNNING
    yield sb
    sb.detach()  # its HTTP client's connections (idempotent where a test detached already)


def test_sync_forwards(sandbox: Sandbox, tmp_path: Path, server: ServerProcess) -> None:
    sandbox.run(f"mkdir -p fw && cd fw && cd {server.work_dir}/fw", timeout=30)
    assert sandbox.run("pwd", session="default").output.strip().endswith("/fw")
    events = list(sandbox.stream("echo streamed"))
    assert isinstance(events[-1], StreamEnd) and events[-1].result.exit_code == 0
    assert "streamed" in "".join(e.text for e in events if isinstance(e, OutputChunk))
    assert sandbox.write_file("t.txt", "text\n", mode=0o600).size == 5
    assert sandbox.read_file("t.txt", start_line=1).content == "text\n"
    sandbox.write_file("b.bin", b"\x00\xfe")
    sandbox.write_file("b.bin", b"\x01", append=True)
    assert sandbox.read_bytes("b.bin") == b"\x00\xfe\x01"
    with pytest.warns(DeprecationWarning) as warned:
        assert sandbox.read_file("b.bin", binary=True).content == "AP4B"
    assert warned[0].filename == __file__  # the user's line, not the forward's
    assert {e.name for e in sandbox.list_dir(".", include_hidden=False).entries} >= {"t.txt", "b.bin"}
    (tmp_path / "up.txt").write_text("up")
    assert sandbox.upload(tmp_path / "up.txt", "up.txt").bytes == 2
    assert sandbox.download("up.txt", tmp_path / "down.txt") == str(tmp_path / "down.txt")
    assert (tmp_path / "down.txt").read_text() == "up"
    bg = sandbox.start_background("echo from-bg", env={"X": "1"})
    assert sandbox.read_background(bg.id, offset=0, max_bytes=100).id == bg.id
    assert sandbox.kill_background(bg.id).id == bg.id
    sandbox.run(f"cd {server.work_dir}")


def test_errors_from_forwards_name_the_sandbox(sandbox: Sandbox) -> None:
    with pytest.raises(NotFoundError) as info:
        sandbox.read_bytes("no/such/file")
    assert info.value.sandbox_id == sandbox.id and sandbox.id in str(info.value)

    async def main() -> None:
        asb = AsyncSandbox._wrap(sandbox)
        try:
            await asb.kill_background("bg-nope")
        finally:
            await asb._drop_client()

    with pytest.raises(NotFoundError) as async_info:
        asyncio.run(main())
    assert async_info.value.sandbox_id == sandbox.id


def test_async_forwards(sandbox: Sandbox, tmp_path: Path, server: ServerProcess) -> None:
    async def main() -> None:
        asb = AsyncSandbox._wrap(sandbox)
        try:
            assert asb.client.sandbox_id == sandbox.client.sandbox_id
            assert (await asb.run("echo hi", timeout=30)).output.strip() == "hi"
            events = [e async for e in asb.stream("echo streamed")]
            assert isinstance(events[-1], StreamEnd)
            await asb.write_file("async.bin", b"\x00\x01")
            assert await asb.read_bytes("async.bin") == b"\x00\x01"
            assert (await asb.read_file("async.bin", end_line=1)).path.endswith("async.bin")
            assert "async.bin" in {e.name for e in (await asb.list_dir()).entries}
            (tmp_path / "a.txt").write_text("a")
            await asb.upload(tmp_path / "a.txt", "a.txt")
            await asb.download("a.txt", tmp_path / "a-back.txt")
            assert (tmp_path / "a-back.txt").read_text() == "a"
            bg = await asb.start_background("true")
            assert (await asb.read_background(bg.id)).id == bg.id
            await asb.kill_background(bg.id)
        finally:
            await asb._drop_client()

    asyncio.run(main())
    sandbox.detach()


def test_every_forward_goes_through_the_one_guard(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered: list[str] = []

    @contextlib.contextmanager
    def guard(self: Sandbox) -> Iterator[None]:
        entered.append("sync")
        yield

    @contextlib.asynccontextmanager
    async def aguard(self: AsyncSandbox) -> AsyncIterator[None]:
        entered.append("async")
        yield

    monkeypatch.setattr(Sandbox, "_forwarding", guard)
    monkeypatch.setattr(AsyncSandbox, "_forwarding", aguard)
    (tmp_path / "g.txt").write_text("g")
    sandbox.run("true")
    list(sandbox.stream("true"))
    sandbox.write_file("g.txt", "g")
    sandbox.read_file("g.txt")
    sandbox.read_bytes("g.txt")
    sandbox.list_dir()
    sandbox.upload(tmp_path / "g.txt", "g2.txt")
    sandbox.download("g2.txt", tmp_path / "g3.txt")
    with contextlib.suppress(KernelUnavailableError):  # the kernel packages need not be on this host
        sandbox.run_python("1")
    bg = sandbox.start_background("true")
    sandbox.read_background(bg.id)
    sandbox.kill_background(bg.id)
    assert entered == ["sync"] * 12

    async def main() -> None:
        asb = AsyncSandbox._wrap(sandbox)
        try:
            await asb.run("true")
            [e async for e in asb.stream("true")]
            await asb.write_file("g.txt", "g")
            await asb.read_file("g.txt")
            await asb.read_bytes("g.txt")
            await asb.list_dir()
            await asb.upload(tmp_path / "g.txt", "g2.txt")
            await asb.download("g2.txt", tmp_path / "g4.txt")
            with contextlib.suppress(KernelUnavailableError):
                await asb.run_python("1")
            abg = await asb.start_background("true")
            await asb.read_background(abg.id)
            await asb.kill_background(abg.id)
        finally:
            await asb._drop_client()

    entered.clear()
    asyncio.run(main())
    assert entered == ["async"] * 12
