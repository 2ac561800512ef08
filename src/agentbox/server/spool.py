"""Bounded output handling: a head-and-tail text collector and a raw spool that moves to disk when large.

A command may print gigabytes; the server holds at most ``limit`` characters of head plus a bounded tail
per result, and the raw bytes of a whole command in memory only up to ``mem_limit`` before they go to a
spool file, so the full output stays retrievable without unbounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Iterator

__all__ = ["RawSpool", "TruncatingText"]


class TruncatingText:
    """Collects text; renders it whole if it fits ``limit`` characters, else head + marker + tail."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._head: list[str] = []
        self._head_len = 0
        self._tail: deque[str] = deque()
        self._tail_len = 0

    def add(self, text: str) -> None:
        """Append ``text``."""
        self.total += len(text)
        room = self.limit - self._head_len
        if room > 0:
            take = text[:room]
            self._head.append(take)
            self._head_len += len(take)
            text = text[len(take) :]
        if text:
            self._tail.append(text)
            self._tail_len += len(text)
            # Keep at least `limit` characters of tail, so any render can take its tail from it alone.
            while self._tail and self._tail_len - len(self._tail[0]) >= self.limit:
                self._tail_len -= len(self._tail.popleft())

    def render(self, command_id: str, limit: int | None = None) -> tuple[str, bool]:
        """The collected text within ``limit`` (at most the collector's) characters, and if it was cut."""
        limit = self.limit if limit is None else min(limit, self.limit)
        head = "".join(self._head)
        if self.total <= limit:
            return head[: self.total], False
        marker = self._marker(self.total, command_id)  # an upper bound on the marker's length
        budget = max(limit - len(marker), 2)
        keep_head = budget // 2
        keep_tail = budget - keep_head
        tail = (head + "".join(self._tail))[-keep_tail:]
        return head[:keep_head] + self._marker(self.total - budget, command_id) + tail, True

    def _marker(self, cut: int, command_id: str) -> str:
        return (
            f"\n[... {cut} characters cut from the middle of {self.total}; "
            f"full output: GET /commands/{command_id}/output ...]\n"
        )


class RawSpool:
    """The raw bytes of one command's output: in memory while small, then in a private file."""

    def __init__(self, path: str, mem_limit: int = 1 << 20) -> None:
        self.path = path
        self.size = 0
        self._mem: bytearray | None = bytearray()
        self._mem_limit = mem_limit
        self._fd: int | None = None

    @property
    def on_disk(self) -> bool:
        """True once the output moved to the spool file."""
        return self._mem is None

    def write(self, data: bytes) -> None:
        """Append ``data`` (a page-cache write when on disk: fast enough for the event loop)."""
        self.size += len(data)
        if self._mem is not None:
            self._mem += data
            if len(self._mem) <= self._mem_limit:
                return
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            data, self._mem = bytes(self._mem), None
        if self._fd is not None:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]

    def finish(self) -> None:
        """No more writes will come: close the spool file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def read_at(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of the output from byte ``offset`` (b"" at the end so far, or once discarded).

        From memory while the output is small; from the file (in a worker thread) once it moved there,
        so a reader far behind the writer costs neither memory nor event-loop time.
        """
        if self._mem is not None:
            return bytes(self._mem[offset : offset + size])
        if offset >= self.size:
            return b""
        return await asyncio.to_thread(self._pread, offset, size)

    def _pread(self, offset: int, size: int) -> bytes:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:  # discarded meanwhile
            return b""
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The whole output so far, in chunks (blocking reads: call from a thread when on disk)."""
        if self._mem is not None:
            yield bytes(self._mem)
            return
        with open(self.path, "rb") as f:
            while chunk := f.read(size):
                yield chunk

    def discard(self) -> None:
        """Drop the output and delete the spool file."""
        self.finish()
        self._mem = bytearray()
        self.size = 0
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
