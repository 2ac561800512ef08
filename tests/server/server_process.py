"""A real runtime server process for tests: started with its key on stdin, ready when it says so.

A module of its own (not conftest) so test files can import it by a name no other folder's conftest shares.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from agentbox.protocol import READY_LINE_PREFIX

API_KEY = "test-key-" + os.urandom(8).hex()


class ServerProcess:
    """A real ``python -m agentbox.server`` process."""

    def __init__(self, proc: subprocess.Popen[str], url: str, work_dir: Path) -> None:
        self.proc = proc
        self.url = url
        self.work_dir = work_dir

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid


def start_server(work_dir: Path, *extra: str) -> ServerProcess:
    """Start a server on a free port with the key on stdin, and wait for its ready line."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentbox.server",
            "--port",
            "0",
            "--work-dir",
            str(work_dir),
            "--api-key-stdin",
            *extra,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(API_KEY + "\n")
    proc.stdin.close()
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(30)
    if not lines or not lines[0].startswith(READY_LINE_PREFIX):
        proc.kill()
        raise RuntimeError(f"server did not print its ready line: {lines!r}")
    return ServerProcess(proc, lines[0].strip()[len(READY_LINE_PREFIX) :], work_dir)


def stop_server(server: ServerProcess) -> None:
    """SIGTERM the server and wait for it."""
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
