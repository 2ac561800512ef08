"""Every write is atomic: on a full disk the old content stays, and nothing half-written is left behind.

Disk-full runs on a 1 MiB tmpfs mounted for the test (never the host disk); it is skipped only where
mounting is impossible, with the reason.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_process import API_KEY, start_server, stop_server

from agentbox.errors import BadRequestError, FileOperationError
from agentbox.protocol import CreateOp, InsertOp, StrReplaceOp, UndoEditOp, WriteFile
from agentbox.server import fsio
from agentbox.server.files import Editor, FileService

NO_SPACE = r"no space left on the device; nothing was changed"  # the old code said "No space left on device"
OLD = "".join(f"line {i:05d} of the original content\n" for i in range(1200))  # ~40 KB


def _mount(kind: list[str], target: Path) -> None:
    proc = subprocess.run(["mount", *kind, str(target)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount for this test ({' '.join(kind)}): {proc.stderr.strip() or proc.returncode}")


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs holding ``old.txt`` (OLD, mode 0640) and a filler that takes every free block."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    _mount(["-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs"], mnt)
    try:
        (mnt / "old.txt").write_text(OLD)
        os.chmod(mnt / "old.txt", 0o640)
        _fill(mnt)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _fill(mnt: Path) -> None:
    with open(mnt / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)


def _unchanged(mnt: Path) -> None:
    assert (mnt / "old.txt").read_text() == OLD
    assert stat.S_IMODE((mnt / "old.txt").stat().st_mode) == 0o640
    assert sorted(p.name for p in mnt.iterdir()) == ["filler", "old.txt"]  # no temporary file left


def test_writes_and_edits_on_a_full_disk_keep_the_old_content(full_disk: Path) -> None:
    path = str(full_disk / "old.txt")
    fs, ed = FileService(), Editor()
    big = "x" * 100_000
    with pytest.raises(FileOperationError, match=NO_SPACE):
        fs.write(path, WriteFile(path=path, content=big))
    _unchanged(full_disk)
    with pytest.raises(FileOperationError, match=NO_SPACE):
        fs.write(path, WriteFile(path=path, content=big, append=True))
    _unchanged(full_disk)
    with pytest.raises(FileOperationError, match=NO_SPACE):
        ed.str_replace(path, StrReplaceOp(command="str_replace", path=path, old_str="line 00007", new_str=big))
    _unchanged(full_disk)
    with pytest.raises(FileOperationError, match=NO_SPACE):
        ed.insert(path, InsertOp(command="insert", path=path, insert_line=3, new_str=big))
    _unchanged(full_disk)
    # failed edits recorded nothing to undo
    with pytest.raises(FileOperationError, match="no edit to undo"):
        ed.undo_edit(path, UndoEditOp(command="undo_edit", path=path))
    new = str(full_disk / "new.txt")
    with pytest.raises(FileOperationError, match=NO_SPACE):
        ed.create(new, CreateOp(command="create", path=new, file_text=big))
    _unchanged(full_disk)
    with pytest.raises(FileOperationError, match=NO_SPACE), fs.open_writer(path, None, False) as w:
        for _ in range(100):
            w.write(b"y" * 4096)
        w.commit()
    _unchanged(full_disk)


def test_a_failed_undo_keeps_its_history(full_disk: Path) -> None:
    path = str(full_disk / "old.txt")
    ed = Editor()
    os.unlink(full_disk / "filler")
    ed.str_replace(path, StrReplaceOp(command="str_replace", path=path, old_str=OLD, new_str="short\n"))
    _fill(full_disk)
    with pytest.raises(FileOperationError, match=NO_SPACE):
        ed.undo_edit(path, UndoEditOp(command="undo_edit", path=path))
    assert (full_disk / "old.txt").read_text() == "short\n"
    os.unlink(full_disk / "filler")
    ed.undo_edit(path, UndoEditOp(command="undo_edit", path=path))
    assert (full_disk / "old.txt").read_text() == OLD


def test_replacing_keeps_mode_and_owner_and_follows_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "real.txt"
    target.write_text("old")
    os.chmod(target, 0o751)
    os.chown(target, 1234, 2345)
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    fs = FileService()
    assert fs.write(str(link), WriteFile(path=str(link), content="new!")).size == 4
    st = target.stat()
    assert target.read_text() == "new!" and link.is_symlink()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o751, 1234, 2345)
    assert fs.write(str(target), WriteFile(path=str(target), content="+", append=True)).size == 5
    assert target.read_text() == "new!+"
    created = tmp_path / "sub" / "made.sh"
    fs.write(str(created), WriteFile(path=str(created), content="#!/bin/sh\n", mode=0o700))
    assert stat.S_IMODE(created.stat().st_mode) == 0o700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.txt", "real.txt", "sub"]


def test_an_owner_that_cannot_be_given_back_is_kept_by_writing_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "theirs.txt"
    target.write_text("old content")
    os.chown(target, 1234, 1234)
    inode = target.stat().st_ino

    def refuse(fd: int, uid: int, gid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refuse)  # as a non-root server meets a file of another uid
    fsio.replace_file(str(target), b"new")
    st = target.stat()
    assert target.read_bytes() == b"new" and (st.st_uid, st.st_ino) == (1234, inode)
    assert [p.name for p in tmp_path.iterdir()] == ["theirs.txt"]


def test_a_bind_mounted_file_is_overwritten_in_place(tmp_path: Path) -> None:
    source, mounted = tmp_path / "source.txt", tmp_path / "mounted.txt"
    source.write_text("source")
    mounted.write_text("")
    _mount(["--bind", str(source)], mounted)  # like /etc/hosts in a container: rename over it is EBUSY
    try:
        fsio.replace_file(str(mounted), b"written through the mount")
        assert source.read_bytes() == b"written through the mount"
    finally:
        subprocess.run(["umount", str(mounted)], check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mounted.txt", "source.txt"]


def test_two_writers_of_one_path_never_share_a_temporary_file(tmp_path: Path) -> None:
    path = str(tmp_path / "f.bin")
    fs = FileService()
    with fs.open_writer(path, None, False) as a, fs.open_writer(path, None, False) as b:
        for _ in range(64):
            a.write(b"a" * 1000)
            b.write(b"b" * 1000)
        assert a.commit() == 64_000
        assert Path(path).read_bytes() == b"a" * 64_000
        assert b.commit() == 64_000
    assert Path(path).read_bytes() == b"b" * 64_000
    assert os.listdir(tmp_path) == ["f.bin"]


def test_special_files_are_not_written(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fs = FileService()
    with pytest.raises(FileOperationError, match="is a FIFO, not a regular file"):
        fs.write(str(fifo), WriteFile(path=str(fifo), content="x"))  # and does not wait for a reader
    with pytest.raises(FileOperationError, match="is a directory"):
        fs.write(str(tmp_path), WriteFile(path=str(tmp_path), content="x"))
    assert os.listdir(tmp_path) == ["fifo"]


def _unchecked(**fields: object) -> WriteFile:
    """A WriteFile built without the wire type's own checks (defaults filled in)."""
    return WriteFile.model_construct(**fields)  # type: ignore[arg-type]


def test_bad_content_fails_before_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    fs = FileService()
    # The wire type refuses these already (protocol.WriteFile); the service must hold on its own too, so
    # the models are built without validation here.
    late_error = "AAAA" * (2 << 20) + "!!!!"  # converted a slice at a time: the bad slice comes last
    for content, message in ((late_error, "not valid base64"), ("AAAé", "not valid base64")):
        with pytest.raises(BadRequestError, match=message):
            fs.write(str(path), _unchecked(path=str(path), content=content, encoding="base64"))
        with pytest.raises(BadRequestError, match=message):
            fs.write(str(path), _unchecked(path=str(path), content=content, encoding="base64", append=True))
    with pytest.raises(BadRequestError, match="cannot be encoded as UTF-8"):
        fs.write(str(path), _unchecked(path=str(path), content="ok \ud800 lone surrogate"))
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_http_writes_on_a_full_disk_are_a_clear_4xx_and_change_nothing(full_disk: Path) -> None:
    srv = start_server(full_disk)  # its work dir is the full tmpfs (its own state lives elsewhere)
    try:
        with httpx.Client(base_url=srv.url, headers={"X-Session-API-Key": API_KEY}, timeout=60) as c:
            big = b"y" * (300 << 10)
            tree = io.BytesIO()
            with tarfile.open(fileobj=tree, mode="w") as tar:
                info = tarfile.TarInfo("old.txt")
                info.size = len(big)
                tar.addfile(info, io.BytesIO(big))
            for method, route, kwargs in (
                ("PUT", "/files/raw", {"params": {"path": "old.txt"}, "content": big}),
                ("PUT", "/files/raw", {"params": {"path": "old.txt", "append": "true"}, "content": big}),
                ("POST", "/files/write", {"json": {"path": "old.txt", "content": big.decode()}}),
                ("PUT", "/files/upload", {"params": {"path": "old.txt", "format": "file"}, "content": big}),
                ("PUT", "/files/upload", {"params": {"path": ".", "format": "tar"}, "content": tree.getvalue()}),
                ("POST", "/files/edit", {"json": {"command": "insert", "path": "old.txt", "insert_line": 1,
                                                  "new_str": big.decode()}}),
            ):
                resp = c.request(method, route, **kwargs)
                assert resp.status_code == 400, (route, resp.text)
                assert resp.json()["code"] == "file_error" and "no space left" in resp.json()["message"], resp.text
                _unchanged(full_disk)
    finally:
        stop_server(srv)
