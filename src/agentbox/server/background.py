"""Detached background commands: started with an id, output written by the process straight to a file.

The server never copies a background command's output through itself: the process writes to its own log
file, and reads slice that file by byte offset. Each command is the root of a
:class:`~agentbox.server.procs.Lineage`, so kill takes down everything it started, wherever it moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import time
from collections.abc import Mapping

from agentbox.errors import NotFoundError
from agentbox.protocol import BackgroundInfo, BackgroundOutput, BackgroundOutputQuery
from agentbox.server.procs import ChildReaper, Lineage, spawn

__all__ = ["BackgroundCommand", "BackgroundManager"]


class BackgroundCommand:
    """One detached command and its log file."""

    def __init__(
        self, command: str, cwd: str, proc: subprocess.Popen[bytes], log_path: str, cid: str, lineage: Lineage
    ) -> None:
        self.id = cid
        self.lineage = lineage
        self.command = command
        self.cwd = cwd
        self.proc = proc
        self.log_path = log_path
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.exit_code: int | None = None
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def info(self) -> BackgroundInfo:
        """Describe it."""
        try:
            size = os.stat(self.log_path).st_size
        except OSError:
            size = 0
        return BackgroundInfo(
            id=self.id,
            command=self.command,
            pid=self.proc.pid,
            cwd=self.cwd,
            running=self.exit_code is None,
            exit_code=self.exit_code,
            started_at=self.started_at,
            ended_at=self.ended_at,
            output_bytes=size,
        )


class BackgroundManager:
    """Starts, lists, reads and kills background commands."""

    def __init__(self, shell: str, log_dir: str, reaper: ChildReaper, env: Mapping[str, str]) -> None:
        self._shell = shell
        self._log_dir = log_dir
        self._reaper = reaper
        self._env = dict(env)
        self._commands: dict[str, BackgroundCommand] = {}

    def start(self, command: str, cwd: str, env: Mapping[str, str]) -> BackgroundInfo:
        """Start ``command`` with ``bash -c`` in ``cwd``; stdin is /dev/null."""
        cid = "bg-" + secrets.token_hex(5)
        log_path = os.path.join(self._log_dir, f"{cid}.log")
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        lineage = Lineage()
        try:
            proc = spawn(
                [self._shell, "-c", command],
                cwd=cwd,
                env=lineage.environment({**self._env, **env}),
                stdin=null,
                stdout=log,
                stderr=log,
            )
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(log_path)
            raise
        finally:
            os.close(log)
            os.close(null)
        lineage.root = proc.pid
        bg = BackgroundCommand(command, cwd, proc, log_path, cid, lineage)
        self._commands[cid] = bg
        self._reaper.watch(proc, lambda status: self._on_exit(bg, status))
        return bg.info()

    @staticmethod
    def _on_exit(bg: BackgroundCommand, status: int) -> None:
        bg.exit_code = status
        bg.ended_at = time.time()
        if not bg.exited.done():
            bg.exited.set_result(None)

    def get(self, cid: str) -> BackgroundCommand:
        """The background command ``cid``."""
        try:
            return self._commands[cid]
        except KeyError:
            raise NotFoundError(f"no background command {cid!r}") from None

    def list(self) -> list[BackgroundInfo]:
        """All background commands, oldest first."""
        return [bg.info() for bg in self._commands.values()]

    @property
    def running(self) -> int:
        """How many are still running."""
        return sum(bg.exit_code is None for bg in self._commands.values())

    def read(self, cid: str, query: BackgroundOutputQuery) -> BackgroundOutput:
        """A slice of the output by byte offset (blocking read: call from a thread)."""
        bg = self.get(cid)
        with open(bg.log_path, "rb") as f:
            f.seek(query.offset)
            data = f.read(query.max_bytes)
        # Do not split a UTF-8 character: leave an incomplete tail for the next read.
        cut = len(data)
        for back in range(1, min(4, len(data)) + 1):
            byte = data[-back]
            if byte & 0xC0 != 0x80:  # a lead byte (or ASCII): complete if its sequence fits
                need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
                if need > back and bg.exit_code is None:
                    cut = len(data) - back
                break
        data = data[:cut]
        return BackgroundOutput(
            id=cid,
            output=data.decode("utf-8", errors="replace"),
            offset=query.offset,
            next_offset=query.offset + len(data),
            running=bg.exit_code is None,
            exit_code=bg.exit_code,
        )

    async def kill(self, cid: str) -> BackgroundInfo:
        """Kill the command and everything it started, and return once it is reaped."""
        bg = self.get(cid)
        # Even after the command itself exited, what it left running (`daemon &`) is killed.
        bg.lineage.kill()
        if bg.exit_code is None:
            await asyncio.wait([bg.exited], timeout=5)
        return bg.info()

    async def remove(self, cid: str) -> BackgroundInfo:
        """Kill the command (see :meth:`kill`), then forget it and delete its output; returns its last info."""
        info = await self.kill(cid)
        bg = self._commands.pop(cid, None)
        if bg is not None:
            with contextlib.suppress(OSError):
                os.unlink(bg.log_path)
        return info

    def close(self) -> None:
        """Kill every command and what it started (server shutdown)."""
        for bg in self._commands.values():
            bg.lineage.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                bg.proc.wait(timeout=2)  # reaped now: the loop may close before the reaper's callback
