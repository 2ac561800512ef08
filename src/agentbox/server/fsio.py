"""Bounded file I/O and the one atomic-write helper of the runtime server.

Everything the server reads or writes on the agent's behalf goes through here, because the agent can plant
anything at a path: a symlink to ``/dev/zero``, a FIFO nobody writes to, a ``/proc`` file whose ``st_size``
is 0. So:

- **Reads** open with ``O_NONBLOCK`` (a FIFO's open never waits for a writer), ``fstat`` the open file and
  refuse anything but a regular file, then read in chunks up to a limit: ``st_size`` is never trusted.
- **Writes** go through :class:`AtomicWriter`: the new content is written to a temporary file in the same
  directory (a fresh random name per call, created ``O_EXCL|O_NOFOLLOW``), fsynced, given the old file's
  mode and owner, and renamed over the old file. On any error (a full disk) the old content stays and the
  temporary file is removed. Appends write in place and cut the file back to its old size on error.
  Where a rename cannot replace the file (a bind-mounted single file such as ``/etc/hosts``, a directory
  the server cannot write, an owner it cannot give back) the content is spooled aside first and copied
  over the old file in place after reserving its blocks, so a full disk still fails before anything
  changes.
- **Blocking work** runs on a pool of its own (:func:`run`), so file calls cannot take the threads the
  rest of the server needs, and none of them blocks without bound.

OS errors are translated here (:func:`translate`) into NotFoundError / FileOperationError naming the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from agentbox.errors import BadRequestError, FileOperationError, NotFoundError

__all__ = [
    "CHUNK",
    "AtomicWriter",
    "describe",
    "open_regular",
    "read_bounded",
    "read_file",
    "replace_file",
    "run",
    "translate",
]

T = TypeVar("T")

#: Size of one read or write: large enough that a thread hop per chunk costs nothing, small enough to bound
#: the memory of a transfer.
CHUNK = 1 << 20
_OPEN_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_TMP_SUFFIX = ".agentbox-tmp"

#: Threads of the file I/O pool.
FILE_THREADS = 16
# Its own pool: file work cannot take the default executor's threads (the rest of the server uses them),
# and since nothing here blocks without bound, file calls cannot starve each other either. The server
# hands in a pool whose threads already exist (use_pool): one started on demand cannot start a thread
# once a runaway command fills the sandbox's pids limit.
_POOL: ThreadPoolExecutor | None = None


def use_pool(pool: ThreadPoolExecutor) -> None:
    """Run file work on ``pool`` from now on (the server's pre-started one)."""
    global _POOL
    _POOL = pool


def release_pool(pool: ThreadPoolExecutor) -> None:
    """Stop using ``pool`` (being shut down) if it is the one in use; the next call makes a fresh one."""
    global _POOL
    if _POOL is pool:
        _POOL = None


async def run(fn: Callable[..., T], *args: object) -> T:
    """Run the blocking ``fn(*args)`` on the file I/O pool."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=FILE_THREADS, thread_name_prefix="agentbox-files")
    return await asyncio.get_running_loop().run_in_executor(_POOL, functools.partial(fn, *args))


@contextlib.contextmanager
def translate(path: str) -> Iterator[None]:
    """Turn OS errors into NotFoundError / FileOperationError that name ``path`` (a NUL byte: BadRequestError)."""
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
    except ValueError as exc:  # os functions refuse a path with a NUL byte
        raise BadRequestError(f"path {path!r} is not valid: {exc}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileOperationError(f"{path}: too many levels of symbolic links") from None
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FileOperationError(f"{path}: no space left on the device; nothing was changed") from None
        raise FileOperationError(f"{path}: {exc.strerror or exc}") from None


def describe(mode: int) -> str:
    """What kind of file ``mode`` is, in words."""
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _not_regular(path: str, mode: int, doing: str) -> FileOperationError:
    if stat.S_ISDIR(mode):
        return FileOperationError(f"{path} is a directory, not a file")
    return FileOperationError(f"{path} is a {describe(mode)}, not a regular file: only regular files can be {doing}")


# ---------------------------------------------------------------------------------------------- reads


def open_regular(path: str) -> tuple[int, os.stat_result]:
    """An fd open for reading on the regular file ``path`` (symlinks followed), and its fstat.

    Opening never blocks (``O_NONBLOCK``: a FIFO does not wait for a writer, a device is refused before
    any read) and the type is checked on the open file, so a swap between a check and the open changes
    nothing.
    """
    with translate(path):
        fd = os.open(path, _OPEN_READ)
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _not_regular(path, st.st_mode, "read")
    return fd, st


def read_bounded(fd: int, limit: int, path: str) -> bytes:
    """Everything ``fd`` holds up to EOF, or FileOperationError past ``limit`` bytes (st_size is not used)."""
    parts: list[bytes] = []
    total = 0
    with translate(path):
        while chunk := os.read(fd, min(CHUNK, limit + 1 - total)):
            parts.append(chunk)
            total += len(chunk)
            if total > limit:
                raise FileOperationError(f"{path} is larger than {limit} bytes, the limit of this read; download it")
    return b"".join(parts)


def read_file(path: str, limit: int) -> bytes:
    """The content of the regular file ``path``, at most ``limit`` bytes (else FileOperationError)."""
    fd, _ = open_regular(path)
    try:
        return read_bounded(fd, limit, path)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------- writes


@functools.cache  # read at the first write, once the server runs: it never changes the umask afterwards
def _umask() -> int:
    # /proc/self/status has it without the set-and-restore race of os.umask (other threads create files).
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask



class AtomicWriter:
    """One new version of a file: ``write`` chunks, then ``commit`` (or ``abort``; leaving the block aborts).

    Build it with :meth:`open` (a path, symlinks followed to the file they name) or :meth:`open_at` (a name
    in a directory fd, never followed: what the confined tar extraction uses).
    """

    def __init__(
        self, dir_fd: int, name: str, display: str, *, append: bool, exclusive: bool, mtime: float | None
    ) -> None:
        """Owns ``dir_fd``; no I/O here (see :meth:`open` and :meth:`open_at`)."""
        self._dir_fd = dir_fd
        self._name = name
        self._display = display
        self._append = append
        self._exclusive = exclusive
        self._mtime = mtime
        self._fd = -1
        self._tmp: str | None = None  # the temporary file in the directory, if any
        self._spool: int = -1  # an anonymous spool, when the file must be overwritten in place
        self._old_size = 0
        self._size = 0
        self._done = False

    # ------------------------------------------------------------------ construction

    @classmethod
    def open(
        cls, path: str, *, mode: int | None = None, append: bool = False, exclusive: bool = False,
        make_parents: bool = True,
    ) -> AtomicWriter:
        """A writer for ``path``: a symlink is followed to the file it names, which keeps its mode and owner.

        ``mode`` applies to a new file (umask applied); ``exclusive`` fails if the file exists.
        """
        with translate(path):
            target = os.path.realpath(path)
            parent, name = os.path.split(target)
            if make_parents:
                os.makedirs(parent, exist_ok=True)
            dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        writer = cls(dir_fd, name, path, append=append, exclusive=exclusive, mtime=None)
        return writer._started(mode, inherit=True)

    @classmethod
    def open_at(cls, dir_fd: int, name: str, display: str, mode: int, mtime: float | None = None) -> AtomicWriter:
        """A writer replacing ``name`` in ``dir_fd`` (a symlink there is replaced, never followed) with ``mode``.

        ``dir_fd`` stays the caller's; ``display`` names the file in errors.
        """
        writer = cls(os.dup(dir_fd), name, display, append=False, exclusive=False, mtime=mtime)
        return writer._started(mode, inherit=False)

    def _started(self, mode: int | None, *, inherit: bool) -> AtomicWriter:
        try:
            self._start(mode, inherit)
        except BaseException:
            self.abort()
            raise
        return self

    def _start(self, mode: int | None, inherit: bool) -> None:
        with translate(self._display):
            try:
                old: os.stat_result | None = os.stat(self._name, dir_fd=self._dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                old = None
            if old is not None:
                if self._exclusive:
                    raise FileOperationError(f"{self._display} already exists")
                if stat.S_ISDIR(old.st_mode) or not (stat.S_ISREG(old.st_mode) or stat.S_ISLNK(old.st_mode)):
                    raise _not_regular(self._display, old.st_mode, "written")
                if stat.S_ISLNK(old.st_mode):
                    old = None  # only open_at meets a symlink here, and replaces it
            if self._append and old is not None:
                self._fd = os.open(
                    self._name, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                    dir_fd=self._dir_fd,
                )
                st = os.fstat(self._fd)
                if not stat.S_ISREG(st.st_mode):
                    raise _not_regular(self._display, st.st_mode, "written")
                self._old_size = self._size = st.st_size
                return
            final_mode = (0o666 if mode is None else mode) & ~_umask()
            if inherit and old is not None:
                final_mode = stat.S_IMODE(old.st_mode)
            try:
                self._fd, self._tmp = self._create_temp()
            except PermissionError:
                if old is None:
                    raise
                self._spool_aside()  # a directory the server cannot write, but a file it can
                return
            if inherit and old is not None and not self._give_owner(old):
                self._drop_temp()
                self._spool_aside()
                return
            os.fchmod(self._fd, final_mode)  # after fchown, which clears setuid bits

    def _create_temp(self) -> tuple[int, str]:
        # O_RDWR: the in-place fallback reads the temporary file back.
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        while True:
            # A fresh random name per call: two writers of one path never share a temporary file.
            tmp = f".{self._name[:100]}.{secrets.token_hex(8)}{_TMP_SUFFIX}"
            try:
                return os.open(tmp, flags, 0o600, dir_fd=self._dir_fd), tmp
            except FileExistsError:
                continue

    def _give_owner(self, old: os.stat_result) -> bool:
        st = os.fstat(self._fd)
        if (st.st_uid, st.st_gid) == (old.st_uid, old.st_gid):
            return True
        try:
            os.fchown(self._fd, old.st_uid, old.st_gid)
        except PermissionError:
            return False
        return True

    def _spool_aside(self) -> None:
        self._spool = self._fd = _anonymous_file()

    def _drop_temp(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp, dir_fd=self._dir_fd)
            self._tmp = None

    # ------------------------------------------------------------------ use

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data`` to the new content."""
        view = memoryview(data)
        with translate(self._display):
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
                self._size += n

    def commit(self) -> int:
        """Put the new content in place (atomically where the file system allows); its size in bytes."""
        try:
            with translate(self._display):
                if self._mtime is not None:
                    with contextlib.suppress(OSError, ValueError, OverflowError):  # an archive's odd mtime
                        os.utime(self._fd, (self._mtime, self._mtime))
                os.fsync(self._fd)
                if self._spool >= 0:
                    self._overwrite_in_place(self._spool)
                elif self._tmp is not None:
                    self._put_in_place()
                os.close(self._fd)
                self._fd = -1
                self._tmp = None
                with contextlib.suppress(OSError):
                    os.fsync(self._dir_fd)  # the rename itself survives a crash
        except BaseException:
            self.abort()
            raise
        self._done = True
        self.abort()  # releases the directory fd
        return self._size

    def _put_in_place(self) -> None:
        assert self._tmp is not None
        if self._exclusive:
            # link() fails if the name exists, where rename() would replace it: no check-then-write race.
            try:
                os.link(self._tmp, self._name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd, follow_symlinks=False)
            except FileExistsError:
                raise FileOperationError(f"{self._display} already exists") from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                # no hardlinks on this file system: check, then rename (a narrow race is the price)
                if self._exists():
                    raise FileOperationError(f"{self._display} already exists") from None
                os.rename(self._tmp, self._name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
                return
            os.unlink(self._tmp, dir_fd=self._dir_fd)
            return
        try:
            os.rename(self._tmp, self._name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.EXDEV):
                raise
            # A mount point (a single bind-mounted file): it cannot be replaced, only overwritten.
            self._overwrite_in_place(self._fd)
            os.unlink(self._tmp, dir_fd=self._dir_fd)

    def _exists(self) -> bool:
        try:
            os.stat(self._name, dir_fd=self._dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def _overwrite_in_place(self, src: int) -> None:
        size = os.lseek(src, 0, os.SEEK_END)
        fd = os.open(self._name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self._dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _not_regular(self._display, st.st_mode, "written")
            if size > st.st_size:
                try:  # reserve the blocks first: a full disk fails here, before the old content changes
                    os.posix_fallocate(fd, 0, size)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
            offset = 0
            while chunk := os.pread(src, CHUNK, offset):
                view = memoryview(chunk)
                while view:
                    n = os.pwrite(fd, view, offset)
                    view, offset = view[n:], offset + n
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._size = size

    def abort(self) -> None:
        """Forget the new content: the old file is as it was (a no-op after commit)."""
        if not self._done and self._append and self._fd >= 0 and self._tmp is None and self._spool < 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._old_size)
        self._drop_temp()
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1
        self._done = True


def _anonymous_file() -> int:
    # An unnamed temporary file (O_TMPFILE where available): nothing to clean up if the server dies.
    with tempfile.TemporaryFile(buffering=0) as f:
        return os.dup(f.fileno())


def replace_file(
    path: str, data: bytes, *, mode: int | None = None, append: bool = False, exclusive: bool = False
) -> int:
    """Write ``data`` as the new content of ``path`` (or append it) atomically; the file's size afterwards."""
    with AtomicWriter.open(path, mode=mode, append=append, exclusive=exclusive) as writer:
        writer.write(data)
        return writer.commit()
