"""Reach a TCP port a process listens on inside the sandbox, through the runtime server.

Nothing is published on the host: the service (or any holder of the session key) asks the runtime
server, which connects to its own ``127.0.0.1:{port}``. So it works for ``network=none`` sandboxes and on
any backend that can reach the runtime server.

Two routes:

- ``/ports/{port}/{path}``: one HTTP request forwarded to ``http://127.0.0.1:{port}/{path}`` and its
  answer streamed back chunk by chunk (an SSE stream or a long download is not buffered).
- ``POST /tunnel/{port}``: a raw byte pipe to the port, both ways, for as long as either side keeps it
  open: the request body goes to the port, the port's bytes are the response body. The service carries
  WebSocket upgrades over it; it cannot be an ASGI WebSocket here, because the image's uvicorn has no
  WebSocket library (and needs none for this).

A port nothing listens on is a 502 ``port_closed``; an answer that is not HTTP a 502 ``port_bad_response``.
Such answers carry :data:`ERROR_HEADER`, so a proxy in front can tell the runtime server's own refusal
from the application's own 502. The session key never reaches the application on the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from agentbox.protocol import API_KEY_HEADER

if TYPE_CHECKING:
    # Imported where a port is forwarded: h11 is 7 ms and 1 MB of every server's start for a feature
    # most sandboxes never use.
    import h11

__all__ = ["ERROR_HEADER", "routes"]

#: Set on the runtime server's own error answers of these routes (its value is the wire code).
ERROR_HEADER = "x-agentbox-port-error"
_READ = 1 << 16
# Hop-by-hop headers (RFC 9110 7.6.1), the key, and Host (rewritten) never reach the application.
_DROP_REQUEST = frozenset(
    {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer", b"upgrade",
     b"host", API_KEY_HEADER.lower().encode()}
)
_DROP_RESPONSE = frozenset(
    {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
     b"transfer-encoding", b"upgrade"}
)


def _port(scope: Scope) -> int | None:
    raw = scope["path_params"]["port"]
    return int(raw) if raw.isdigit() and 0 < int(raw) < 65536 else None


async def _error(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"code": code, "message": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (ERROR_HEADER.encode(), code.encode()),
    ]})
    await send({"type": "http.response.body", "body": body})


async def _connect(scope: Scope, send: Send) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter] | None:
    """The connection to the requested port, or None once the error is answered."""
    port = _port(scope)
    if port is None:
        raw = scope["path_params"]["port"]
        await _error(send, 422, "validation_error", f"port: {raw!r} is not a TCP port (an integer 1-65535)")
        return None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        await _error(send, 502, "port_closed",
                     f"port {port}: nothing accepts connections on it in the sandbox ({exc.strerror or exc})")
        return None
    return port, reader, writer


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def forward_http(scope: Scope, receive: Receive, send: Send) -> None:
    """Forward one request to ``127.0.0.1:{port}`` and stream its answer back."""
    connected = await _connect(scope, send)
    if connected is None:
        return
    port, reader, writer = connected
    import h11

    try:
        conn = h11.Connection(h11.CLIENT)
        try:
            if not await _send_request(scope, receive, conn, writer, port):
                return
        except (OSError, h11.LocalProtocolError) as exc:
            await _error(send, 502, "port_closed", f"port {port}: the connection failed while sending ({exc})")
            return
        # The client going away ends the relay (an endless SSE stream from the port must not outlive it).
        watcher = asyncio.ensure_future(_until_disconnect(receive))
        relay = asyncio.ensure_future(_relay_response(conn, reader, send, port))
        try:
            await asyncio.wait({watcher, relay}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watcher, relay):
                task.cancel()
            await asyncio.gather(watcher, relay, return_exceptions=True)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _send_request(
    scope: Scope, receive: Receive, conn: h11.Connection, writer: asyncio.StreamWriter, port: int
) -> bool:
    """Write the request (its body streamed from the client); False if the client went away meanwhile."""
    import h11

    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _DROP_REQUEST]
    # One connection per request: the loopback connect costs microseconds, and no pool outlives a
    # request to an application that may restart at any time.
    headers += [(b"host", f"127.0.0.1:{port}".encode()), (b"connection", b"close")]
    target = "/" + scope["path_params"].get("path", "")
    if scope.get("query_string"):
        target += "?" + scope["query_string"].decode("latin-1")
    writer.write(conn.send(h11.Request(method=scope["method"], target=target.encode(), headers=headers)))
    if any(k.lower() in (b"content-length", b"transfer-encoding") for k, _v in headers):
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            more = message.get("more_body", False)
            if message.get("body"):
                writer.write(conn.send(h11.Data(data=message["body"])))
                await writer.drain()
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()
    return True


async def _relay_response(conn: h11.Connection, reader: asyncio.StreamReader, send: Send, port: int) -> None:
    import h11

    started = False
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            if not started:
                await _error(send, 502, "port_bad_response", f"port {port}: the answer is not HTTP/1.x ({exc})")
            return  # after the head, a broken body just ends (the client sees it cut)
        if event is h11.NEED_DATA:
            try:
                data = await reader.read(_READ)
            except OSError:  # reset by the application: the same as a close, for the client
                data = b""
            conn.receive_data(data)
            continue
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            headers = [(k, v) for k, v in event.headers if k not in _DROP_RESPONSE]
            await send({"type": "http.response.start", "status": event.status_code, "headers": headers})
            started = True
        elif isinstance(event, h11.Data):
            await send({"type": "http.response.body", "body": bytes(event.data), "more_body": True})
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            if not started:
                await _error(send, 502, "port_bad_response", f"port {port}: the connection closed without an answer")
            else:
                await send({"type": "http.response.body", "body": b""})
            return


async def tunnel(scope: Scope, receive: Receive, send: Send) -> None:
    """Pipe the request body to the port and the port's bytes back as the response body."""
    connected = await _connect(scope, send)
    if connected is None:
        return
    _port_number, reader, writer = connected
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"), (b"cache-control", b"no-cache")]})

    async def upstream() -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                return
            if message.get("body"):
                writer.write(message["body"])
                await writer.drain()
            if not message.get("more_body", False):
                with contextlib.suppress(OSError):
                    writer.write_eof()  # half-close: the application sees the end of its input
                await _until_disconnect(receive)
                return

    async def downstream() -> None:
        while data := await reader.read(_READ):
            await send({"type": "http.response.body", "body": data, "more_body": True})

    tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    with contextlib.suppress(OSError, RuntimeError):
        await send({"type": "http.response.body", "body": b""})


class _Endpoint:
    """A raw ASGI endpoint (Starlette calls it with the scope, receive and send)."""

    def __init__(self, handler: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._handler(scope, receive, send)


_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def routes() -> list[Route]:
    """The routes to register on the runtime server (behind its key check, like every other route)."""
    return [
        Route("/ports/{port}/{path:path}", _Endpoint(forward_http), methods=_METHODS, include_in_schema=False),
        Route("/ports/{port}", _Endpoint(forward_http), methods=_METHODS, include_in_schema=False),
        Route("/tunnel/{port}", _Endpoint(tunnel), methods=["POST"], include_in_schema=False),
    ]
