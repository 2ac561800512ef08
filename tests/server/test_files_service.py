"""File and editor operations, and the bounded output collector, without HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentbox.errors import FileOperationError, NotFoundError
from agentbox.protocol import CreateOp, InsertOp, ReadFile, StrReplaceOp, UndoEditOp, ViewOp, WriteFile
from agentbox.server.files import Editor, FileService, resolve
from agentbox.server.spool import RawSpool, TruncatingText


def test_resolve_relative_to_cwd() -> None:
    assert resolve("a/../b.txt", "/work/dir") == "/work/dir/b.txt"
    assert resolve("/etc/hosts", "/work") == "/etc/hosts"


def test_read_write_ranges_and_base64(tmp_path: Path) -> None:
    fs = FileService()
    path = str(tmp_path / "deep" / "er" / "f.txt")
    fs.write(path, WriteFile(path=path, content="one\ntwo\nthree\n"))
    got = fs.read(path, ReadFile(path=path, start_line=2, end_line=3))
    assert got.content == "two\nthree\n" and got.total_lines == 3
    fs.write(path, WriteFile(path=path, content="AAEC/w==", encoding="base64"))
    assert Path(path).read_bytes() == b"\x00\x01\x02\xff"
    assert fs.read(path, ReadFile(path=path, encoding="base64")).content == "AAEC/w=="
    with pytest.raises(NotFoundError, match="no such file"):
        fs.read(str(tmp_path / "missing"), ReadFile(path="missing"))
    with pytest.raises(FileOperationError, match="is a directory"):
        fs.read(str(tmp_path), ReadFile(path="."))


def test_editor_view_create_replace_insert_undo(tmp_path: Path) -> None:
    ed = Editor()
    path = str(tmp_path / "code.py")
    ed.create(path, CreateOp(command="create", path=path, file_text="a = 1\nb = 2\nc = 3\n"))
    with pytest.raises(FileOperationError, match="already exists"):
        ed.create(path, CreateOp(command="create", path=path, file_text="x"))
    assert ed.view(path, ViewOp(command="view", path=path)).output == "     1\ta = 1\n     2\tb = 2\n     3\tc = 3\n"
    assert ed.view(path, ViewOp(command="view", path=path, view_range=(2, -1))).output.startswith("     2\tb = 2")
    with pytest.raises(FileOperationError, match="invalid view_range"):
        ed.view(path, ViewOp(command="view", path=path, view_range=(3, 9)))

    out = ed.str_replace(path, StrReplaceOp(command="str_replace", path=path, old_str="b = 2", new_str="b = 20"))
    assert "b = 20" in out.output and Path(path).read_text() == "a = 1\nb = 20\nc = 3\n"
    with pytest.raises(FileOperationError, match="did not appear verbatim"):
        ed.str_replace(path, StrReplaceOp(command="str_replace", path=path, old_str="zzz", new_str=""))
    with pytest.raises(FileOperationError, match=r"occurs 3 times.*lines 1, 2, 3"):
        ed.str_replace(path, StrReplaceOp(command="str_replace", path=path, old_str=" = ", new_str="="))

    ed.insert(path, InsertOp(command="insert", path=path, insert_line=0, new_str="# top"))
    ed.insert(path, InsertOp(command="insert", path=path, insert_line=4, new_str="d = 4\n"))
    assert Path(path).read_text() == "# top\na = 1\nb = 20\nc = 3\nd = 4\n"
    with pytest.raises(FileOperationError, match="past the end"):
        ed.insert(path, InsertOp(command="insert", path=path, insert_line=99, new_str="x"))

    for expected in ("# top\na = 1\nb = 20\nc = 3\n", "a = 1\nb = 20\nc = 3\n", "a = 1\nb = 2\nc = 3\n"):
        ed.undo_edit(path, UndoEditOp(command="undo_edit", path=path))
        assert Path(path).read_text() == expected
    with pytest.raises(FileOperationError, match="no edit to undo"):
        ed.undo_edit(path, UndoEditOp(command="undo_edit", path=path))


def test_editor_views_directories_two_levels(tmp_path: Path) -> None:
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "too-deep.txt").write_text("")
    (tmp_path / "a" / "top.txt").write_text("")
    (tmp_path / ".hidden").write_text("")
    out = Editor().view(str(tmp_path), ViewOp(command="view", path=str(tmp_path))).output
    assert f"{tmp_path}/a/top.txt" in out and f"{tmp_path}/a/b/" in out
    assert "too-deep" not in out and ".hidden" not in out


def test_truncating_text_keeps_head_and_tail() -> None:
    t = TruncatingText(300)
    for i in range(1000):
        t.add(f"{i:04d}\n")
    text, cut = t.render("cid")
    assert cut and len(text) <= 300
    assert text.startswith("0000\n") and text.endswith("0999\n") and "cid" in text
    small = TruncatingText(100)
    small.add("x" * 100)
    assert small.render("cid") == ("x" * 100, False)
    assert small.render("cid", limit=50)[1] is True


def test_raw_spool_moves_to_disk_when_large(tmp_path: Path) -> None:
    spool = RawSpool(str(tmp_path / "out"), mem_limit=10)
    spool.write(b"12345")
    assert not spool.on_disk
    spool.write(b"6789012345")
    assert spool.on_disk
    spool.finish()
    assert b"".join(spool.chunks()) == b"123456789012345"
    spool.discard()
    assert not (tmp_path / "out").exists()
