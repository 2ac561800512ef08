"""File operations: read, write, list, the editor operations agents use, and tar/raw transfers.

All functions here are blocking and are called from a worker thread by the routes. OS errors are
translated here, at the one boundary that meets them, into NotFoundError / FileOperationError with the
path in the message. Relative paths are resolved by the caller against the session's cwd.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Literal, cast

from agentbox.errors import BadRequestError, FileOperationError, NotFoundError
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

__all__ = ["Editor", "FileService", "resolve"]

#: Largest file read_file returns inline (JSON); bigger ones go through download.
MAX_INLINE_BYTES = 64 * 1024 * 1024
_SNIPPET_CONTEXT = 4
_UNDO_DEPTH = 10


def resolve(path: str, cwd: str) -> str:
    """Absolute, normalised form of ``path`` (``~`` expanded; relative to ``cwd``)."""
    return os.path.normpath(os.path.join(cwd, os.path.expanduser(path)))


@contextmanager
def _translate(path: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise NotFoundError(f"no such file or directory: {path}") from None
    except NotADirectoryError:
        raise FileOperationError(f"a parent of {path} is not a directory") from None
    except IsADirectoryError:
        raise FileOperationError(f"{path} is a directory") from None
    except PermissionError:
        raise FileOperationError(f"permission denied: {path} (the server runs as uid {os.getuid()})") from None
    except OSError as exc:
        raise FileOperationError(f"{path}: {exc.strerror or exc}") from None


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return f.read()


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def _numbered(lines: list[str], first: int) -> str:
    return "".join(f"{n:6}\t{line.rstrip(chr(10))}\n" for n, line in enumerate(lines, first))


class FileService:
    """Plain file operations on absolute paths."""

    def read(self, path: str, req: ReadFile) -> FileContent:
        """Read a whole file, a line range of it, or its bytes as base64."""
        with _translate(path):
            size = os.stat(path).st_size
            if size > MAX_INLINE_BYTES:
                raise FileOperationError(
                    f"{path} is {size} bytes, more than {MAX_INLINE_BYTES} for an inline read; download it"
                )
            if req.encoding == "base64":
                with open(path, "rb") as f:
                    data = f.read()
                return FileContent(path=path, content=base64.b64encode(data).decode(), encoding="base64", size=size)
            text = _read_text(path)
        lines = text.splitlines(keepends=True)
        if req.start_line is not None or req.end_line is not None:
            first = req.start_line or 1
            last = req.end_line or len(lines)
            if last < first:
                raise FileOperationError(f"end_line {last} is before start_line {first}")
            text = "".join(lines[first - 1 : last])
        return FileContent(path=path, content=text, encoding="text", size=size, total_lines=len(lines))

    def write(self, path: str, req: WriteFile) -> FileWritten:
        """Write (or append to) a file, creating parent directories."""
        data = None
        if req.encoding == "base64":
            try:
                data = base64.b64decode(req.content, validate=True)
            except binascii.Error as exc:
                raise BadRequestError(f"content is not valid base64: {exc}") from None
        with _translate(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if req.append else os.O_TRUNC)
            fd = os.open(path, flags, 0o666 if req.mode is None else req.mode)
            with open(fd, "wb") as f:
                f.write(data if data is not None else req.content.encode("utf-8", errors="surrogateescape"))
            return FileWritten(path=path, size=os.stat(path).st_size)

    def list_dir(self, path: str, include_hidden: bool) -> DirListing:
        """List a directory (symlinks are reported, not followed)."""
        entries = []
        with _translate(path), os.scandir(path) as it:
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

    def receive_file(self, path: str, source: IO[bytes]) -> UploadResult:
        """Store a streamed upload at ``path`` (written next to it, then renamed into place)."""
        tmp = f"{path}.agentbox-upload-{os.getpid()}"
        total = 0
        with _translate(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                with open(tmp, "wb") as f:
                    while chunk := source.read(1 << 20):
                        f.write(chunk)
                        total += len(chunk)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        return UploadResult(path=path, bytes=total, files=1)

    def receive_tree(self, path: str, source: IO[bytes]) -> UploadResult:
        """Extract a streamed tar archive into directory ``path`` (members may not escape it)."""
        counted = _CountingReader(source)
        files = 0
        with _translate(path):
            os.makedirs(path, exist_ok=True)
            try:
                with tarfile.open(fileobj=cast(IO[bytes], counted), mode="r|*") as tar:
                    for member in tar:
                        _check_member(member, path)
                        if hasattr(tarfile, "data_filter"):
                            tar.extract(member, path, filter="data")
                        else:  # pragma: no cover - Python without the tarfile filters backport
                            tar.extract(member, path)
                        files += member.isfile()
            except (tarfile.TarError, EOFError) as exc:
                raise FileOperationError(f"not a valid tar stream for {path}: {exc}") from None
        return UploadResult(path=path, bytes=counted.count, files=files)

    def send_tree(self, path: str, sink: Callable[[bytes], None]) -> None:
        """Write ``path`` (a directory or file) as an uncompressed tar stream to ``sink``."""
        with _translate(path):
            os.stat(path)
            with tarfile.open(fileobj=cast(IO[bytes], _SinkWriter(sink)), mode="w|", bufsize=1 << 20) as tar:
                tar.add(path, arcname=".")

    def check_readable_file(self, path: str) -> int:
        """Size of the regular file ``path``, or a clear error."""
        with _translate(path):
            st = os.stat(path)
            if stat.S_ISDIR(st.st_mode):
                raise FileOperationError(f"{path} is a directory; download it with format='tar'")
            with open(path, "rb"):
                pass
            return st.st_size


def _check_member(member: tarfile.TarInfo, dest: str) -> None:
    target = os.path.normpath(os.path.join(dest, member.name))
    if os.path.isabs(member.name) or not (target == dest or target.startswith(dest.rstrip("/") + "/")):
        raise FileOperationError(f"tar member {member.name!r} would land outside {dest}")


class _CountingReader:
    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.count += len(data)
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
        with _translate(path):
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
        with _translate(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _write_text(path, op.file_text)
        self._history.setdefault(path, [])
        return EditResult(path=path, output=f"created {path} ({len(op.file_text.splitlines())} lines)")

    def str_replace(self, path: str, op: StrReplaceOp) -> EditResult:
        """Replace ``old_str``, which must occur exactly once."""
        with _translate(path):
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
        with _translate(path):
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
        previous = history.pop()
        with _translate(path):
            _write_text(path, previous)
        return EditResult(
            path=path,
            output=f"last edit of {path} undone\n"
            + _numbered(previous.splitlines(keepends=True)[: _SNIPPET_CONTEXT * 4], 1),
        )

    def _save(self, path: str, old: str, new: str) -> None:
        with _translate(path):
            _write_text(path, new)
        history = self._history.setdefault(path, [])
        history.append(old)
        del history[:-_UNDO_DEPTH]

    @staticmethod
    def _snippet(path: str, text: str, first_line: int, added: int) -> str:
        lines = text.splitlines(keepends=True)
        start = max(first_line - _SNIPPET_CONTEXT, 1)
        end = min(first_line + added + _SNIPPET_CONTEXT, len(lines))
        return f"edited {path}; lines {start}-{end} now read:\n" + _numbered(lines[start - 1 : end], start)
