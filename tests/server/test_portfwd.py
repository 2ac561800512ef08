"""The runtime server's port forward (/ports/{port}/{path}) and byte tunnel (/tunnel/{port}), against a
real server process and a real application listening on loopback."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from server_process import API_KEY, ServerProcess

from agentbox.protocol import API_KEY_HEADER
from agentbox.server.portfwd import ERROR_HEADER

KEY = {API_KEY_HEADER: API_KEY}


class _App(BaseHTTPRequestHandler):
    """Echoes what it got; /stream sends one chunk, waits for the test's event, then a second one."""

    protocol_version = "HTTP/1.1"
    release = threading.Event()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"first", b"second"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
                _App.release.wait(30)
            self.wfile.write(b"0\r\n\r\n")
            return
        self._answer(json.dumps({"path": self.path, "headers": dict(self.headers.items())}).encode())

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length", "0"))
        self._answer(json.dumps({"path": self.path, "body": self.rfile.read(size).decode()}).encode())


@pytest.fixture(scope="module")
def app_port() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _App)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        _App.release.set()
        httpd.shutdown()
        httpd.server_close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()  # bound, never listened: nothing accepts on it
    return port


def test_forwards_method_path_query_and_body_without_the_key(server: ServerProcess, app_port: int) -> None:
    got = httpx.get(f"{server.url}/ports/{app_port}/a/b?x=1&y=2", headers={**KEY, "X-Mine": "yes"})
    assert got.status_code == 200
    seen = got.json()
    assert seen["path"] == "/a/b?x=1&y=2"
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["x-mine"] == "yes"
    assert API_KEY_HEADER.lower() not in headers  # the application never learns the session key
    assert headers["host"] == f"127.0.0.1:{app_port}"
    posted = httpx.post(f"{server.url}/ports/{app_port}/submit", headers=KEY, content=b"payload")
    assert posted.json() == {"path": "/submit", "body": "payload"}
    root = httpx.get(f"{server.url}/ports/{app_port}", headers=KEY)
    assert root.json()["path"] == "/"


def test_streams_the_answer_chunk_by_chunk(server: ServerProcess, app_port: int) -> None:
    _App.release.clear()
    with httpx.stream("GET", f"{server.url}/ports/{app_port}/stream", headers=KEY, timeout=30) as response:
        chunks = response.iter_raw()
        # The application holds its second chunk until the first has come through: a buffering
        # forward would deadlock here (and time out) instead.
        assert next(chunks) == b"first"
        _App.release.set()
        assert b"".join(chunks) == b"second"


def test_closed_port_is_a_502_naming_it(server: ServerProcess) -> None:
    port = _closed_port()
    got = httpx.get(f"{server.url}/ports/{port}/x", headers=KEY)
    assert got.status_code == 502
    assert got.json()["code"] == "port_closed" and str(port) in got.json()["message"]
    assert got.headers[ERROR_HEADER] == "port_closed"


@pytest.mark.parametrize("port", ["0", "65536", "http", "-1"])
def test_bad_port_is_a_4xx(server: ServerProcess, port: str) -> None:
    got = httpx.get(f"{server.url}/ports/{port}/x", headers=KEY)
    assert got.status_code == 422 and got.json()["code"] == "validation_error"
    assert "port" in got.json()["message"]


def test_needs_the_key(server: ServerProcess, app_port: int) -> None:
    assert httpx.get(f"{server.url}/ports/{app_port}/x").status_code == 401
    assert httpx.post(f"{server.url}/tunnel/{app_port}").status_code == 401


def test_tunnel_pipes_bytes_both_ways(server: ServerProcess) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def echo_once() -> None:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data.upper())

    thread = threading.Thread(target=echo_once, daemon=True)
    thread.start()
    host, _, server_port = server.url.removeprefix("http://").partition(":")
    try:
        with socket.create_connection((host, int(server_port)), timeout=30) as s:
            s.sendall(
                f"POST /tunnel/{port} HTTP/1.1\r\nHost: x\r\n{API_KEY_HEADER}: {API_KEY}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".encode()
            )
            received = b""
            while b"HELLO" not in received:
                data = s.recv(4096)
                assert data, received
                received += data
            assert received.startswith(b"HTTP/1.1 200")
            s.sendall(b"0\r\n\r\n")  # end of our side: the application sees EOF and closes; so does the tunnel
            while not received.endswith(b"\r\n0\r\n\r\n"):  # the response's last chunk
                data = s.recv(4096)
                assert data, received
                received += data
    finally:
        listener.close()
        thread.join(10)
