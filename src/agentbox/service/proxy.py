"""The reverse proxy to sandboxes' runtime servers: the only way in from outside.

``/v1/sandboxes/{id}/runtime/{path}`` is sent to ``{path}`` on that sandbox's runtime server with the
session key added (clients never see it) and the client's own credentials removed. Bodies stream both
ways: a response is forwarded chunk by chunk as it arrives, so an SSE stream (``sessions/x/stream``) is
not buffered. WebSocket upgrades are relayed message by message.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from agentbox.protocol import API_KEY_HEADER
from agentbox.service.errors import ApiError
from agentbox.service.sandboxes import Target

__all__ = ["RuntimeProxy"]

# Hop-by-hop headers (RFC 9110 7.6.1) and the client's credentials never cross the proxy.
_DROP_REQUEST = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding",
     "upgrade", "host", "authorization", API_KEY_HEADER.lower()}
)
_DROP_RESPONSE = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding",
     "upgrade"}
)
#: Bodies up to this size are read whole and sent in one write (the common case: a JSON command).
_SMALL_BODY = 1 << 20


class RuntimeProxy:
    """The HTTP clients to runtime servers (keep-alive), and the forwarding itself.

    One client serves every sandbox reached over TCP (connections are pooled per address); a sandbox
    behind a Unix socket gets a client of its own. Making an httpx client costs 20-40 ms, nearly all of
    it loading CA certificates, so one SSL context (never used: sandboxes speak plain HTTP) is shared.
    """

    def __init__(self) -> None:
        self._ssl: ssl.SSLContext | None = None
        self._tcp: httpx.AsyncClient | None = None
        self._uds: dict[str, tuple[str, httpx.AsyncClient]] = {}

    def _new_client(self, transport_args: dict[str, Any]) -> httpx.AsyncClient:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        transport = httpx.AsyncHTTPTransport(verify=self._ssl, **transport_args)
        # No read timeout: a command may legitimately run for a long time; the runtime server bounds it.
        return httpx.AsyncClient(
            transport=transport, verify=self._ssl, timeout=httpx.Timeout(10.0, read=None, write=None, pool=None)
        )

    def _client(self, target: Target) -> httpx.AsyncClient:
        ep = target.endpoint
        if ep.uds is None:
            if self._tcp is None:
                # Without TCP_NODELAY, headers and body leave in two writes and Nagle plus the server's
                # delayed ACK hold the second for ~40 ms: every proxied round trip would pay it.
                self._tcp = self._new_client(
                    {"socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                     "limits": httpx.Limits(max_connections=None, max_keepalive_connections=256)}
                )
            return self._tcp
        known = self._uds.get(target.sandbox_id)
        if known is not None and known[0] == ep.uds:
            return known[1]
        if known is not None:  # the sandbox restarted with another socket: the old connections are useless
            asyncio.get_running_loop().create_task(known[1].aclose())
        client = self._new_client({"uds": ep.uds})
        self._uds[target.sandbox_id] = (ep.uds, client)
        return client

    async def drop(self, sandbox_id: str) -> None:
        """Close the connections to a sandbox that went away (pooled TCP ones expire by themselves)."""
        known = self._uds.pop(sandbox_id, None)
        if known is not None:
            await known[1].aclose()

    async def aclose(self) -> None:
        """Close every connection."""
        for sandbox_id in list(self._uds):
            await self.drop(sandbox_id)
        if self._tcp is not None:
            await self._tcp.aclose()
            self._tcp = None

    async def forward(
        self, request: Request, target: Target, path: str, on_done: Callable[[], None] = lambda: None
    ) -> Response:
        """Send ``request`` to ``path`` on the target's runtime server and stream the answer back.

        ``on_done`` is called once the answer has been sent (or failed), exactly once, if this returns."""
        client = self._client(target)
        url = target.endpoint.url.rstrip("/") + "/" + path.lstrip("/")
        query = request.url.query
        if query:
            url += "?" + query
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in _DROP_REQUEST]
        headers.append((API_KEY_HEADER.encode(), target.key.encode()))
        length = request.headers.get("content-length")
        content: Any
        if "transfer-encoding" in request.headers or (length is not None and not length.isdigit()):
            content = request.stream()
        elif length is None:
            content = b""  # no body (a GET): an empty stream would go out as a chunked upload
        elif int(length) <= _SMALL_BODY:
            content = await request.body()
        else:
            content = request.stream()
        upstream_request = client.build_request(request.method, url, headers=headers, content=content)
        try:
            upstream = await client.send(upstream_request, stream=True)
        except httpx.HTTPError as exc:
            raise ApiError(
                "sandbox_unreachable", f"sandbox {target.sandbox_id}: its runtime server did not answer ({exc!r})"
            ) from None
        out_headers = {
            k: v for k, v in upstream.headers.multi_items() if k.lower() not in _DROP_RESPONSE
        }
        finished = False

        async def finish() -> None:
            nonlocal finished
            if not finished:
                finished = True
                await upstream.aclose()
                on_done()

        size = upstream.headers.get("content-length", "")
        if size.isdigit() and int(size) <= _SMALL_BODY:
            # A small answer of known size (a command's result): one read, one write, no chunk machinery.
            try:
                body = b"".join([chunk async for chunk in upstream.aiter_raw()])  # raw: still encoded
            finally:
                await finish()
            return Response(body, status_code=upstream.status_code, headers=out_headers)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await finish()

        # The background task covers a client gone before the first chunk (the generator never ran).
        return StreamingResponse(relay(), status_code=upstream.status_code, headers=out_headers,
                                 background=BackgroundTask(finish))

    async def forward_websocket(self, websocket: WebSocket, target: Target, path: str) -> None:
        """Relay a WebSocket to ``path`` on the target's server, both ways, until either side closes."""
        from websockets.asyncio.client import connect, unix_connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        ep = target.endpoint
        base = ep.url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        url = base + "/" + path.lstrip("/")
        if websocket.url.query:
            url += "?" + websocket.url.query
        options: dict[str, Any] = {
            "additional_headers": {API_KEY_HEADER: target.key},
            "subprotocols": websocket.scope.get("subprotocols") or None,
            "max_size": None,
            "open_timeout": 10,
        }
        try:
            opener = unix_connect(ep.uds, url, **options) if ep.uds else connect(url, **options)
            upstream = await opener
        except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
            # Before accept, a close becomes an HTTP 403 for the client; say why in the reason.
            await websocket.close(code=1011, reason=f"sandbox unreachable: {type(exc).__name__}"[:120])
            return
        await websocket.accept(subprotocol=upstream.subprotocol)

        async def client_to_upstream() -> None:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    await upstream.close(code=message.get("code", 1000))
                    return
                if message.get("text") is not None:
                    await upstream.send(message["text"])
                elif message.get("bytes") is not None:
                    await upstream.send(message["bytes"])

        async def upstream_to_client() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for data in upstream:
                    if isinstance(data, str):
                        await websocket.send_text(data)
                    else:
                        await websocket.send_bytes(data)
            code = upstream.close_code or 1000
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await websocket.close(code=code if code != 1005 else 1000)

        tasks = [asyncio.create_task(client_to_upstream()), asyncio.create_task(upstream_to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await upstream.close()
