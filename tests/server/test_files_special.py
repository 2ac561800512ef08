"""Agent-planted files cannot take the server down: special files are refused, reads are bounded,
st_size is never trusted, and a FIFO never holds a worker thread."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from server_process import API_KEY, ServerProcess

from agentbox.errors import FileOperationError
from agentbox.protocol import ReadFile, ViewOp
from agentbox.server import fsio
from agentbox.server.files import Editor, FileService


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """What an agent could leave behind: a link to /dev/zero, a FIFO nobody writes, a link to a /proc file."""
    (tmp_path / "zero").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "status").symlink_to("/proc/self/status")
    return tmp_path


def test_special_files_are_refused_naming_their_type(planted: Path) -> None:
    fs, ed = FileService(), Editor()
    for name, kind in (("zero", "character device"), ("fifo", "FIFO")):
        path = str(planted / name)
        with pytest.raises(FileOperationError, match=f"is a {kind}, not a regular file"):
            fs.read(path, ReadFile(path=path))
        with pytest.raises(FileOperationError, match=f"is a {kind}"):
            fs.read(path, ReadFile(path=path, encoding="base64"))
        with pytest.raises(FileOperationError, match=f"is a {kind}"):
            ed.view(path, ViewOp(command="view", path=path))
        with pytest.raises(FileOperationError, match=f"is a {kind}"):
            fs.open_reader(path)


def test_proc_files_are_read_whole_though_their_size_is_zero(planted: Path) -> None:
    path = str(planted / "status")
    assert os.stat(path).st_size == 0
    got = FileService().read(path, ReadFile(path=path))
    assert got.content.startswith("Name:") and "\nPid:" in got.content
    assert got.size == len(got.content.encode())


def test_every_read_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 5000)
    assert fsio.read_file(str(tmp_path / "big"), 5000) == b"x" * 5000
    with pytest.raises(FileOperationError, match="larger than 4999 bytes"):
        fsio.read_file(str(tmp_path / "big"), 4999)


# ------------------------------------------------------------------------------------- through HTTP


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"X-Session-API-Key": API_KEY}, timeout=30) as c:
        yield c


@pytest.fixture
def remote_planted(server: ServerProcess) -> Iterator[Path]:
    base = Path(server.work_dir) / "planted"
    base.mkdir(exist_ok=True)
    for name in ("zero", "status"):
        if not (base / name).is_symlink():
            (base / name).symlink_to("/dev/zero" if name == "zero" else "/proc/self/status")
    for i in range(8):
        if not (base / f"fifo{i}").exists():
            os.mkfifo(base / f"fifo{i}")
    yield base


def test_http_read_of_dev_zero_is_a_4xx(http: httpx.Client, remote_planted: Path) -> None:
    resp = http.post("/files/read", json={"path": str(remote_planted / "zero")})
    assert resp.status_code == 400, resp.text
    assert resp.json()["code"] == "file_error" and "character device" in resp.json()["message"]


def test_fifo_reads_do_not_starve_later_file_calls(http: httpx.Client, remote_planted: Path) -> None:
    """Eight concurrent reads of FIFOs nobody writes to (six exhausted the old server's threads for good)."""
    fifos = [str(remote_planted / f"fifo{i}") for i in range(8)]

    def read(path: str) -> httpx.Response:
        with httpx.Client(base_url=http.base_url, headers=http.headers, timeout=30) as c:
            return c.post("/files/read", json={"path": path})

    with ThreadPoolExecutor(len(fifos)) as pool:
        answers = list(pool.map(read, fifos))
    assert [r.status_code for r in answers] == [400] * len(fifos)
    assert all("FIFO" in r.json()["message"] for r in answers)
    for route, body in (("/files/read", {"path": fifos[0], "encoding": "base64"}),
                        ("/files/edit", {"command": "view", "path": fifos[0]})):
        assert http.post(route, json=body).status_code == 400
    assert http.get("/files/raw", params={"path": fifos[0]}).status_code == 400
    assert http.get("/files/download", params={"path": fifos[0]}).status_code == 400
    listing = http.post("/files/list", json={"path": str(remote_planted)})
    assert listing.status_code == 200 and {e["type"] for e in listing.json()["entries"]} == {"symlink", "other"}


def test_http_download_of_a_proc_file_has_its_real_content(http: httpx.Client, remote_planted: Path) -> None:
    for route in ("/files/download", "/files/raw"):
        resp = http.get(route, params={"path": str(remote_planted / "status")})
        assert resp.status_code == 200, resp.text
        assert resp.content.startswith(b"Name:") and b"\nPid:" in resp.content
        assert "content-length" not in resp.headers  # streamed: st_size (0) is not announced


def test_http_tar_download_of_a_proc_file_carries_its_real_size(http: httpx.Client, tmp_path: Path) -> None:
    resp = http.get("/files/download", params={"path": "/proc/self/status", "format": "tar"})
    assert resp.status_code == 200, resp.text
    with tarfile.open(fileobj=io.BytesIO(resp.content)) as tar:
        member = tar.next()
        assert member is not None and member.size > 0
        data = tar.extractfile(member)
        assert data is not None and data.read().startswith(b"Name:")


def test_http_dev_null_download_is_a_clear_4xx(http: httpx.Client) -> None:
    for route in ("/files/download", "/files/raw"):
        resp = http.get(route, params={"path": "/dev/null"})
        assert resp.status_code == 400, resp.text
        assert resp.json() == {
            "code": "file_error",
            "message": "/dev/null is a character device, not a regular file: only regular files can be read",
        }


# -------------------------------------------------------------------------------------- tar downloads


def _tar_of(path: Path) -> dict[str, tarfile.TarInfo]:
    parts: list[bytes] = []
    FileService().send_tree(str(path), parts.append)
    sink = io.BytesIO(b"".join(parts))
    with tarfile.open(fileobj=sink) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_tar_download_stores_special_files_as_headers_and_never_reads_them(planted: Path) -> None:
    (planted / "a.txt").write_text("real")
    os.link(planted / "a.txt", planted / "b.txt")
    members = _tar_of(planted)
    assert members["./fifo"].isfifo() and members["./zero"].issym() and members["./zero"].linkname == "/dev/zero"
    assert members["./a.txt"].size == 4 and members["./b.txt"].islnk() and members["./b.txt"].linkname == "./a.txt"


def test_tar_download_of_a_very_deep_tree(tmp_path: Path) -> None:
    levels = [tmp_path.joinpath(*["d"] * n) for n in range(1, 1101)]  # deeper than the recursion limit
    for level in levels:  # (pathlib's mkdir(parents=True) and rmtree recurse: done level by level)
        level.mkdir()
    (levels[-1] / "bottom.txt").write_text("found")
    try:
        members = _tar_of(tmp_path)
        assert len(members) == 1102 and members["./" + "d/" * 1100 + "bottom.txt"].size == 5
    finally:
        (levels[-1] / "bottom.txt").unlink()
        for level in reversed(levels):
            level.rmdir()


def test_tar_download_follows_the_path_asked_for_but_nothing_under_it(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f.txt").write_text("f")
    (tmp_path / "tree" / "out").symlink_to("/etc")
    (tmp_path / "link").symlink_to("tree")
    members = _tar_of(tmp_path / "link")
    assert sorted(members) == [".", "./f.txt", "./out"] and members["./out"].issym()
