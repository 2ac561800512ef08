"""A real ``agentbox serve`` process for tests: its own process, a real SQLite file, the real engine.

A module of its own (not conftest) so the tests and the measuring script can import it by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agentbox.service.app import ADMIN_TOKEN_FILE, READY_PREFIX

TEST_LABEL = "agentbox.test"
SESSION_LABEL = "agentbox.test-session"
SESSION = "svc-" + uuid.uuid4().hex[:10]
#: Every sandbox the service tests create carries these (the final sweep removes this session's).
LABELS = {TEST_LABEL: "1", SESSION_LABEL: SESSION}

AGENTBOX = str(Path(sys.executable).with_name("agentbox"))


@dataclass
class ServiceProcess:
    """One running service."""

    proc: subprocess.Popen[str]
    url: str
    data_dir: Path
    args: list[str]
    stderr: list[str] = field(default_factory=list)

    @property
    def admin_token(self) -> str:
        return (self.data_dir / ADMIN_TOKEN_FILE).read_text().strip()

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # TCP_NODELAY as agentbox's own clients do (else Nagle + delayed ACK add ~40 ms per request).
        transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, transport=transport, **kwargs)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def start_service(data_dir: Path, *extra: str, ready_timeout: float = 90) -> ServiceProcess:
    """Start ``agentbox serve --port 0`` and wait for its ready line (stderr), bounded by ``ready_timeout``."""
    args = [AGENTBOX, "serve", "--port", "0", "--data-dir", str(data_dir), *extra]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    stderr = proc.stderr
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in stderr:
            lines.append(line)
            if line.startswith(READY_PREFIX):
                ready.set()
        ready.set()  # EOF: the process ended
        stderr.close()  # the pipe is ours to close (unclosed, it warns when collected)

    threading.Thread(target=read, daemon=True).start()
    ready.wait(ready_timeout)
    url = next((ln.strip()[len(READY_PREFIX):] for ln in lines if ln.startswith(READY_PREFIX)), None)
    if url is None:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"agentbox serve did not print its ready line: {''.join(lines)}")
    return ServiceProcess(proc, url, data_dir, args, lines)
