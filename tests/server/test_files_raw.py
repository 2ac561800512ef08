"""Raw-bytes file endpoints: ``GET /files/raw`` streams a file's exact bytes, ``PUT /files/raw`` streams the
request body into it atomically, in bounded server memory."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from server_process import API_KEY, ServerProcess, start_server, stop_server

HEADERS = {"X-Session-API-Key": API_KEY}


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=60) as c:
        yield c


def test_raw_write_then_read_round_trips_exact_bytes(http: httpx.Client, server: ServerProcess) -> None:
    data = os.urandom(3 << 20) + b"\0\r\n\xff" * 1000
    chunks = (data[i : i + 100_000] for i in range(0, len(data), 100_000))
    resp = http.put("/files/raw", params={"path": "raw/data.bin"}, content=chunks)
    assert resp.status_code == 200, resp.text
    path = Path(server.work_dir) / "raw" / "data.bin"
    assert resp.json() == {"path": str(path), "size": len(data)}
    assert path.read_bytes() == data
    got = http.get("/files/raw", params={"path": "raw/data.bin"})
    assert got.status_code == 200 and got.headers["content-type"] == "application/octet-stream"
    assert "content-length" not in got.headers  # streamed chunked: no size is announced from st_size
    assert got.content == data
    empty = http.put("/files/raw", params={"path": "raw/empty.bin"}, content=b"")
    assert empty.json()["size"] == 0 and http.get("/files/raw", params={"path": "raw/empty.bin"}).content == b""


def test_raw_write_mode_append_and_session_cwd(http: httpx.Client, server: ServerProcess) -> None:
    sub = Path(server.work_dir) / "raw-cwd"
    sub.mkdir(exist_ok=True)
    assert http.post("/sessions", json={"name": "rawcwd", "cwd": str(sub)}).status_code == 200
    try:
        params = {"path": "run.sh", "session": "rawcwd", "mode": str(0o700)}
        assert http.put("/files/raw", params=params, content=b"#!/bin/sh\n").status_code == 200
        assert stat.S_IMODE((sub / "run.sh").stat().st_mode) == 0o700
        more = http.put("/files/raw", params={"path": "run.sh", "session": "rawcwd", "append": "true"}, content=b"x\n")
        assert more.json() == {"path": str(sub / "run.sh"), "size": 12}
        assert (sub / "run.sh").read_bytes() == b"#!/bin/sh\nx\n"
        assert stat.S_IMODE((sub / "run.sh").stat().st_mode) == 0o700
        assert http.get("/files/raw", params={"path": "run.sh", "session": "rawcwd"}).content == b"#!/bin/sh\nx\n"
    finally:
        http.delete("/sessions/rawcwd")


@pytest.mark.parametrize(
    ("method", "params", "status", "code", "words"),
    [
        ("GET", {"path": "raw-missing/none.bin"}, 404, "not_found", "no such file"),
        ("GET", {"path": "."}, 400, "file_error", "is a directory"),
        ("PUT", {"path": "."}, 400, "file_error", "is a directory"),
        ("PUT", {"path": "x.bin", "mode": "99999"}, 422, "validation_error", "mode"),
        ("PUT", {"path": "x.bin", "append": "maybe"}, 422, "validation_error", "append"),
        ("GET", {}, 422, "validation_error", "path"),
        ("GET", {"path": "x", "session": "no-such-session"}, 404, "not_found", "no-such-session"),
    ],
)
def test_raw_errors_are_json_4xx(
    http: httpx.Client, method: str, params: dict[str, str], status: int, code: str, words: str
) -> None:
    resp = http.request(method, "/files/raw", params=params, content=b"body" if method == "PUT" else None)
    assert resp.status_code == status, resp.text
    assert resp.json()["code"] == code and words in resp.json()["message"]


def test_raw_write_into_a_file_parent_fails_cleanly(http: httpx.Client, server: ServerProcess) -> None:
    (Path(server.work_dir) / "raw-plain").write_text("a file")
    resp = http.put("/files/raw", params={"path": "raw-plain/child.bin"}, content=b"x")
    assert resp.status_code == 400 and resp.json()["code"] == "file_error", resp.text


@pytest.mark.parametrize("route", ["/files/raw", "/files/upload"])
def test_concurrent_writes_to_one_path_never_mix(route: str, server: ServerProcess) -> None:
    """Both writers succeed and the file holds exactly one of the two inputs (never a mix)."""
    inputs = [bytes([65 + i]) * (4 << 20) for i in range(2)]
    half = len(inputs[0]) // 2
    started = [asyncio.Event(), asyncio.Event()]

    async def body(me: int) -> AsyncIterator[bytes]:
        data = inputs[me]
        for i in range(0, half, 1 << 18):
            yield data[i : i + (1 << 18)]
        started[me].set()
        await started[1 - me].wait()  # both requests are half-way through before either finishes
        for i in range(half, len(data), 1 << 18):
            yield data[i : i + (1 << 18)]

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, headers=HEADERS, timeout=60) as c:
            params = {"path": "raw-race/same.bin"}
            return list(await asyncio.gather(*(c.put(route, params=params, content=body(i)) for i in range(2))))

    answers = asyncio.run(both())
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    final = (Path(server.work_dir) / "raw-race" / "same.bin").read_bytes()
    assert final in inputs
    assert os.listdir(Path(server.work_dir) / "raw-race") == ["same.bin"]


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_100mb_raw_transfer_costs_bounded_server_memory(tmp_path: Path) -> None:
    """Peak server RSS grows by well under the transfer's size, both ways (its own server: a clean peak)."""
    srv = start_server(tmp_path)
    try:
        before = _peak_rss(srv.pid)
        block = os.urandom(1 << 20)
        with httpx.Client(base_url=srv.url, headers=HEADERS, timeout=120) as c:
            resp = c.put("/files/raw", params={"path": "big.bin"}, content=(block for _ in range(100)))
            assert resp.status_code == 200 and resp.json()["size"] == 100 << 20, resp.text
            after_write = _peak_rss(srv.pid)
            digest = hashlib.sha256()
            with c.stream("GET", "/files/raw", params={"path": "big.bin"}) as got:
                assert got.status_code == 200
                for chunk in got.iter_bytes():
                    digest.update(chunk)
            after_read = _peak_rss(srv.pid)
        assert digest.digest() == hashlib.sha256(block * 100).digest()
        assert after_write - before < 32 << 20, (before, after_write)
        assert after_read - before < 32 << 20, (before, after_read)
    finally:
        stop_server(srv)


@pytest.mark.parametrize(
    ("method", "route", "kwargs"),
    [
        ("POST", "/files/read", {"json": {"path": "a\0b"}}),
        ("POST", "/files/write", {"json": {"path": "a\0b", "content": "x"}}),
        ("POST", "/files/list", {"json": {"path": "a\0b"}}),
        ("POST", "/files/edit", {"json": {"command": "view", "path": "a\0b"}}),
        ("POST", "/files/edit", {"json": {"command": "create", "path": "a\0b", "file_text": "x"}}),
        ("POST", "/files/edit", {"json": {"command": "str_replace", "path": "a\0b", "old_str": "x"}}),
        ("GET", "/files/raw", {"params": {"path": "a\0b"}}),
        ("PUT", "/files/raw", {"params": {"path": "a\0b"}, "content": b"x"}),
        ("PUT", "/files/upload", {"params": {"path": "a\0b"}, "content": b"x"}),
        ("PUT", "/files/upload", {"params": {"path": "a\0b", "format": "tar"}, "content": b"x"}),
        ("GET", "/files/download", {"params": {"path": "a\0b"}}),
    ],
)
def test_a_nul_byte_in_a_path_is_a_4xx_and_the_next_call_works(
    http: httpx.Client, method: str, route: str, kwargs: dict[str, object]
) -> None:
    resp = http.request(method, route, **kwargs)  # type: ignore[arg-type]
    # The wire types refuse a NUL before any file code runs: a 4xx naming the field.
    assert resp.status_code in (400, 422), resp.text
    assert "path" in resp.json()["message"]
    assert http.post("/files/list", json={"path": "."}).status_code == 200
