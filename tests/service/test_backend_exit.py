"""The process-wide backends close their connections when the process exits.

``get_service_backend`` keeps one keep-alive pool per service for the life of the process. Left to the
interpreter's teardown, each pooled socket was a ResourceWarning at exit (``sys:1``), which no test's
warning filter sees; a child process with ResourceWarnings as errors shows it on its stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

CHILD = """
import sys
from agentbox.backends import get_service_backend

backend = get_service_backend(sys.argv[1], "t")
assert backend.list() == []
print("listed")
"""


class _Sandboxes(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client's connection stays in its pool after the call

    def do_GET(self) -> None:
        body = json.dumps({"sandboxes": []}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def service_stub() -> Iterator[str]:
    """A stand-in for the service's ``GET /v1/sandboxes`` on a free loopback port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sandboxes)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_process_wide_service_backend_closes_its_pool_at_exit(service_stub: str) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", CHILD, service_stub],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "listed\n"  # the call did go through the pool
    assert "ResourceWarning" not in done.stderr, done.stderr
