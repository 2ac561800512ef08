"""Run the runtime server as a local process, outside any sandbox (tests, benchmarks, development).

The key goes in on stdin, never on the command line; the server is ready when it prints its ready line,
which is waited for with a bound, not polled for.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass

from agentbox.protocol import READY_LINE_PREFIX

__all__ = ["LocalServer", "start_local_server"]


@dataclass
class LocalServer:
    """A ``python -m agentbox.server`` process on this machine."""

    proc: subprocess.Popen[str]
    """The server process."""
    url: str
    """What its ready line announced: ``http://HOST:PORT`` or ``unix:PATH``."""
    work_dir: str | os.PathLike[str]
    """Its work dir."""

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the server (it ends its sessions' processes), SIGKILL it if it lingers, and reap it."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()  # the ready-line pipe: unclosed, it is a ResourceWarning at collection


def start_local_server(
    work_dir: str | os.PathLike[str], api_key: str, *extra_args: str, ready_timeout: float = 30
) -> LocalServer:
    """Start a server on a free port (or as ``extra_args`` say, e.g. ``--uds PATH``) and wait until ready.

    Raises RuntimeError with what the server printed when no ready line comes within ``ready_timeout``.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentbox.server", "--port", "0", "--work-dir", str(work_dir), "--api-key-stdin",
         *extra_args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdout = proc.stdout
    proc.stdin.write(api_key + "\n")
    proc.stdin.close()
    lines: list[str] = []
    # readline() has no timeout of its own: a thread reads, the caller waits on it with a bound.
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(ready_timeout)
    if not lines or not lines[0].startswith(READY_LINE_PREFIX):
        proc.kill()
        proc.wait()
        stdout.close()
        raise RuntimeError(f"agentbox-server did not print its ready line: {lines!r}")
    return LocalServer(proc, lines[0].strip()[len(READY_LINE_PREFIX) :], work_dir)
