"""Ports inside a sandbox reached through the service (/v1/sandboxes/{id}/ports/{port}/{path}), and the
followed log: a real service process, a real engine, a real application listening in the sandbox."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_process import ServiceProcess
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.docker

Services = Callable[..., ServiceProcess]
PORT = 8089

# The application: stdlib only (the sandbox's python has no WebSocket library). GET echoes the path and
# the headers it got; POST echoes the body; /stream sends one chunk, then waits for /tmp/release before the
# second; a WebSocket upgrade is answered and text frames are echoed back with "echo:" in front.
APP = r'''
import base64, hashlib, json, os, struct, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        if self.path == "/stream":
            self.send_response(200); self.send_header("Transfer-Encoding", "chunked"); self.end_headers()
            self.chunk(b"first")
            while not os.path.exists("/tmp/release"): time.sleep(0.02)
            self.chunk(b"second"); self.wfile.write(b"0\r\n\r\n"); return
        self.answer({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})
    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        self.answer({"body": self.rfile.read(n).decode()})
    def chunk(self, b):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b)); self.wfile.flush()
    def answer(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        self.send_response(101); self.send_header("Upgrade", "websocket"); self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", base64.b64encode(hashlib.sha1(key.encode()).digest()).decode())
        self.end_headers(); self.wfile.flush()
        self.frame(1, ("path=" + self.path).encode())
        while True:
            b1, b2 = self.rfile.read(2)
            n = b2 & 127
            if n == 126: n = struct.unpack(">H", self.rfile.read(2))[0]
            elif n == 127: n = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4)
            data = bytes(c ^ mask[i % 4] for i, c in enumerate(self.rfile.read(n)))
            if b1 & 15 == 8:
                self.frame(8, data[:2]); self.close_connection = True; return
            if b1 & 15 == 1:
                self.frame(1, b"echo:" + data)
    def frame(self, op, data):
        n = len(data)
        head = bytes([0x80 | op]) + (bytes([n]) if n < 126 else bytes([126]) + struct.pack(">H", n))
        self.wfile.write(head + data); self.wfile.flush()

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


def _create(client: httpx.Client, labels: dict[str, str], **config: Any) -> str:
    r = client.post("/v1/sandboxes", json={"config": config, "labels": labels})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _run(client: httpx.Client, sid: str, command: str) -> dict[str, Any]:
    r = client.post(f"/v1/sandboxes/{sid}/runtime/sessions/default/run", json={"command": command, "timeout": 60})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _start_app(client: httpx.Client, sid: str) -> None:
    r = client.post(f"/v1/sandboxes/{sid}/runtime/files/write", json={"path": "/tmp/app.py", "content": APP})
    assert r.status_code == 200, r.text
    r = client.post(f"/v1/sandboxes/{sid}/runtime/background", json={"command": f"python3 /tmp/app.py {PORT}"})
    assert r.status_code == 200, r.text
    wait = (f"for i in $(seq 300); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {PORT}))' "
            "2>/dev/null && exit 0; sleep 0.1; done; exit 1")
    assert _run(client, sid, wait)["exit_code"] == 0


async def _websocket_echo(svc: ServiceProcess, token: str, sid: str) -> list[str]:
    url = svc.url.replace("http://", "ws://") + f"/v1/sandboxes/{sid}/ports/{PORT}/chat?room=1"
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=30) as ws:
        got = [str(await ws.recv())]
        await ws.send("hello")
        got.append(str(await ws.recv()))
    return got


def _check_port(svc: ServiceProcess, client: httpx.Client, sid: str) -> None:
    """HTTP (path, query, headers, body, a streamed answer) and a WebSocket to the application."""
    base = f"/v1/sandboxes/{sid}/ports/{PORT}"
    got = client.get(f"{base}/some/path?x=1&y=2", headers={"X-Mine": "yes"})
    assert got.status_code == 200, got.text
    seen = got.json()
    assert seen["path"] == "/some/path?x=1&y=2"
    assert seen["headers"]["x-mine"] == "yes"
    # Neither the client's token nor the sandbox's session key reaches the application.
    assert "authorization" not in seen["headers"] and "x-session-api-key" not in seen["headers"]
    assert client.post(f"{base}/form", content=b"a=1").json() == {"body": "a=1"}
    assert client.get(base).json()["path"] == "/"
    _run(client, sid, "rm -f /tmp/release")
    with client.stream("GET", f"{base}/stream") as response:
        chunks = response.iter_raw()
        # The application holds its second chunk until the test, having seen the first, releases it: a
        # proxy that buffered the answer would never deliver the first.
        assert next(chunks) == b"first"
        _run(client, sid, "touch /tmp/release")
        assert b"".join(chunks) == b"second"
    token = str(client.headers["Authorization"]).removeprefix("Bearer ")
    assert asyncio.run(_websocket_echo(svc, token, sid)) == ["path=/chat?room=1", "echo:hello"]


def test_exposed_port_http_websocket_and_refusals(services: Services, service_config: Callable[..., Path],
                                                  labels: dict[str, str]) -> None:
    svc = services("--config", str(service_config()))
    with svc.client(svc.admin_token) as admin:
        sid = _create(admin, labels)
        _start_app(admin, sid)
        _check_port(svc, admin, sid)

        closed = admin.get(f"/v1/sandboxes/{sid}/ports/{PORT + 1}/x")
        assert closed.status_code == 502
        assert closed.json()["error"]["code"] == "port_closed" and str(PORT + 1) in closed.json()["error"]["message"]
        for bad in ("0", "65536", "http"):
            r = admin.get(f"/v1/sandboxes/{sid}/ports/{bad}/x")
            assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", r.text
            assert "port" in r.json()["error"]["message"]

        with pytest.raises(InvalidStatus) as refused:
            url = svc.url.replace("http://", "ws://") + f"/v1/sandboxes/{sid}/ports/{PORT + 1}/ws"
            asyncio.run(_open(url, svc.admin_token))
        assert refused.value.response.status_code == 502
        assert b"port_closed" in (refused.value.response.body or b"")

        # Another token's sandbox does not exist for it, on this route as on every other.
        other = admin.post("/v1/tokens", json={"name": "other"}).json()["token"]
        with svc.client(other) as stranger:
            assert stranger.get(f"/v1/sandboxes/{sid}/ports/{PORT}/x").status_code == 404

        doc = admin.get("/openapi.json").json()
        op = doc["paths"]["/v1/sandboxes/{id}/ports/{port}/{path}"]["get"]
        assert "port_closed" in op["description"] and "502" in op["responses"]


async def _open(url: str, token: str) -> None:
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=30):
        pass


def test_exposed_port_of_a_sandbox_without_network(services: Services, service_config: Callable[..., Path],
                                                   labels: dict[str, str]) -> None:
    svc = services("--config", str(service_config()))
    with svc.client(svc.admin_token) as admin:
        sid = _create(admin, labels, network="none")
        assert _run(admin, sid, "ls /sys/class/net")["output"].split() == ["lo"]
        _start_app(admin, sid)
        _check_port(svc, admin, sid)


def test_logs_follow_streams_until_the_sandbox_stops(services: Services, service_config: Callable[..., Path],
                                                     labels: dict[str, str]) -> None:
    svc = services("--config", str(service_config()))
    with svc.client(svc.admin_token) as admin:
        sid = _create(admin, labels)
        with admin.stream("GET", f"/v1/sandboxes/{sid}/logs", params={"follow": "1", "tail": "0"}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            lines = r.iter_lines()
            # Written to the runtime server's own stdout: the container's log.
            _run(admin, sid, "echo marker-one-$((40+2)) > /proc/1/fd/1")
            assert next(line for line in lines if "marker-one" in line) == "marker-one-42"
            _run(admin, sid, "echo marker-two > /proc/1/fd/1")
            assert next(line for line in lines if "marker-two" in line) == "marker-two"
            assert admin.post(f"/v1/sandboxes/{sid}/stop").status_code == 200
            list(lines)  # the stream ends once the sandbox stopped (else this blocks until the timeout)
        whole = admin.get(f"/v1/sandboxes/{sid}/logs").text
        assert "marker-one-42" in whole and "marker-two" in whole
        # Without follow the answer is the log so far, as before.
        assert admin.get(f"/v1/sandboxes/{sid}/logs", params={"follow": "1"}).text == whole  # stopped: no wait
        assert admin.get("/v1/sandboxes/nope/logs", params={"follow": "1"}).status_code == 404
        assert json.loads(admin.get(f"/v1/sandboxes/{sid}/logs", params={"follow": "x"}).text)["error"]["code"] \
            == "validation_error"
