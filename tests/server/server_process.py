"""A real runtime server process for tests, with the suite's key.

A module of its own (not conftest) so test files can import it by a name no other folder's conftest shares.
"""

from __future__ import annotations

import os
from pathlib import Path

from agentbox.server.local import LocalServer, start_local_server

API_KEY = "test-key-" + os.urandom(8).hex()

ServerProcess = LocalServer


def start_server(work_dir: Path, *extra: str) -> LocalServer:
    """Start a server with the suite's key on stdin, and wait for its ready line."""
    return start_local_server(work_dir, API_KEY, *extra)


def stop_server(server: LocalServer) -> None:
    """SIGTERM the server and wait for it."""
    server.stop()
