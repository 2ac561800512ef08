"""Confined tar extraction: an uploaded archive can write inside its destination and nowhere else.

``tarfile``'s extraction filters are not used: the runtime image's Python (Debian's 3.11.2) lacks them, and
they check names and link targets, not what the destination already holds. Instead every member is
created relative to a directory fd of the destination, walking one component at a time with
``O_NOFOLLOW | O_DIRECTORY``, so no symlink is ever followed, whether an earlier member created it
(``up -> ../victim`` then ``up/keep.txt``) or the agent planted it. Regular files are written to a fresh
temporary name (``O_EXCL | O_NOFOLLOW``) and renamed over the old entry: an existing symlink or hardlink at
that name is replaced, never written through.

Rules (the archive is refused with a FileOperationError naming the member otherwise):

- names: no absolute paths, no ``..`` components;
- a path component that is a symlink or a file in the destination is not traversed;
- symlinks: relative targets that stay inside the destination only (like ``tarfile``'s ``data`` filter);
- hardlinks: to a regular file inside the destination only;
- devices, FIFOs and other special members are refused;
- modes: setuid, setgid, sticky and group/other write bits are dropped; owners are not restored (files
  belong to the server's user, the sandbox user).

All or nothing: when a member is refused (or the stream breaks), what the extraction created is removed
and the files it replaced are put back, so a refused archive leaves the destination as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import secrets
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, cast

from agentbox.errors import FileOperationError
from agentbox.server import fsio

__all__ = ["ExtractResult", "extract"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_BACKUP_SUFFIX = ".agentbox-old"


@dataclass
class ExtractResult:
    """What an extraction did."""

    files: int
    """Regular files written."""
    bytes: int
    """Bytes of the archive stream read."""


class _Refused(Exception):
    """A member that may not be extracted; becomes a FileOperationError after the rollback."""


@dataclass
class _Journal:
    """What to undo if the extraction fails: entries created, and the old entries that were replaced."""

    created: list[tuple[tuple[str, ...], bool]] = field(default_factory=list)  # (parts, is_dir)
    replaced: list[tuple[tuple[str, ...], str]] = field(default_factory=list)  # (parts, backup name)


class _Destination:
    def __init__(self, root_fd: int, root: str) -> None:
        self.root_fd = root_fd
        self.root = root
        self.journal = _Journal()

    def open_dir(self, parts: tuple[str, ...], member: str, *, create: bool) -> int:
        """An fd of the directory ``parts`` under the root, never through a symlink (mkdir'd if ``create``)."""
        fd = os.dup(self.root_fd)
        try:
            for i, part in enumerate(parts):
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise _Refused(f"{'/'.join(parts[: i + 1])} does not exist in {self.root}") from None
                    os.mkdir(part, 0o777, dir_fd=fd)
                    self.journal.created.append((parts[: i + 1], True))
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    raise _Refused(
                        f"tar member {member!r}: {'/'.join(parts[: i + 1])} in {self.root} is a symlink or a file, "
                        "not a directory; extraction does not go through it"
                    ) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def lstat(self, dir_fd: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def before_replacing(self, dir_fd: int, parts: tuple[str, ...], member: str) -> None:
        """Keep the old entry at ``parts`` (if any) under a backup name, so a rollback can put it back."""
        old = self.lstat(dir_fd, parts[-1])
        if old is None:
            self.journal.created.append((parts, False))
            return
        if stat.S_ISDIR(old.st_mode):
            raise _Refused(f"tar member {member!r} would replace the directory {'/'.join(parts)} in {self.root}")
        backup = f".{parts[-1][:100]}.{secrets.token_hex(8)}{_BACKUP_SUFFIX}"
        try:
            os.link(parts[-1], backup, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return  # no hardlinks here (or not allowed): this replacement cannot be undone
        self.journal.replaced.append((parts, backup))

    def rollback(self) -> None:
        """Remove what was created (newest first) and put replaced entries back; best effort."""
        for parts, backup in reversed(self.journal.replaced):
            with contextlib.suppress(OSError, _Refused):
                fd = self.open_dir(parts[:-1], "", create=False)
                try:
                    os.rename(backup, parts[-1], src_dir_fd=fd, dst_dir_fd=fd)
                    # rename() does nothing when both names are links to one file (the entry was never
                    # replaced): the backup name must still go.
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(backup, dir_fd=fd)
                finally:
                    os.close(fd)
        for parts, is_dir in reversed(self.journal.created):
            with contextlib.suppress(OSError, _Refused):
                fd = self.open_dir(parts[:-1], "", create=False)
                try:
                    if is_dir:
                        os.rmdir(parts[-1], dir_fd=fd)
                    else:
                        os.unlink(parts[-1], dir_fd=fd)
                finally:
                    os.close(fd)

    def commit(self) -> None:
        """Drop the backups of replaced entries."""
        for parts, backup in self.journal.replaced:
            with contextlib.suppress(OSError, _Refused):
                fd = self.open_dir(parts[:-1], "", create=False)
                try:
                    os.unlink(backup, dir_fd=fd)
                finally:
                    os.close(fd)


def _parts(name: str, member: str) -> tuple[str, ...]:
    if name.startswith("/"):
        raise _Refused(f"tar member {member!r} has an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _Refused(f"tar member {member!r} has a '..' component: it would land outside the destination")
    return parts


def _file_mode(mode: int) -> int:
    # What tarfile's 'data' filter keeps: no setuid/setgid/sticky, no group/other write, owner rw; exec
    # bits only if the owner's is set.
    mode &= 0o755
    if not mode & 0o100:
        mode &= ~0o111
    return mode | 0o600


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: _Destination) -> bool:
    """Create one member; True if it was a regular file."""
    parts = _parts(member.name, member.name)
    if member.isdir():
        os.close(dest.open_dir(parts, member.name, create=True))
        return False
    if not parts:
        raise _Refused(f"tar member {member.name!r} is a {_kind(member)} with an empty name")
    if not (member.isreg() or member.issym() or member.islnk()):
        raise _Refused(
            f"tar member {member.name!r} is a {_kind(member)}: devices, FIFOs and other special files are not "
            "extracted"
        )
    parent = dest.open_dir(parts[:-1], member.name, create=True)
    try:
        if member.isreg():
            source = tar.extractfile(member)
            assert source is not None  # a regular member always has a reader
            dest.before_replacing(parent, parts, member.name)
            display = posixpath.join(dest.root, *parts)
            with fsio.AtomicWriter.open_at(parent, parts[-1], display, _file_mode(member.mode), member.mtime) as w:
                while chunk := source.read(fsio.CHUNK):
                    w.write(chunk)
                w.commit()
            return True
        if member.issym():
            target = member.linkname
            landing = posixpath.normpath(posixpath.join(*parts[:-1], target))
            if not target:
                raise _Refused(f"tar member {member.name!r} is a symlink with an empty target")
            if posixpath.isabs(target) or landing == ".." or landing.startswith("../"):
                raise _Refused(
                    f"tar member {member.name!r} is a symlink to {target!r}, outside the destination {dest.root}"
                )
            _place(parent, parts, dest, member.name, lambda tmp: os.symlink(target, tmp, dir_fd=parent))
            return False
        # a hardlink: to a regular file already extracted (or present) inside the destination
        link_parts = _parts(member.linkname, member.name)
        if not link_parts:
            raise _Refused(f"tar member {member.name!r} is a hardlink to the destination itself")
        src_dir = dest.open_dir(link_parts[:-1], member.name, create=False)
        try:
            st = dest.lstat(src_dir, link_parts[-1])
            if st is None or not stat.S_ISREG(st.st_mode):
                raise _Refused(
                    f"tar member {member.name!r} is a hardlink to {member.linkname!r}, which is not a regular file "
                    f"inside {dest.root}"
                )
            _place(
                parent, parts, dest, member.name,
                lambda tmp: os.link(link_parts[-1], tmp, src_dir_fd=src_dir, dst_dir_fd=parent, follow_symlinks=False),
            )
        finally:
            os.close(src_dir)
        return False
    finally:
        os.close(parent)


def _place(
    parent: int, parts: tuple[str, ...], dest: _Destination, member: str, make: Callable[[str], None]
) -> None:
    """Create an entry under a temporary name with ``make(tmp)``, then rename it over ``parts[-1]``."""
    dest.before_replacing(parent, parts, member)
    tmp = f".{parts[-1][:100]}.{secrets.token_hex(8)}.agentbox-tmp"
    make(tmp)
    try:
        os.rename(tmp, parts[-1], src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=parent)
        raise
    # rename() does nothing when both names are links to one file (a hardlink member naming itself, or a
    # file it already is): the temporary name is then still there and must go.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=parent)


def _kind(member: tarfile.TarInfo) -> str:
    if member.ischr():
        return "character device"
    if member.isblk():
        return "block device"
    if member.isfifo():
        return "FIFO"
    if member.isdir():
        return "directory"
    return f"special member (type {member.type!r})"


class _CountingReader:
    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.count += len(data)
        return data


def extract(source: IO[bytes], dest: str) -> ExtractResult:
    """Extract the (optionally compressed) tar stream ``source`` into the directory ``dest``, confined to it.

    ``dest`` is created if missing (a symlink as ``dest`` itself is followed: the caller chose that path).
    Raises FileOperationError naming the member that was refused; the destination is then left as it was.
    """
    counted = _CountingReader(source)
    with fsio.translate(dest):
        os.makedirs(dest, exist_ok=True)
        root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    target = _Destination(root_fd, dest)
    files = 0
    try:
        with fsio.translate(dest), tarfile.open(fileobj=cast(IO[bytes], counted), mode="r|*") as tar:
            while (member := tar.next()) is not None:
                # tarfile keeps every member it has read (memory per member); nothing here looks back.
                cast(Any, tar).members.clear()
                files += _extract_member(tar, member, target)
    except _Refused as exc:
        target.rollback()
        raise FileOperationError(f"{exc}; nothing was extracted") from None
    except (tarfile.TarError, EOFError) as exc:
        target.rollback()
        raise FileOperationError(f"not a valid tar stream for {dest}: {exc}; nothing was extracted") from None
    except BaseException:
        target.rollback()
        raise
    else:
        target.commit()
    finally:
        os.close(root_fd)
    return ExtractResult(files=files, bytes=counted.count)
