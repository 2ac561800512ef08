"""The reverse proxy to sandboxes' runtime servers: the only way in from outside.

``/v1/sandboxes/{id}/runtime/{path}`` is sent to ``{path}`` on that sandbox's runtime server with the
session key added (clients never see it) and the client's own credentials removed. Bodies stream both
ways: a response is forwarded chunk by chunk as it arrives, so an SSE stream (``sessions/x/stream``) is
not buffered. WebSocket upgrades are relayed message by message.

``/v1/sandboxes/{id}/ports/{port}/{path}`` goes the same way to the runtime server's port forward
(:mod:`agentbox.server.portfwd`), which reaches ``127.0.0.1:{port}`` inside the sandbox; its WebSockets
travel over the runtime server's byte tunnel. The runtime server's own refusals there (``port_closed``...)
are turned into the service's error shape. A sandbox that runs its image's own server (an OpenHands
runtime: ``Target.direct_ports``) has no such forward; its ports are reached on its network address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import h11
import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from agentbox.backends.base import Endpoint
from agentbox.protocol import API_KEY_HEADER
from agentbox.server.portfwd import ERROR_HEADER as PORT_ERROR_HEADER
from agentbox.server.routing import json_response
from agentbox.service.errors import ApiError
from agentbox.service.models import ErrorDetail, ErrorResponse
from agentbox.service.sandboxes import Target

__all__ = ["RuntimeProxy", "parse_port"]

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
_READ = 1 << 16
#: Idle kept-alive connections kept per sandbox (more concurrent requests open more, closed after).
_IDLE_PER_SANDBOX = 32


def parse_port(raw: str) -> int:
    """The port of a ``/ports/{port}`` path, or a 422 naming the field."""
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ApiError("validation_error", f"port: {raw[:20]!r} is not a TCP port (an integer 1-65535)")
    return int(raw)


class RuntimeProxy:
    """The HTTP clients to runtime servers (keep-alive), and the forwarding itself.

    Each sandbox gets a client (a connection pool) of its own, and so do the kept-alive connections of
    the h11 path: a sandbox's address can be another's later (an engine reuses bridge addresses, which
    OpenHands runtimes and network-less sandboxes are reached at, and a restarted one is reached at the
    same one), and a connection to a container that went away gets no answer at all, so connections must
    never outlive what they were made for. :meth:`drop` closes them when the sandbox stops or goes.
    Making an httpx client costs 20-40 ms, nearly all of it loading CA certificates, so one SSL context
    (never used: sandboxes speak plain HTTP) is shared.
    """

    def __init__(self) -> None:
        self._ssl: ssl.SSLContext | None = None
        # sandbox id -> the address a client connects to (the server's URL or socket, an app port) -> it
        self._clients: dict[str, dict[str, httpx.AsyncClient]] = {}
        # Idle kept-alive connections of the h11 path: sandbox id -> runtime server address -> them.
        self._idle: dict[str, dict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]] = {}

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
        address = ep.uds or ep.url
        clients = self._clients.setdefault(target.sandbox_id, {})
        known = clients.get(address)
        if known is not None:
            return known
        if ep.uds is not None:
            client = self._new_client({"uds": ep.uds})
        else:
            # Without TCP_NODELAY, headers and body leave in two writes and Nagle plus the server's
            # delayed ACK hold the second for ~40 ms: every proxied round trip would pay it.
            client = self._new_client({"socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                                       "limits": httpx.Limits(max_connections=None, max_keepalive_connections=64)})
        clients[address] = client
        return client

    async def drop(self, sandbox_id: str) -> None:
        """Close the connections to a sandbox that stopped or went away."""
        for client in self._clients.pop(sandbox_id, {}).values():
            await client.aclose()
        for idle in self._idle.pop(sandbox_id, {}).values():
            for _reader, writer in idle:
                writer.close()

    async def aclose(self) -> None:
        """Close every connection."""
        for sandbox_id in {*self._clients, *self._idle}:
            await self.drop(sandbox_id)

    async def forward(
        self, request: Request, target: Target, path: str, on_done: Callable[[], None] = lambda: None
    ) -> Response:
        """Send ``request`` to ``path`` on the target's runtime server and stream the answer back.

        ``on_done`` is called once the answer has been sent (or failed), exactly once, if this returns."""
        if target.direct_ports and path.startswith("ports/"):
            return await self._forward_direct(request, target, path, on_done)
        client = self._client(target)
        url = target.endpoint.url.rstrip("/") + "/" + path.lstrip("/")
        query = request.url.query
        if query:
            url += "?" + query
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in _DROP_REQUEST]
        if target.key:
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
        if isinstance(content, bytes):
            # The endpoint may sit under a path (a swarm sandbox is reached through the relay's /<id>/...).
            base = urlsplit(target.endpoint.url).path.rstrip("/")
            target_path = base + "/" + path.lstrip("/") + ("?" + query if query else "")
            return await self._forward_small(request.method, target, target_path, headers, content, on_done)
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
        if PORT_ERROR_HEADER in upstream.headers and size.isdigit() and int(size) <= _SMALL_BODY:
            try:
                body = await upstream.aread()
            finally:
                await finish()
            return _port_error(upstream.status_code, upstream.headers[PORT_ERROR_HEADER], body)
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

    async def _forward_direct(
        self, request: Request, target: Target, path: str, on_done: Callable[[], None]
    ) -> Response:
        """``ports/{port}/{rest}`` of a sandbox without agentbox's port forward: straight to its network
        address on that port, without the session key (the application is the agent's, not the server)."""
        _, raw, *rest = path.split("/", 2)
        port = parse_port(raw)
        direct = Target(target.sandbox_id, _port_endpoint(target, port), key="")
        try:
            return await self.forward(request, direct, rest[0] if rest else "", on_done)
        except ApiError as exc:
            if exc.code != "sandbox_unreachable":
                raise
        on_done()
        body = json.dumps({"message": f"port {port}: nothing accepts connections on it in the sandbox"}).encode()
        return _port_error(502, "port_closed", body)

    async def _forward_small(
        self, method: str, target: Target, path: str, headers: list[tuple[bytes, bytes]], body: bytes,
        on_done: Callable[[], None],
    ) -> Response:
        """The common case (a request whose body is in memory) over a kept-alive HTTP/1.1 connection of our
        own, spoken with h11: httpx spent ~0.8 ms of CPU per request on its own machinery, more than the
        whole runtime server takes to answer ``echo``. The answer streams back like httpx's would."""
        ep = target.endpoint
        address = ep.uds or ep.url
        pools = self._idle.setdefault(target.sandbox_id, {})
        head = [*headers, (b"host", b"sandbox")]
        for attempt in (0, 1):
            idle = pools.get(address) if attempt == 0 else None
            reused = bool(idle)
            reader, writer = idle.pop() if idle else await self._connect(target)
            conn = h11.Connection(h11.CLIENT)
            received = False
            try:
                data = conn.send(h11.Request(method=method, target=path.encode(), headers=head))
                writer.write(data + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()) if body
                             else data + conn.send(h11.EndOfMessage()))
                await writer.drain()
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        chunk = await reader.read(_READ)
                        received = received or bool(chunk)
                        conn.receive_data(chunk)
                        continue
                    if isinstance(event, h11.InformationalResponse):
                        continue
                    break
            except (OSError, h11.ProtocolError) as exc:
                writer.close()
                # A kept-alive connection the server closed meanwhile: nothing of ours was processed. Its
                # idle siblings are as old: the retry makes a fresh connection, and they go.
                if reused and not received and attempt == 0:
                    for _reader, stale in pools.pop(address, []):
                        stale.close()
                    continue
                raise ApiError(
                    "sandbox_unreachable", f"sandbox {target.sandbox_id}: its runtime server did not answer ({exc!r})"
                ) from None
            break
        assert isinstance(event, h11.Response)
        status = event.status_code
        out_headers = [(k, v) for k, v in event.headers if k.decode("latin-1") not in _DROP_RESPONSE]

        async def events() -> AsyncIterator[bytes]:
            """The body, then the connection back to the pool if it can carry another request."""
            try:
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await reader.read(_READ))
                    elif isinstance(ev, h11.Data):
                        yield bytes(ev.data)
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                    else:
                        raise h11.RemoteProtocolError("connection closed mid-answer")
            except BaseException:
                writer.close()
                raise
            idle = self._idle.setdefault(target.sandbox_id, {}).setdefault(address, [])
            if (conn.our_state is h11.DONE and conn.their_state is h11.DONE and not conn.trailing_data[0]
                    and len(idle) < _IDLE_PER_SANDBOX):
                idle.append((reader, writer))
            else:
                writer.close()

        size = dict(event.headers).get(b"content-length", b"")
        if size.isdigit() and int(size) <= _SMALL_BODY:
            try:
                content = b"".join([chunk async for chunk in events()])
            except (OSError, h11.ProtocolError) as exc:
                raise ApiError("sandbox_unreachable",
                               f"sandbox {target.sandbox_id}: its runtime server broke off ({exc!r})") from None
            finally:
                on_done()
            code = dict(event.headers).get(PORT_ERROR_HEADER.encode())
            if code is not None:
                return _port_error(status, code.decode(), content)
            response = Response(content, status_code=status)
            response.raw_headers = out_headers
            return response

        done = False

        def finish() -> None:
            nonlocal done
            if not done:
                done = True
                on_done()

        async def relay() -> AsyncIterator[bytes]:
            try:
                with contextlib.suppress(OSError, h11.ProtocolError):  # cut: the client sees the body end
                    async for chunk in events():
                        yield chunk
            finally:
                finish()

        response = StreamingResponse(relay(), status_code=status, background=BackgroundTask(finish))
        response.raw_headers = out_headers
        return response

    async def _connect(self, target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ep = target.endpoint
        try:
            if ep.uds is not None:
                return await asyncio.open_unix_connection(ep.uds)
            url = urlsplit(ep.url)
            reader, writer = await asyncio.wait_for(asyncio.open_connection(url.hostname, url.port or 80), 10)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ApiError(
                "sandbox_unreachable", f"sandbox {target.sandbox_id}: its runtime server did not answer ({exc!r})"
            ) from None
        sock = writer.get_extra_info("socket")
        if sock is not None:  # else Nagle and delayed ACK hold a write for ~40 ms
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def forward_websocket(self, websocket: WebSocket, target: Target, path: str) -> None:
        """Relay a WebSocket to ``path`` on the target's server, both ways, until either side closes."""
        from websockets.asyncio.client import connect, unix_connect
        from websockets.exceptions import InvalidHandshake

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
        await _relay_websocket(websocket, upstream)

    async def forward_port_websocket(self, websocket: WebSocket, target: Target, port: int, path: str) -> None:
        """Relay a WebSocket to ``ws://127.0.0.1:{port}/{path}`` inside the sandbox.

        The runtime server has no WebSocket of its own to offer: it pipes bytes (``POST /tunnel/{port}``,
        a chunked request and response that stay open). The upgrade to the application is made over that
        pipe by a WebSocket client of the service's own, through a socket pair (one end is the client's
        socket, the other is pumped to and from the tunnel), and the messages are relayed as for the
        runtime server's WebSockets. A port nothing listens on, or one that refuses the upgrade, is
        answered with the service's usual JSON error (a 502) when the server can send one before the
        handshake, and a 1011 close otherwise."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake, InvalidStatus

        if target.direct_ports:
            await self._direct_websocket(websocket, target, port, path)
            return
        try:
            tunnel = await _Tunnel.open(target, port)
        except _PortRefused as exc:
            await _deny(websocket, exc.status, exc.code, exc.message)
            return
        except (OSError, h11.ProtocolError) as exc:
            await _deny(websocket, 502, "sandbox_unreachable",
                        f"sandbox {target.sandbox_id}: its runtime server did not answer ({exc!r})")
            return
        ours, theirs = socket.socketpair()
        pumps = tunnel.pump(theirs)
        try:
            url = f"ws://127.0.0.1:{port}/{path.lstrip('/')}"
            if websocket.url.query:
                url += "?" + websocket.url.query
            headers = [(k, v) for k, v in websocket.headers.items() if k.lower() not in _DROP_WEBSOCKET]
            try:
                upstream = await connect(
                    url, sock=ours, additional_headers=headers, max_size=None, open_timeout=10,
                    subprotocols=websocket.scope.get("subprotocols") or None,
                )
            except InvalidStatus as exc:
                status = exc.response.status_code
                await _deny(websocket, 502, "port_bad_response",
                            f"port {port}: the application refused the WebSocket upgrade (HTTP {status})")
                return
            except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
                await _deny(websocket, 502, "port_bad_response",
                            f"port {port}: no WebSocket handshake ({type(exc).__name__}: {exc})")
                return
            await _relay_websocket(websocket, upstream)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            ours.close()
            theirs.close()
            await tunnel.close()


    async def _direct_websocket(self, websocket: WebSocket, target: Target, port: int, path: str) -> None:
        """A WebSocket to a port of a sandbox without agentbox's port forward (see :meth:`_forward_direct`)."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake, InvalidStatus

        base = _port_endpoint(target, port).url.replace("http://", "ws://", 1)
        url = f"{base}/{path.lstrip('/')}" + (f"?{websocket.url.query}" if websocket.url.query else "")
        headers = [(k, v) for k, v in websocket.headers.items() if k.lower() not in _DROP_WEBSOCKET]
        try:
            upstream = await connect(url, additional_headers=headers, max_size=None, open_timeout=10,
                                     subprotocols=websocket.scope.get("subprotocols") or None)
        except InvalidStatus as exc:
            status = exc.response.status_code
            await _deny(websocket, 502, "port_bad_response",
                        f"port {port}: the application refused the WebSocket upgrade (HTTP {status})")
            return
        except OSError as exc:
            await _deny(websocket, 502, "port_closed",
                        f"port {port}: nothing accepts connections on it in the sandbox ({exc.strerror or exc})")
            return
        except (InvalidHandshake, asyncio.TimeoutError) as exc:
            await _deny(websocket, 502, "port_bad_response",
                        f"port {port}: no WebSocket handshake ({type(exc).__name__}: {exc})")
            return
        await _relay_websocket(websocket, upstream)


def _port_endpoint(target: Target, port: int) -> Endpoint:
    """``port`` at the address the target's own server is reached on (a network address: see
    ``Target.direct_ports``)."""
    host = urlsplit(target.endpoint.url).hostname or ""
    return Endpoint(f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}", "network")


# The client's handshake headers are the service's business; the rest (cookies, origin...) go on.
_DROP_WEBSOCKET = _DROP_REQUEST | {
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol",
    "content-length",
}


def _port_error(status: int, code: str, body: bytes) -> Response:
    """The runtime server's own refusal on a port route, as the service's error (same status)."""
    try:
        message = str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace")[:500]
    detail = ErrorResponse(error=ErrorDetail(code=code, message=message))
    return json_response(detail, status_code=status)


async def _deny(websocket: WebSocket, status: int, code: str, message: str) -> None:
    """Refuse a WebSocket before accepting it: an HTTP error answer where the server can send one."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        detail = ErrorResponse(error=ErrorDetail(code=code, message=message))
        await websocket.send_denial_response(json_response(detail, status_code=status))
    else:
        await websocket.close(code=1011, reason=f"{code}: {message}"[:120])


class _PortRefused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Tunnel:
    """A ``POST /tunnel/{port}`` exchange with a runtime server, kept open as a byte pipe."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: h11.Connection) -> None:
        self._reader, self._writer, self._conn = reader, writer, conn

    @classmethod
    async def open(cls, target: Target, port: int) -> _Tunnel:
        """Open the pipe; :class:`_PortRefused` if the runtime server refused (its code and message)."""
        ep = target.endpoint
        if ep.uds is not None:
            reader, writer = await asyncio.open_unix_connection(ep.uds)
        else:
            url = urlsplit(ep.url)
            reader, writer = await asyncio.open_connection(url.hostname, url.port or 80)
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tunnel = cls(reader, writer, h11.Connection(h11.CLIENT))
        try:
            head = [("host", "sandbox"), (API_KEY_HEADER, target.key), ("transfer-encoding", "chunked")]
            where = f"{urlsplit(ep.url).path.rstrip('/')}/tunnel/{port}"  # under the endpoint's own path
            writer.write(tunnel._conn.send(h11.Request(method="POST", target=where, headers=head)))
            await writer.drain()
            event = await tunnel._next()
            if not isinstance(event, h11.Response):
                raise _PortRefused(502, "sandbox_unreachable", "the runtime server closed the tunnel")
            if event.status_code != 200:
                body = b""
                while isinstance(chunk := await tunnel._next(), h11.Data):
                    body += chunk.data
                code = dict(event.headers).get(PORT_ERROR_HEADER.encode(), b"sandbox_unreachable").decode()
                refusal = _port_error(event.status_code, code, body)
                raise _PortRefused(event.status_code, code, json.loads(refusal.body)["error"]["message"])
        except BaseException:
            await tunnel.close()
            raise
        return tunnel

    async def _next(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                self._conn.receive_data(await self._reader.read(_READ))
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            return event  # type: ignore[return-value]

    def pump(self, sock: socket.socket) -> list[asyncio.Task[None]]:
        """Tasks carrying bytes between ``sock`` and the pipe, both ways, until either side ends."""
        loop = asyncio.get_running_loop()
        sock.setblocking(False)

        async def out() -> None:
            with contextlib.suppress(OSError, h11.ProtocolError):
                while data := await loop.sock_recv(sock, _READ):
                    self._writer.write(self._conn.send(h11.Data(data=data)))
                    await self._writer.drain()
                self._writer.write(self._conn.send(h11.EndOfMessage()))
                await self._writer.drain()

        async def back() -> None:
            with contextlib.suppress(OSError, h11.ProtocolError):
                while isinstance(event := await self._next(), h11.Data):
                    await loop.sock_sendall(sock, bytes(event.data))
                sock.shutdown(socket.SHUT_WR)

        return [loop.create_task(out()), loop.create_task(back())]

    async def close(self) -> None:
        """Drop the connection (the runtime server closes its side to the port)."""
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


async def _relay_websocket(websocket: WebSocket, upstream: Any) -> None:
    """Relay messages between the client's WebSocket and an open ``websockets`` client connection, both
    ways, until either side closes (the close code is carried over)."""
    from websockets.exceptions import ConnectionClosed

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
