"""Tar uploads are confined to their destination, whatever the archive holds and the interpreter lacks.

Real archives built with tarfile, extracted through the service and through a real server process. Each
slip test also runs with ``tarfile.data_filter`` removed: the runtime image's Python (Debian's 3.11.2) has
no extraction filters, and confinement must not depend on them.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_process import API_KEY, ServerProcess, start_server, stop_server
from starlette.requests import ClientDisconnect

from agentbox.errors import FileOperationError
from agentbox.server.files import FileService

Member = tuple[str, str, object]  # (type, name, data or link target)


def make_tar(*members: Member, mode: int = 0o644, gzip: bool = False) -> bytes:
    """An archive of ``members``: ("file", name, bytes), ("dir", name, None), ("sym"/"hard", name, target),
    ("fifo"/"chr", name, None), ("setuid", name, bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gzip else "w") as tar:
        for kind, name, payload in members:
            info = tarfile.TarInfo(name)
            info.mode = mode
            data = b""
            if kind in ("file", "setuid"):
                data = payload if isinstance(payload, bytes) else b""
                info.size = len(data)
                if kind == "setuid":
                    info.mode = 0o6755
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, str(payload)
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, str(payload)
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 5
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def extract(archive: bytes, dest: Path) -> int:
    return FileService().receive_tree(str(dest), io.BytesIO(archive)).files


@pytest.fixture(params=["with-filters", "without-filters"])
def interpreter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test as on this Python, and as on one whose tarfile lacks extraction filters (3.11.2)."""
    if request.param == "without-filters":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return str(request.param)


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A destination and, beside it, a victim directory the archive must not reach."""
    dest, victim = tmp_path / "dest", tmp_path / "victim"
    dest.mkdir()
    victim.mkdir()
    return dest, victim


def test_symlink_then_member_through_it_is_refused(interpreter: str, layout: tuple[Path, Path]) -> None:
    dest, victim = layout
    archive = make_tar(("sym", "up", "../victim"), ("file", "up/keep.txt", b"pwned"))
    with pytest.raises(FileOperationError, match=r"'up'.*outside the destination"):
        extract(archive, dest)
    assert list(victim.iterdir()) == []
    assert list(dest.iterdir()) == []  # refused archives leave nothing behind


def test_planted_symlinks_are_never_followed(interpreter: str, layout: tuple[Path, Path]) -> None:
    dest, victim = layout
    (victim / "target.txt").write_text("victim's")
    (dest / "dirlink").symlink_to(victim)  # planted by the agent before the upload
    (dest / "filelink").symlink_to(victim / "target.txt")
    with pytest.raises(FileOperationError, match=r"dirlink.*symlink or a file"):
        extract(make_tar(("file", "dirlink/keep.txt", b"pwned")), dest)
    assert not (victim / "keep.txt").exists()
    # a symlink at a file's own name is replaced by the file, not written through
    assert extract(make_tar(("file", "filelink", b"new")), dest) == 1
    assert (victim / "target.txt").read_text() == "victim's"
    assert not (dest / "filelink").is_symlink() and (dest / "filelink").read_bytes() == b"new"


def test_planted_hardlink_is_replaced_not_written_through(layout: tuple[Path, Path]) -> None:
    dest, victim = layout
    (victim / "h.txt").write_text("victim's")
    os.link(victim / "h.txt", dest / "h.txt")
    extract(make_tar(("file", "h.txt", b"new")), dest)
    assert (victim / "h.txt").read_text() == "victim's" and (dest / "h.txt").read_bytes() == b"new"


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ((("hard", "hl", "../victim/secret"),), r"'hl'.*'\.\.' component"),
        ((("hard", "hl", "/etc/passwd"),), r"'hl'.*absolute"),
        ((("sym", "abs", "/etc"),), r"'abs'.*symlink to '/etc', outside"),
        ((("sym", "deep/s", "../../x"),), r"'deep/s'.*outside"),
        ((("sym", "empty", ""),), r"'empty' is a symlink with an empty target"),
        ((("fifo", "pipe", None),), r"'pipe' is a FIFO"),
        ((("chr", "null", None),), r"'null' is a character device"),
        ((("file", "/abs.txt", b"x"),), r"'/abs.txt' has an absolute path"),
        ((("file", "../up.txt", b"x"),), r"'\.\./up.txt' has a '\.\.' component"),
        ((("file", "a/../../up.txt", b"x"),), r"'\.\.' component"),
    ],
)
def test_escaping_and_special_members_are_refused(
    interpreter: str, layout: tuple[Path, Path], members: tuple[Member, ...], message: str
) -> None:
    dest, victim = layout
    (victim / "secret").write_text("s")
    with pytest.raises(FileOperationError, match=message):
        extract(make_tar(("file", "before.txt", b"ok"), *members), dest)
    assert list(dest.iterdir()) == [] and [p.name for p in victim.iterdir()] == ["secret"]
    assert not (dest.parent / "up.txt").exists()


def test_setuid_bits_are_dropped(layout: tuple[Path, Path]) -> None:
    dest, _ = layout
    extract(make_tar(("setuid", "tool", b"#!/bin/sh\n"), ("file", "open.txt", b"x")), dest)
    assert stat.S_IMODE((dest / "tool").stat().st_mode) == 0o755
    mode = stat.S_IMODE((dest / "open.txt").stat().st_mode)
    assert mode & (stat.S_IWGRP | stat.S_IWOTH | stat.S_ISUID | stat.S_ISGID) == 0


def test_a_good_tree_extracts_fully_gzipped_or_not(layout: tuple[Path, Path]) -> None:
    dest, _ = layout
    (dest / "old.txt").write_text("old")
    members: list[Member] = [
        ("dir", "a", None),
        ("file", "a/b/deep.txt", b"deep"),
        ("file", "./top.bin", bytes(range(256)) * 100),
        ("sym", "a/b/link", "../../top.bin"),
        ("hard", "a/hard.bin", "top.bin"),
        ("file", "old.txt", b"replaced"),
    ]
    for gzip in (False, True):
        assert extract(make_tar(*members, gzip=gzip), dest) == 3
        assert (dest / "a" / "b" / "deep.txt").read_bytes() == b"deep"
        assert os.readlink(dest / "a" / "b" / "link") == "../../top.bin"
        assert (dest / "a" / "b" / "link").read_bytes() == bytes(range(256)) * 100
        assert os.path.samefile(dest / "a" / "hard.bin", dest / "top.bin")
        assert (dest / "old.txt").read_bytes() == b"replaced"
    assert not [p for p in dest.rglob("*") if "agentbox" in p.name]  # no temporary or backup names left


def test_member_times_are_kept_and_odd_ones_ignored(layout: tuple[Path, Path]) -> None:
    dest, _ = layout
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, mtime in (("dated.txt", 1_000_000_000), ("far.txt", 10**30)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = 1, mtime
            tar.addfile(info, io.BytesIO(b"x"))
    assert extract(buf.getvalue(), dest) == 2
    assert (dest / "dated.txt").stat().st_mtime == 1_000_000_000 and (dest / "far.txt").read_bytes() == b"x"


def test_a_refused_archive_puts_back_what_it_replaced(layout: tuple[Path, Path]) -> None:
    dest, _ = layout
    (dest / "keep.txt").write_text("original")
    (dest / "sub").mkdir()
    archive = make_tar(
        ("file", "keep.txt", b"overwritten"), ("file", "sub/new/n.txt", b"n"), ("fifo", "sub/pipe", None)
    )
    with pytest.raises(FileOperationError, match="FIFO"):
        extract(archive, dest)
    assert (dest / "keep.txt").read_text() == "original"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == ["keep.txt", "sub"]


def test_a_hardlink_member_naming_itself_leaves_no_temporary_name(layout: tuple[Path, Path]) -> None:
    """rename() of two links to one file does nothing: found by the property test below."""
    dest, _ = layout
    assert extract(make_tar(("file", "b", b"x"), ("hard", "b", "b")), dest) >= 1
    assert [p.name for p in dest.iterdir()] == ["b"] and (dest / "b").read_bytes() == b"x"
    with pytest.raises(FileOperationError):
        extract(make_tar(("file", "c", b"pwned"), ("hard", "c", "c"), ("dir", "c", None)), dest)
    assert [p.name for p in dest.iterdir()] == ["b"]


def test_a_failure_before_a_replacement_leaves_no_backup_name(layout: tuple[Path, Path]) -> None:
    dest, _ = layout
    (dest / "keep.txt").write_text("original")
    archive = make_tar(("file", "keep.txt", b"new" * 5000), ("file", "other.txt", b"x"))
    with pytest.raises(FileOperationError, match="not a valid tar stream"):
        extract(archive[:2048], dest)  # cut inside keep.txt's data: the old entry was backed up, not replaced
    assert [p.name for p in dest.iterdir()] == ["keep.txt"] and (dest / "keep.txt").read_text() == "original"


def test_a_truncated_stream_is_refused_and_rolled_back(layout: tuple[Path, Path]) -> None:
    dest, _ = layout
    archive = make_tar(("file", "a.txt", b"a" * 5000), ("file", "b.txt", b"b" * 5000))
    with pytest.raises(FileOperationError, match="not a valid tar stream"):
        extract(archive[:7000], dest)
    assert list(dest.iterdir()) == []


# ------------------------------------------------------------------------------------- through HTTP


@pytest.fixture(scope="module")
def old_python_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server process whose tarfile has no extraction filters, as in the runtime image (3.11.2)."""
    site = tmp_path_factory.mktemp("no-tar-filters")
    (site / "sitecustomize.py").write_text(
        "import tarfile\nfor name in ('data_filter',):\n"
        "    if hasattr(tarfile, name):\n        delattr(tarfile, name)\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
        srv = start_server(tmp_path_factory.mktemp("old-python-work"))
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(params=["this-python", "python-without-filters"])
def any_server(request: pytest.FixtureRequest, server: ServerProcess) -> ServerProcess:
    """The session's server, and one without tarfile's extraction filters."""
    if request.param == "this-python":
        return server
    return cast(ServerProcess, request.getfixturevalue("old_python_server"))


def _upload(server: ServerProcess, archive: bytes, path: str) -> httpx.Response:
    return httpx.put(
        f"{server.url}/files/upload",
        params={"path": path, "format": "tar"},
        content=archive,
        headers={"X-Session-API-Key": API_KEY},
        timeout=30,
    )


def test_http_tar_slip_is_refused_with_a_4xx_naming_the_member(any_server: ServerProcess) -> None:
    server = any_server
    work = Path(server.work_dir)
    (work / "slip-victim").mkdir(exist_ok=True)
    archive = make_tar(("sym", "up", "../slip-victim"), ("file", "up/keep.txt", b"pwned"))
    resp = _upload(server, archive, "slip-dest")
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["code"] == "file_error" and "'up'" in body["message"]
    assert not (work / "slip-victim" / "keep.txt").exists()
    assert list((work / "slip-dest").iterdir()) == []


@pytest.mark.parametrize(
    ("member", "word"),
    [(("hard", "hl", "../x"), "'hl'"), (("fifo", "p", None), "FIFO"), (("chr", "d", None), "character device")],
)
def test_http_hardlinks_out_fifos_and_devices_are_refused(any_server: ServerProcess, member: Member, word: str) -> None:
    server = any_server
    resp = _upload(server, make_tar(member), "special-dest")
    assert resp.status_code == 400 and resp.json()["code"] == "file_error", resp.text
    assert word in resp.json()["message"]


def test_http_setuid_member_is_extracted_without_the_bit(any_server: ServerProcess) -> None:
    server = any_server
    resp = _upload(server, make_tar(("setuid", "suid", b"x")), "suid-dest")
    assert resp.status_code == 200 and resp.json()["files"] == 1, resp.text
    assert stat.S_IMODE((Path(server.work_dir) / "suid-dest" / "suid").stat().st_mode) == 0o755


class _Disconnecting(io.BytesIO):
    """A request body whose client goes away after ``limit`` bytes."""

    def __init__(self, data: bytes, limit: int) -> None:
        super().__init__(data)
        self._limit = limit

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= self._limit:
            raise ClientDisconnect()
        return super().read(min(size if size is not None and size >= 0 else self._limit, self._limit - self.tell()))


def test_a_client_gone_mid_archive_leaves_the_destination_as_it_was(layout: tuple[Path, Path]) -> None:
    dest, _ = layout
    (dest / "keep.txt").write_text("original")
    archive = make_tar(("file", "keep.txt", b"new" * 1000), ("file", "d/big.bin", os.urandom(200_000)))
    with pytest.raises(ClientDisconnect):
        FileService().receive_tree(str(dest), _Disconnecting(archive, 100_000))
    assert sorted(p.name for p in dest.rglob("*")) == ["keep.txt"]
    assert (dest / "keep.txt").read_text() == "original"


# ---------------------------------------------------------------------------------------- property


_NAMES = st.lists(st.sampled_from(["a", "b", "..", ".", "up", "victim", ""]), min_size=1, max_size=4).map("/".join)
_TARGETS = st.sampled_from(["a", "b", "../victim", "/tmp", ".", "..", "a/..", "up/../..", "../../x", "victim"])
_MEMBERS = st.lists(
    st.one_of(
        st.tuples(st.just("file"), _NAMES, st.just(b"pwned")),
        st.tuples(st.just("dir"), _NAMES, st.none()),
        st.tuples(st.sampled_from(["sym", "hard"]), _NAMES, _TARGETS),
    ),
    min_size=1,
    max_size=6,
)


def _tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (symlinks not followed): its target, "d", or its content."""
    out = {}
    for p in root.rglob("*"):
        out[p.relative_to(root).as_posix()] = (
            f"-> {os.readlink(p)}" if p.is_symlink() else "d" if p.is_dir() else p.read_text()
        )
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=_MEMBERS)
def test_no_archive_writes_outside_its_destination(members: list[Member], tmp_path: Path) -> None:
    """Whatever the members, nothing outside the destination changes; a refused archive changes nothing."""
    with tempfile.TemporaryDirectory(dir=tmp_path) as top:
        root = Path(top)
        (root / "victim").mkdir()
        (root / "victim" / "file").write_text("victim's")
        dest = root / "dest"
        dest.mkdir()
        (dest / "up").symlink_to("../victim")  # planted, as an agent could
        outside, inside = _tree(root / "victim"), _tree(dest)
        try:
            extract(make_tar(*members), dest)
        except FileOperationError:
            assert _tree(dest) == inside
        assert _tree(root / "victim") == outside
        assert sorted(p.name for p in root.iterdir()) == ["dest", "victim"]
