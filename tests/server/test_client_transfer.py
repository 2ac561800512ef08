"""The client's byte transfers: raw file bytes, uploads that fail half-way, downloads of hostile trees.

A tiny Starlette stub (in a uvicorn thread) plays the server where the real one cannot be made to misbehave
(hostile tar streams, an upload answered before its body is read), and implements the ``/files/raw``
contract; the same round trip also runs against the real server once it has the route.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import socket
import tarfile
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from server_process import API_KEY, ServerProcess
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agentbox._streams import PRODUCER_THREAD_PREFIX
from agentbox.client import AsyncRuntimeClient, RuntimeClient, UnsafeDownloadError
from agentbox.errors import AgentboxError, NotFoundError, SandboxError
from agentbox.protocol import FORMAT_HEADER, FileContent, FileWritten

# ------------------------------------------------------------------------------------ the stub server


@dataclass
class Stub:
    """What the stub serves and what it saw."""

    url: str
    root: Path
    download_tar: bytes = b""
    raw_routes: bool = True
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


def _error(status: int, code: str, message: str) -> Response:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def _stub_app(stub: Stub) -> Starlette:
    def local(request: Request) -> Path:
        return stub.root / request.query_params["path"].lstrip("/")

    async def get_raw(request: Request) -> Response:
        stub.seen.append(("GET", "/files/raw", dict(request.query_params)))
        if not stub.raw_routes:
            return _error(404, "not_found", "no endpoint GET /files/raw")
        path = local(request)
        if not path.is_file():
            return _error(404, "not_found", f"no such file: {path}")

        async def body() -> AsyncIterator[bytes]:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk

        return StreamingResponse(body(), media_type="application/octet-stream")

    async def put_raw(request: Request) -> Response:
        stub.seen.append(("PUT", "/files/raw", dict(request.query_params)))
        if not stub.raw_routes:
            return _error(404, "not_found", "no endpoint PUT /files/raw")
        path = local(request)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab" if request.query_params.get("append") == "true" else "wb") as f:
            async for chunk in request.stream():
                f.write(chunk)
        if "mode" in request.query_params:
            os.chmod(path, int(request.query_params["mode"]))
        return Response(FileWritten(path=str(path), size=path.stat().st_size).model_dump_json(),
                        media_type="application/json")

    async def read_json(request: Request) -> Response:  # the older base64 route, for the fallback
        body = await request.json()
        stub.seen.append(("POST", "/files/read", {"path": body["path"], "encoding": body["encoding"]}))
        path = stub.root / body["path"].lstrip("/")
        if not path.is_file():
            return _error(404, "not_found", f"no such file: {path}")
        data = path.read_bytes()
        answer = FileContent(path=str(path), content=base64.b64encode(data).decode(), encoding="base64", size=len(data))
        return Response(answer.model_dump_json(), media_type="application/json")

    async def write_json(request: Request) -> Response:
        body = await request.json()
        stub.seen.append(("POST", "/files/write", {"path": body["path"], "encoding": body["encoding"]}))
        path = stub.root / body["path"].lstrip("/")
        path.write_bytes(base64.b64decode(body["content"]))
        return Response(FileWritten(path=str(path), size=path.stat().st_size).model_dump_json(),
                        media_type="application/json")

    async def refuse_upload(request: Request) -> Response:
        # Answers at once, without reading the (large) body: the client must not be left blocked.
        stub.seen.append(("PUT", "/files/upload", dict(request.query_params)))
        return _error(400, "bad_request", "refused before reading the body")

    async def download(request: Request) -> Response:
        return Response(stub.download_tar, media_type="application/x-tar", headers={FORMAT_HEADER: "tar"})

    return Starlette(
        routes=[
            Route("/files/raw", get_raw, methods=["GET"]),
            Route("/files/raw", put_raw, methods=["PUT"]),
            Route("/files/read", read_json, methods=["POST"]),
            Route("/files/write", write_json, methods=["POST"]),
            Route("/files/upload", refuse_upload, methods=["PUT"]),
            Route("/files/download", download, methods=["GET"]),
        ]
    )


@pytest.fixture(scope="module")
def stub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stub]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections wait in the backlog until uvicorn accepts: no readiness polling needed
    stub = Stub(f"http://127.0.0.1:{sock.getsockname()[1]}", tmp_path_factory.mktemp("stub-root"))
    server = uvicorn.Server(uvicorn.Config(_stub_app(stub), lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


@pytest.fixture
def stub(stub_server: Stub) -> Stub:
    stub_server.seen.clear()
    stub_server.raw_routes = True
    return stub_server


def _fd_targets() -> list[str]:
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own fd is gone already
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
    return targets


def _open_sockets() -> set[str]:
    """Socket inodes are never reused while open, so a set tells a new socket from an old one."""
    return {t for t in _fd_targets() if t.startswith("socket:")}


def _open_files() -> list[str]:
    """What this process has open besides sockets (an in-process stub's side of a connection may close late)."""
    return sorted(t for t in _fd_targets() if not t.startswith("socket:"))


def _opened_since(before: list[str], after: list[str]) -> list[str]:
    """What is open now and was not before. Something else closing meanwhile (a collected
    connection of an earlier test) is not this test's business, so a plain count would be flaky."""
    return sorted((Counter(after) - Counter(before)).elements())


def _producer_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(PRODUCER_THREAD_PREFIX)]


# ------------------------------------------------------------------------------------ raw bytes


PAYLOAD = bytes(range(256)) * 4096 + b"\x00\xff"  # ~1 MiB, every byte value, not UTF-8


def test_bytes_round_trip_raw(stub: Stub) -> None:
    with RuntimeClient(stub.url, "k") as client:
        written = client.write_file("dir/blob.bin", PAYLOAD, mode=0o600)
        assert written.size == len(PAYLOAD)
        assert client.read_bytes("dir/blob.bin") == PAYLOAD
        client.write_file("dir/blob.bin", b"tail", append=True)
        assert client.read_bytes("dir/blob.bin") == PAYLOAD + b"tail"
    assert (stub.root / "dir/blob.bin").stat().st_mode & 0o777 == 0o600
    put = [params for method, _path, params in stub.seen if method == "PUT"]
    assert put[0] == {"path": "dir/blob.bin", "session": "default", "mode": "384", "append": "false"}
    assert put[1]["append"] == "true"


def test_async_bytes_round_trip_raw(stub: Stub) -> None:
    async def main() -> bytes:
        async with AsyncRuntimeClient(stub.url, "k") as client:
            await client.write_file("async.bin", PAYLOAD)
            return await client.read_bytes("async.bin")

    assert asyncio.run(main()) == PAYLOAD
    assert [m for m, _p, _q in stub.seen] == ["PUT", "GET"]


def test_missing_file_is_not_found(stub: Stub) -> None:
    with RuntimeClient(stub.url, "k", sandbox_id="sb-9") as client, pytest.raises(NotFoundError) as info:
        client.read_bytes("nope.bin")
    assert info.value.sandbox_id == "sb-9"


def test_binary_read_file_is_deprecated_and_warns_at_the_callers_line(stub: Stub) -> None:
    (stub.root / "old.bin").write_bytes(b"\x00\x01")
    with RuntimeClient(stub.url, "k") as client, pytest.warns(DeprecationWarning, match="read_bytes") as warned:
        content = client.read_file("old.bin", binary=True)
    assert content.encoding == "base64" and content.content == "AAE=" and content.size == 2
    assert warned[0].filename == __file__


def test_async_binary_read_file_warns_at_the_callers_line(stub: Stub) -> None:
    (stub.root / "old-async.bin").write_bytes(b"\xff")

    async def main() -> str:
        async with AsyncRuntimeClient(stub.url, "k") as client:
            return (await client.read_file("old-async.bin", binary=True)).content

    with pytest.warns(DeprecationWarning, match="read_bytes") as warned:
        assert asyncio.run(main()) == "/w=="
    assert warned[0].filename == __file__


def test_bytes_fall_back_to_the_json_routes_of_a_server_without_raw_routes(stub: Stub) -> None:
    stub.raw_routes = False
    with RuntimeClient(stub.url, "k") as client:
        client.write_file("old-server.bin", PAYLOAD)
        assert client.read_bytes("old-server.bin") == PAYLOAD
        assert client.read_bytes("old-server.bin") == PAYLOAD  # now known: straight to the JSON route
    assert [(m, p) for m, p, _q in stub.seen] == [
        ("PUT", "/files/raw"), ("POST", "/files/write"), ("POST", "/files/read"), ("POST", "/files/read")
    ]


def test_missing_file_on_a_server_with_raw_routes_asks_once_more_then_raises(stub: Stub) -> None:
    with RuntimeClient(stub.url, "k") as client:
        client.write_file("present.bin", b"1")  # the client now knows the raw route exists
        with pytest.raises(NotFoundError):
            client.read_bytes("absent.bin")
    assert [(m, p) for m, p, _q in stub.seen] == [("PUT", "/files/raw"), ("GET", "/files/raw")]


def test_bytes_round_trip_through_the_real_server(server: ServerProcess) -> None:
    # Whether or not the real server has /files/raw yet, bytes written come back exactly.
    with RuntimeClient(server.url, API_KEY) as client:
        client.write_file("fallback.bin", PAYLOAD)
        assert client.read_bytes("fallback.bin") == PAYLOAD
        with pytest.raises(NotFoundError):
            client.read_bytes("no-such-file.bin")


def test_raw_routes_of_the_real_server(server: ServerProcess) -> None:
    """The /files/raw contract, against the real server (skipped only while it lacks the route)."""
    headers = {"X-Session-API-Key": API_KEY}
    probe = httpx.get(f"{server.url}/files/raw", params={"path": "x"}, headers=headers)
    # 404 alone could be the file "x" missing: only a missing route (or method) skips.
    no_route = probe.status_code == 404 and probe.json().get("message", "").startswith("no endpoint")
    if no_route or probe.status_code == 405:
        pytest.skip("the runtime server has no /files/raw route yet")
    with RuntimeClient(server.url, API_KEY) as client:
        assert client.write_file("raw/real.bin", PAYLOAD).size == len(PAYLOAD)
        assert client._raw_files is True  # went through the raw route, not the fallback
        assert client.read_bytes("raw/real.bin") == PAYLOAD
        resp = httpx.get(f"{server.url}/files/raw", params={"path": "raw/real.bin"}, headers=headers)
        assert resp.headers["content-type"] == "application/octet-stream" and resp.content == PAYLOAD
        with pytest.raises(NotFoundError):
            client.read_bytes("raw/missing.bin")


# ------------------------------------------------------------------------------------ failing uploads


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tree far bigger than the producer's queue and the socket buffers together."""
    root = tmp_path_factory.mktemp("big-tree")
    for i in range(3):
        (root / f"part{i}.bin").write_bytes(os.urandom(1 << 16) * 128)  # 8 MiB each
    return root


@dataclass
class _Baseline:
    sockets: set[str]
    files: list[str]
    threads: set[threading.Thread]


def _baseline() -> _Baseline:
    return _Baseline(_open_sockets(), _open_files(), set(threading.enumerate()))


def _assert_nothing_left(before: _Baseline, *, sockets: bool = True) -> None:
    """No producer thread, no extra thread, no file left open (nor socket, unless the server is in-process)."""
    assert _producer_threads() == []
    assert [t.name for t in set(threading.enumerate()) - before.threads] == []
    assert _opened_since(before.files, _open_files()) == []
    if sockets:
        assert sorted(_open_sockets() - before.sockets) == []


def test_upload_refused_before_the_body_leaves_no_thread_or_file(stub: Stub, big_tree: Path) -> None:
    before = _baseline()
    with RuntimeClient(stub.url, "k") as client, pytest.raises(AgentboxError):
        client.upload(big_tree, "dest")
    _assert_nothing_left(before, sockets=False)
    with RuntimeClient(stub.url, "k") as client, pytest.raises(AgentboxError):
        client.upload(big_tree / "part0.bin", "dest.bin")  # a single file: its file is closed too
    _assert_nothing_left(before, sockets=False)


def test_async_upload_refused_before_the_body_leaves_no_thread_or_file(stub: Stub, big_tree: Path) -> None:
    async def main() -> None:
        async with AsyncRuntimeClient(stub.url, "k") as client:
            with pytest.raises(AgentboxError):
                await client.upload(big_tree, "dest")
            with pytest.raises(AgentboxError):
                await client.upload(big_tree / "part1.bin", "dest.bin")

    before = _baseline()
    asyncio.run(main())
    _assert_nothing_left(before, sockets=False)


def test_upload_with_a_bad_argument_to_the_real_server_leaves_nothing(server: ServerProcess, big_tree: Path) -> None:
    before = _baseline()
    with RuntimeClient(server.url, API_KEY) as client, pytest.raises(AgentboxError):
        client.upload(big_tree, "dest", session="not a session name")
    _assert_nothing_left(before)  # the server is another process: every socket is counted too


@contextlib.contextmanager
def _dropping_server(connections: int) -> Iterator[str]:
    """A port whose server reads the start of each request and then drops the connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(connections)

    def drop() -> None:
        for _ in range(connections):
            conn, _ = listener.accept()
            conn.recv(1024)  # the request has started
            conn.close()

    dropper = threading.Thread(target=drop)
    dropper.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        dropper.join()
        listener.close()


def test_upload_over_a_dropped_connection_leaves_nothing(big_tree: Path) -> None:
    before = _baseline()
    with _dropping_server(2) as url, RuntimeClient(url, "k") as client:
        with pytest.raises(SandboxError, match="lost the connection"):
            client.upload(big_tree, "dest")
        with pytest.raises(SandboxError, match="lost the connection"):
            client.upload(big_tree / "part2.bin", "dest.bin")
    _assert_nothing_left(before)


def test_async_upload_over_a_dropped_connection_leaves_nothing(big_tree: Path) -> None:
    async def main(url: str) -> None:
        async with AsyncRuntimeClient(url, "k") as client:
            with pytest.raises(SandboxError, match="lost the connection"):
                await client.upload(big_tree, "dest")
            with pytest.raises(SandboxError, match="lost the connection"):
                await client.upload(big_tree / "part2.bin", "dest.bin")

    before = _baseline()
    with _dropping_server(2) as url:
        asyncio.run(main(url))
    _assert_nothing_left(before)


# ------------------------------------------------------------------------------------ hostile downloads


def _hostile_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        link = tarfile.TarInfo("up")
        link.type, link.linkname = tarfile.SYMTYPE, "../victim"
        tar.addfile(link)
        evil = tarfile.TarInfo("up/keep.txt")
        evil.size = 5
        tar.addfile(evil, io.BytesIO(b"pwned"))
    return buf.getvalue()


def test_hostile_download_is_refused_and_leaves_nothing(stub: Stub, tmp_path: Path) -> None:
    stub.download_tar = _hostile_tar()
    (tmp_path / "victim").mkdir()
    with RuntimeClient(stub.url, "k", sandbox_id="sb-2") as client, pytest.raises(UnsafeDownloadError) as info:
        client.download("/workspace", tmp_path / "out")
    assert info.value.sandbox_id == "sb-2"
    assert sorted(os.listdir(tmp_path)) == ["victim"] and os.listdir(tmp_path / "victim") == []


def test_async_hostile_download_is_refused_and_leaves_nothing(stub: Stub, tmp_path: Path) -> None:
    stub.download_tar = _hostile_tar()
    (tmp_path / "victim").mkdir()

    async def main() -> None:
        async with AsyncRuntimeClient(stub.url, "k") as client:
            await client.download("/workspace", tmp_path / "out")

    with pytest.raises(UnsafeDownloadError, match="symlink"):
        asyncio.run(main())
    assert sorted(os.listdir(tmp_path)) == ["victim"] and os.listdir(tmp_path / "victim") == []


def test_upload_and_download_of_a_tree_through_the_real_server(server: ServerProcess, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a/b").mkdir(parents=True)
    (src / "a/b/f.txt").write_text("deep")
    (src / "top.bin").write_bytes(PAYLOAD)
    os.symlink("a/b/f.txt", src / "link")
    with RuntimeClient(server.url, API_KEY) as client:
        assert client.upload(src, "tree-rt").files == 2
        client.download("tree-rt", tmp_path / "back")
    assert (tmp_path / "back/a/b/f.txt").read_text() == "deep"
    assert (tmp_path / "back/top.bin").read_bytes() == PAYLOAD
    assert os.readlink(tmp_path / "back/link") == "a/b/f.txt"
    assert sorted(os.listdir(tmp_path)) == ["back", "src"]


