"""Host-side extraction of downloaded trees: the server is not trusted, so a hostile tar is refused whole.

Each hostile archive must raise an AgentboxError (UnsafeDownloadError), write nothing outside the
destination, and leave nothing half-written inside it either (no temp directory, no partial tree).
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from agentbox.client import UnsafeDownloadError, _extract_tree
from agentbox.errors import AgentboxError, FileOperationError

Build = Callable[[tarfile.TarFile], None]


def _tar(build: Build) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build(tar)
    return buf.getvalue()


def _file(tar: tarfile.TarFile, name: str, data: bytes = b"x", mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def _entry(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "", mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    tar.addfile(info)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


HOSTILE: dict[str, Build] = {
    "symlink then write through it": lambda t: (
        _entry(t, "up", tarfile.SYMTYPE, "../victim"),
        _file(t, "up/keep.txt", b"pwned"),
    ),
    "absolute symlink": lambda t: _entry(t, "etc", tarfile.SYMTYPE, "/etc"),
    "escaping symlink": lambda t: _entry(t, "a/b", tarfile.SYMTYPE, "../../victim"),
    "symlink chain escaping": lambda t: (
        _entry(t, "d", tarfile.SYMTYPE, "."),
        _entry(t, "b", tarfile.SYMTYPE, "d/.."),
    ),
    "hard link out": lambda t: _entry(t, "h", tarfile.LNKTYPE, "../victim/secret"),
    "hard link to an absolute path": lambda t: _entry(t, "h", tarfile.LNKTYPE, "/etc/passwd"),
    "dotdot name": lambda t: _file(t, "../victim/evil.txt"),
    "dotdot inside a name": lambda t: _file(t, "a/../../victim/evil.txt"),
    "absolute name": lambda t: _file(t, "/tmp/agentbox-evil.txt"),
    "fifo": lambda t: _entry(t, "pipe", tarfile.FIFOTYPE),
    "char device": lambda t: _entry(t, "null", tarfile.CHRTYPE),
    "block device": lambda t: _entry(t, "sda", tarfile.BLKTYPE),
    "setuid file": lambda t: _file(t, "su", b"#!", mode=0o4755),
    "setgid dir": lambda t: _entry(t, "shared", tarfile.DIRTYPE, mode=0o2775),
    "same name twice (second through a link)": lambda t: (
        _entry(t, "f", tarfile.SYMTYPE, "g"),
        _file(t, "f", b"overwrite"),
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tree_is_refused_and_leaves_nothing(case: str, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret").write_text("keep me")
    dest = tmp_path / "dest"
    good = lambda t: _file(t, "aaa-first.txt", b"fine")  # noqa: E731 - a good member before the bad one
    data = _tar(lambda t: (good(t), HOSTILE[case](t)))

    with pytest.raises(UnsafeDownloadError) as info:
        _extract_tree(io.BytesIO(data), str(dest))

    assert isinstance(info.value, AgentboxError)
    assert not dest.exists(), "a refused tree must leave no partial destination"
    assert sorted(os.listdir(tmp_path)) == ["victim"], "no temp directory left next to the destination"
    assert _tree(victim) == {"secret"} and (victim / "secret").read_text() == "keep me"


def test_refused_tree_leaves_an_existing_destination_untouched(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_text("mine")
    data = _tar(lambda t: (_file(t, "new.txt"), _entry(t, "pipe", tarfile.FIFOTYPE)))
    with pytest.raises(UnsafeDownloadError, match="pipe"):
        _extract_tree(io.BytesIO(data), str(dest))
    assert _tree(dest) == {"mine.txt"}
    assert sorted(os.listdir(tmp_path)) == ["dest"]


def test_good_tree_with_inner_links_is_extracted(tmp_path: Path) -> None:
    def build(t: tarfile.TarFile) -> None:
        _entry(t, ".", tarfile.DIRTYPE, mode=0o750)
        _entry(t, "pkg", tarfile.DIRTYPE, mode=0o555)  # read-only dir: its files are still written
        _file(t, "pkg/mod.py", b"print(1)\n", mode=0o640)
        _file(t, "run.sh", b"#!/bin/sh\n", mode=0o755)
        _entry(t, "pkg/link", tarfile.SYMTYPE, "../run.sh")
        _entry(t, "hard", tarfile.LNKTYPE, "run.sh")
        _entry(t, "dangling", tarfile.SYMTYPE, "not/there")

    dest = tmp_path / "out"
    _extract_tree(io.BytesIO(_tar(build)), str(dest))
    assert _tree(dest) == {"pkg", "pkg/mod.py", "pkg/link", "run.sh", "hard", "dangling"}
    assert (dest / "pkg/link").read_bytes() == b"#!/bin/sh\n"
    assert os.readlink(dest / "pkg/link") == "../run.sh"
    assert os.stat(dest / "hard").st_ino == os.stat(dest / "run.sh").st_ino
    assert stat.S_IMODE(os.stat(dest / "run.sh").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(dest / "pkg/mod.py").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(dest / "pkg").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o750
    assert sorted(os.listdir(tmp_path)) == ["out"]
    os.chmod(dest / "pkg", 0o755)  # let tmp_path be cleaned


def test_good_tree_merges_into_an_existing_directory(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "sub").mkdir(parents=True)
    (dest / "sub/old.txt").write_text("old")
    (dest / "replace.txt").write_text("before")
    data = _tar(lambda t: (_file(t, "sub/new.txt", b"new"), _file(t, "replace.txt", b"after")))
    _extract_tree(io.BytesIO(data), str(dest))
    assert _tree(dest) == {"sub", "sub/old.txt", "sub/new.txt", "replace.txt"}
    assert (dest / "replace.txt").read_text() == "after"
    assert sorted(os.listdir(tmp_path)) == ["dest"]


def test_truncated_tar_is_a_file_operation_error(tmp_path: Path) -> None:
    data = _tar(lambda t: _file(t, "big.bin", b"z" * 100_000))[:50_000]
    with pytest.raises(FileOperationError):
        _extract_tree(io.BytesIO(data), str(tmp_path / "dest"))
    assert os.listdir(tmp_path) == []


def test_destination_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileOperationError, match="not a directory"):
        _extract_tree(io.BytesIO(_tar(lambda t: _file(t, "a"))), str(tmp_path / "f"))
