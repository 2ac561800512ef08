"""Host-side extraction of downloaded trees: the server is not trusted, so a hostile tar is refused whole.

Each hostile archive must raise an AgentboxError (UnsafeDownloadError), write nothing outside the
destination, and leave nothing half-written inside it either (no temp directory, no partial tree).
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentbox.client import UnsafeDownloadError, _extract_tree
from agentbox.errors import AgentboxError, FileOperationError


@dataclass(frozen=True)
class M:
    """One archive member: a regular file with ``data`` unless ``kind`` says otherwise."""

    name: str
    data: bytes = b"x"
    kind: bytes = tarfile.REGTYPE
    link: str = ""
    mode: int = 0o644


def _tar(*members: M) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type, info.linkname, info.mode = m.kind, m.link, m.mode
            if m.kind == tarfile.REGTYPE:
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


SYM, HARD, DIR = tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE
HOSTILE: dict[str, list[M]] = {
    "symlink then write through it": [M("up", kind=SYM, link="../victim"), M("up/keep.txt", b"pwned")],
    "absolute symlink": [M("etc", kind=SYM, link="/etc")],
    "escaping symlink": [M("a/b", kind=SYM, link="../../victim")],
    "symlink chain escaping": [M("d", kind=SYM, link="."), M("b", kind=SYM, link="d/..")],
    "hard link out": [M("h", kind=HARD, link="../victim/secret")],
    "hard link to an absolute path": [M("h", kind=HARD, link="/etc/passwd")],
    "dotdot name": [M("../victim/evil.txt")],
    "dotdot inside a name": [M("a/../../victim/evil.txt")],
    "absolute name": [M("/tmp/agentbox-evil.txt")],
    "fifo": [M("pipe", kind=tarfile.FIFOTYPE)],
    "char device": [M("null", kind=tarfile.CHRTYPE)],
    "block device": [M("sda", kind=tarfile.BLKTYPE)],
    "setuid file": [M("su", b"#!", mode=0o4755)],
    "setgid dir": [M("shared", kind=DIR, mode=0o2775)],
    "same name twice (second through a link)": [M("f", kind=SYM, link="g"), M("f", b"overwrite")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tree_is_refused_and_leaves_nothing(case: str, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret").write_text("keep me")
    dest = tmp_path / "dest"
    data = _tar(M("aaa-first.txt", b"fine"), *HOSTILE[case])  # a good member before the bad ones

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
    data = _tar(M("new.txt"), M("pipe", kind=tarfile.FIFOTYPE))
    with pytest.raises(UnsafeDownloadError, match="pipe"):
        _extract_tree(io.BytesIO(data), str(dest))
    assert _tree(dest) == {"mine.txt"}
    assert sorted(os.listdir(tmp_path)) == ["dest"]


def test_good_tree_with_inner_links_is_extracted(tmp_path: Path) -> None:
    data = _tar(
        M(".", kind=DIR, mode=0o750),
        M("pkg", kind=DIR, mode=0o555),  # read-only dir: its files are still written
        M("pkg/mod.py", b"print(1)\n", mode=0o640),
        M("run.sh", b"#!/bin/sh\n", mode=0o755),
        M("pkg/link", kind=SYM, link="../run.sh"),
        M("hard", kind=HARD, link="run.sh"),
        M("dangling", kind=SYM, link="not/there"),
    )
    dest = tmp_path / "out"
    _extract_tree(io.BytesIO(data), str(dest))
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
    data = _tar(M("sub/new.txt", b"new"), M("replace.txt", b"after"))
    _extract_tree(io.BytesIO(data), str(dest))
    assert _tree(dest) == {"sub", "sub/old.txt", "sub/new.txt", "replace.txt"}
    assert (dest / "replace.txt").read_text() == "after"
    assert sorted(os.listdir(tmp_path)) == ["dest"]


def test_truncated_tar_is_a_file_operation_error(tmp_path: Path) -> None:
    data = _tar(M("big.bin", b"z" * 100_000))[:50_000]
    with pytest.raises(FileOperationError):
        _extract_tree(io.BytesIO(data), str(tmp_path / "dest"))
    assert os.listdir(tmp_path) == []


def test_destination_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileOperationError, match="not a directory"):
        _extract_tree(io.BytesIO(_tar(M("a"))), str(tmp_path / "f"))


def test_failed_merge_with_read_only_directories_leaves_no_temp_tree(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "ro").mkdir(parents=True)
    (dest / "ro" / "sub").mkdir()  # a directory where the archive has a file: the merge must fail
    data = _tar(M("ro", kind=DIR, mode=0o555), M("ro/sub", b"file now"), M("ro/other", b"o"))
    with pytest.raises(FileOperationError, match="sub"):
        _extract_tree(io.BytesIO(data), str(dest))
    assert sorted(os.listdir(tmp_path)) == ["dest"]
