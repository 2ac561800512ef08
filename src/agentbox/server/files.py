"""File operations: read, write, list, the editor operations agents use, and tar/raw transfers.

All functions here are blocking and are called from the file I/O pool by the routes. Every read and
write goes through :mod:`agentbox.server.fsio` (bounded reads of regular files only, atomic writes,
OS errors translated into NotFoundError / FileOperationError naming the path), and tar uploads through
:mod:`agentbox.server.untar` (confined extraction). Relative paths are resolved by the caller against the
session's cwd.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import stat
import tarfile
from collections.abc import Callable
from typing import IO, Literal, cast

from agentbox.errors import BadRequestError, FileOperationError, RuntimeServerError
from agentbox.protocol import (
    CreateOp,
    DirEntry,
    DirListing,
    EditResult,
    FileContent,
    FileWritten,
    InsertOp,
    ReadFile,
    StrReplaceOp,
    UndoEditOp,
    UploadResult,
    ViewOp,
    WriteFile,
)
from agentbox.server import fsio, untar

__all__ = ["Editor", "FileService", "resolve"]

#: Largest file read_file returns inline (JSON); bigger ones go through download.
MAX_INLINE_BYTES = 64 * 1024 * 1024
_SNIPPET_CONTEXT = 4
_UNDO_DEPTH = 10
#: Characters of a JSON write's content converted to bytes at a time (a multiple of 4, for base64).
_CONVERT = 4 << 20


def resolve(path: str, cwd: str) -> str:
    """Absolute, normalised form of ``path`` (``~`` expanded; relative to ``cwd``)."""
    return os.path.normpath(os.path.join(cwd, os.path.expanduser(path)))


def _read_text(path: str) -> str:
    return fsio.read_file(path, MAX_INLINE_BYTES).decode("utf-8", errors="replace")


def _encode(text: str, path: str) -> bytes:
    try:
        return text.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError as exc:
        raise BadRequestError(f"the text for {path} cannot be encoded as UTF-8: {exc.reason}") from None


def _content_bytes(piece: str, encoding: str, path: str) -> bytes:
    if encoding == "text":
        return _encode(piece, path)
    try:
        return base64.b64decode(piece, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError(f"content is not valid base64: {exc}") from None


def _numbered(lines: list[str], first: int) -> str:
    return "".join(f"{n:6}\t{line.rstrip(chr(10))}\n" for n, line in enumerate(lines, first))


class FileService:
    """Plain file operations on absolute paths."""

    def read(self, path: str, req: ReadFile) -> FileContent:
        """Read a whole file, a line range of it, or its bytes as base64 (regular files only, bounded)."""
        data = fsio.read_file(path, MAX_INLINE_BYTES)
        if req.encoding == "base64":
            return FileContent(path=path, content=base64.b64encode(data).decode(), encoding="base64", size=len(data))
        lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
        text = "".join(lines)
        if req.start_line is not None or req.end_line is not None:
            first = req.start_line or 1
            last = req.end_line or len(lines)
            if last < first:
                raise FileOperationError(f"end_line {last} is before start_line {first}")
            text = "".join(lines[first - 1 : last])
        return FileContent(path=path, content=text, encoding="text", size=len(data), total_lines=len(lines))

    def write(self, path: str, req: WriteFile) -> FileWritten:
        """Write (or append to) a file atomically, creating parent directories.

        The content is converted a slice at a time: the request already holds it as text, its bytes need
        not be in memory whole as well. Bad base64 or text fails before the file changes.
        """
        with self.open_writer(path, req.mode, req.append) as writer:
            content = req.content
            for start in range(0, len(content), _CONVERT):
                writer.write(_content_bytes(content[start : start + _CONVERT], req.encoding, path))
            size = writer.commit()
        return FileWritten(path=path, size=size)

    def open_writer(self, path: str, mode: int | None, append: bool) -> fsio.AtomicWriter:
        """A writer for a streamed new content of ``path`` (raw writes and single-file uploads)."""
        return fsio.AtomicWriter.open(path, mode=mode, append=append)

    def open_reader(self, path: str) -> int:
        """An fd open on the regular file ``path`` for a streamed read (special files are refused)."""
        fd, _ = fsio.open_regular(path)
        return fd

    def list_dir(self, path: str, include_hidden: bool) -> DirListing:
        """List a directory (symlinks are reported, not followed)."""
        entries = []
        with fsio.translate(path), os.scandir(path) as it:
            for entry in it:
                if not include_hidden and entry.name.startswith("."):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                kind: Literal["file", "dir", "symlink", "other"] = (
                    "symlink"
                    if stat.S_ISLNK(st.st_mode)
                    else "dir"
                    if stat.S_ISDIR(st.st_mode)
                    else "file"
                    if stat.S_ISREG(st.st_mode)
                    else "other"
                )
                entries.append(
                    DirEntry(name=entry.name, path=entry.path, type=kind, size=st.st_size, modified=st.st_mtime)
                )
        entries.sort(key=lambda e: e.name)
        return DirListing(path=path, entries=entries)

    # ------------------------------------------------------------------ transfers

    def receive_tree(self, path: str, source: IO[bytes]) -> UploadResult:
        """Extract a streamed tar archive into directory ``path``, confined to it (see :mod:`untar`)."""
        result = untar.extract(source, path)
        return UploadResult(path=path, bytes=result.bytes, files=result.files)

    def send_tree(self, path: str, sink: Callable[[bytes], None]) -> None:
        """Write ``path`` (a directory or file) as an uncompressed tar stream to ``sink``."""
        with fsio.translate(path):
            os.stat(path)
        # The path asked for is followed if it is a symlink (that is the tree meant); nothing under it is.
        with tarfile.open(fileobj=cast(IO[bytes], _SinkWriter(sink)), mode="w|", bufsize=1 << 20) as tar:
            _add_tree(tar, os.path.realpath(path))

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a directory (following symlinks); NotFoundError if nothing is there."""
        with fsio.translate(path):
            return stat.S_ISDIR(os.stat(path).st_mode)


#: A regular file this small or reporting size 0 is read whole before it goes into a tar, so its header
#: carries the size it really has (``/proc`` files report 0, sysfs ones 4096).
_SMALL_FILE = 1 << 20


def _add_tree(tar: tarfile.TarFile, root: str) -> None:
    """Add ``root`` as ``.`` and, for a directory, everything under it (symlinks stored, not followed).

    Depth-first with an explicit stack: a tree thousands of levels deep is no RecursionError.
    """
    stack = [(root, ".")]
    while stack:
        path, arcname = stack.pop()
        try:
            info = tar.gettarinfo(path, arcname)
        except OSError:
            continue  # vanished or unreadable since it was listed: left out, as tar does
        if info is None:
            continue  # a socket: tar has no member type for it
        if info.isreg():
            _add_regular(tar, path, info)
            continue
        tar.addfile(info)  # directories, symlinks, FIFOs, devices: headers only, nothing is opened
        if info.isdir():
            try:
                names = sorted(os.listdir(path), reverse=True)
            except OSError:
                continue
            stack.extend((os.path.join(path, name), f"{arcname}/{name}") for name in names)


def _add_regular(tar: tarfile.TarFile, path: str, info: tarfile.TarInfo) -> None:
    try:
        fd, st = fsio.open_regular(path)
    except RuntimeServerError:
        return
    with open(fd, "rb", buffering=0) as f:
        if st.st_size <= _SMALL_FILE:
            try:
                data = fsio.read_bounded(fd, _SMALL_FILE * 4, path)
            except RuntimeServerError:
                data = None
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                return
            os.lseek(fd, 0, os.SEEK_SET)
            st = os.fstat(fd)
        # The header says st_size; a file that grows or shrinks meanwhile is cut or zero-padded to it.
        info.size = st.st_size
        tar.addfile(info, _Exactly(f, st.st_size))


class _Exactly:
    """A reader giving exactly ``size`` bytes of ``f``: cut if it grew, zero-padded if it shrank."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self._f = f
        self._left = size

    def read(self, size: int = -1) -> bytes:
        want = self._left if size < 0 else min(size, self._left)
        data = self._f.read(want) or b""
        if len(data) < want:
            data += bytes(want - len(data))
        self._left -= len(data)
        return data


class _SinkWriter:
    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self._sink = sink

    def write(self, data: bytes) -> int:
        self._sink(bytes(data))
        return len(data)


class Editor:
    """The editor operations of agent tool-use (view, create, str_replace, insert, undo_edit)."""

    def __init__(self) -> None:
        self._history: dict[str, list[str]] = {}

    def view(self, path: str, op: ViewOp) -> EditResult:
        """A file with line numbers (optionally a range), or a directory two levels deep."""
        if os.path.isdir(path):
            if op.view_range is not None:
                raise FileOperationError("view_range cannot be used when viewing a directory")
            return EditResult(path=path, output=self._tree(path))
        text = _read_text(path)
        lines = text.splitlines(keepends=True)
        first, last = 1, len(lines)
        if op.view_range is not None:
            first, last = op.view_range
            if last == -1:
                last = len(lines)
            if not 1 <= first <= max(len(lines), 1) or last < first or last > len(lines):
                raise FileOperationError(
                    f"invalid view_range {list(op.view_range)}: {path} has {len(lines)} lines; "
                    "use 1 <= first <= last <= lines, or last = -1"
                )
        return EditResult(path=path, output=_numbered(lines[first - 1 : last], first))

    @staticmethod
    def _tree(path: str) -> str:
        out = [f"{path}/"]
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            entries = [*(d + "/" for d in dirs), *(n for n in names if not n.startswith("."))]
            out.extend(os.path.join(root, name) for name in sorted(entries))
            if root != path:  # listed the second level: go no deeper
                dirs[:] = []
        return "\n".join(out) + "\n"

    def create(self, path: str, op: CreateOp) -> EditResult:
        """Create a new file; refuses to overwrite an existing one."""
        if os.path.lexists(path):
            raise FileOperationError(f"{path} already exists; use str_replace or insert to change it")
        fsio.replace_file(path, _encode(op.file_text, path), exclusive=True)
        self._history.setdefault(path, [])
        return EditResult(path=path, output=f"created {path} ({len(op.file_text.splitlines())} lines)")

    def str_replace(self, path: str, op: StrReplaceOp) -> EditResult:
        """Replace ``old_str``, which must occur exactly once."""
        text = _read_text(path)
        count = text.count(op.old_str)
        if count == 0:
            raise FileOperationError(
                f"no replacement was performed: old_str did not appear verbatim in {path} "
                "(check whitespace and indentation)"
            )
        if count > 1:
            starts, pos = [], text.find(op.old_str)
            while pos != -1:
                starts.append(text.count("\n", 0, pos) + 1)
                pos = text.find(op.old_str, pos + 1)
            raise FileOperationError(
                f"no replacement was performed: old_str occurs {count} times in {path} (at lines "
                f"{', '.join(map(str, starts))}); include more context to make it unique"
            )
        pos = text.find(op.old_str)
        new_text = text[:pos] + op.new_str + text[pos + len(op.old_str) :]
        self._save(path, text, new_text)
        first = text.count("\n", 0, pos) + 1
        return EditResult(path=path, output=self._snippet(path, new_text, first, op.new_str.count("\n")))

    def insert(self, path: str, op: InsertOp) -> EditResult:
        """Insert ``new_str`` after line ``insert_line`` (0: at the top)."""
        text = _read_text(path)
        lines = text.splitlines(keepends=True)
        if op.insert_line > len(lines):
            raise FileOperationError(f"insert_line {op.insert_line} is past the end of {path} ({len(lines)} lines)")
        new = op.new_str if op.new_str.endswith("\n") or not op.new_str else op.new_str + "\n"
        if op.insert_line and not lines[op.insert_line - 1].endswith("\n"):
            lines[op.insert_line - 1] += "\n"
        new_text = "".join(lines[: op.insert_line]) + new + "".join(lines[op.insert_line :])
        self._save(path, text, new_text)
        return EditResult(path=path, output=self._snippet(path, new_text, op.insert_line + 1, new.count("\n")))

    def undo_edit(self, path: str, op: UndoEditOp) -> EditResult:
        """Put back the content before the last str_replace/insert on ``path``."""
        history = self._history.get(path)
        if not history:
            raise FileOperationError(f"no edit to undo for {path}")
        previous = history[-1]
        fsio.replace_file(path, _encode(previous, path))
        history.pop()  # only once the file has it back: a failed undo can be tried again
        return EditResult(
            path=path,
            output=f"last edit of {path} undone\n"
            + _numbered(previous.splitlines(keepends=True)[: _SNIPPET_CONTEXT * 4], 1),
        )

    def _save(self, path: str, old: str, new: str) -> None:
        fsio.replace_file(path, _encode(new, path))
        # Recorded only after the write succeeded: a failed edit has nothing to undo.
        history = self._history.setdefault(path, [])
        history.append(old)
        del history[:-_UNDO_DEPTH]

    @staticmethod
    def _snippet(path: str, text: str, first_line: int, added: int) -> str:
        lines = text.splitlines(keepends=True)
        start = max(first_line - _SNIPPET_CONTEXT, 1)
        end = min(first_line + added + _SNIPPET_CONTEXT, len(lines))
        return f"edited {path}; lines {start}-{end} now read:\n" + _numbered(lines[start - 1 : end], start)
