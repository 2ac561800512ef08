"""HTTP forwarding of the runtime proxy against a real upstream app that reports what it received."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator

import httpx
from asgi_servers import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agentbox.backends.base import Endpoint
from agentbox.protocol import API_KEY_HEADER
from agentbox.service.proxy import RuntimeProxy
from agentbox.service.sandboxes import Target

KEY = "upstream-key"


async def _report(request: Request) -> Response:
    body = await request.body()
    if request.url.path == "/gz":
        return Response(gzip.compress(b"zipped" * 10), headers={"content-encoding": "gzip"})
    return JSONResponse(
        {"method": request.method, "path": request.url.path, "query": request.url.query,
         "headers": {k: v for k, v in request.headers.items()}, "body": body.decode()}
    )


@contextlib.asynccontextmanager
async def proxied() -> AsyncIterator[str]:
    up_server, up_task, up_port = await serve(Starlette(routes=[Route("/{p:path}", _report, methods=["GET", "POST"])]))
    proxy = RuntimeProxy()
    target = Target("sb1", Endpoint(f"http://127.0.0.1:{up_port}", "published"), KEY)

    async def forward(request: Request) -> Response:
        return await proxy.forward(request, target, request.path_params["path"])

    server, task, port = await serve(Starlette(routes=[Route("/p/{path:path}", forward, methods=["GET", "POST"])]))
    try:
        yield f"http://127.0.0.1:{port}/p"
    finally:
        await proxy.aclose()
        for s, t in ((server, task), (up_server, up_task)):
            s.should_exit = True
            await t


def test_requests_arrive_as_sent_with_the_key_instead_of_the_token() -> None:
    async def scenario() -> None:
        async with proxied() as url, httpx.AsyncClient(headers={"Authorization": "Bearer t"}) as client:
            got = (await client.get(url + "/a/b", params={"x": "1"})).json()
            assert (got["method"], got["path"], got["query"], got["body"]) == ("GET", "/a/b", "x=1", "")
            headers = got["headers"]
            assert headers[API_KEY_HEADER.lower()] == KEY and "authorization" not in headers
            # A request without a body is not turned into a chunked upload.
            assert "transfer-encoding" not in headers
            got = (await client.post(url + "/run", json={"command": "echo"})).json()
            assert json.loads(got["body"]) == {"command": "echo"}
            assert got["headers"]["content-length"] == str(len(got["body"]))
            # A client cannot smuggle its own session key past the proxy.
            got = (await client.get(url + "/k", headers={API_KEY_HEADER: "forged"})).json()
            assert got["headers"][API_KEY_HEADER.lower()] == KEY
            # Encoded bodies pass through still encoded, with their own length.
            r = await client.get(url + "/gz")
            assert r.headers["content-encoding"] == "gzip" and r.content == b"zipped" * 10

    asyncio.run(scenario())


def test_kept_alive_connections_are_reused_and_a_stale_one_is_replaced() -> None:
    """The upstream answers one request per connection, then closes it without saying so (as a server
    whose keep-alive timeout just ran out does): the next request finds the pooled connection dead and
    must go out again on a new one, unseen by the client. Requests on a live connection reuse it."""
    connections: list[int] = []

    async def one_shot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer.get_extra_info("peername")[1])
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"n": %d}' % len(connections)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(body), body))
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        upstream = await asyncio.start_server(one_shot, "127.0.0.1", 0)
        port = upstream.sockets[0].getsockname()[1]
        proxy = RuntimeProxy()
        target = Target("sb1", Endpoint(f"http://127.0.0.1:{port}", "published"), KEY)

        async def forward(request: Request) -> Response:
            return await proxy.forward(request, target, request.path_params["path"])

        server, task, proxy_port = await serve(Starlette(routes=[Route("/p/{path:path}", forward)]))
        try:
            async with httpx.AsyncClient() as client:
                for n in (1, 2, 3):
                    r = await client.get(f"http://127.0.0.1:{proxy_port}/p/x")
                    assert r.status_code == 200 and r.json() == {"n": n}, r.text
            assert len(connections) == 3
        finally:
            await proxy.aclose()
            server.should_exit = True
            await task
            upstream.close()
            await upstream.wait_closed()

    asyncio.run(scenario())


def test_connections_are_kept_alive() -> None:
    ports: list[int] = []

    async def peer(request: Request) -> Response:
        client = request.client
        ports.append(client.port if client else 0)
        return Response(b"ok")

    async def scenario() -> None:
        up_server, up_task, up_port = await serve(Starlette(routes=[Route("/{p:path}", peer)]))
        proxy = RuntimeProxy()
        target = Target("sb1", Endpoint(f"http://127.0.0.1:{up_port}", "published"), KEY)

        async def forward(request: Request) -> Response:
            return await proxy.forward(request, target, request.path_params["path"])

        server, task, port = await serve(Starlette(routes=[Route("/p/{path:path}", forward)]))
        try:
            async with httpx.AsyncClient() as client:
                for _ in range(3):
                    assert (await client.get(f"http://127.0.0.1:{port}/p/x")).text == "ok"
            assert len(ports) == 3 and len(set(ports)) == 1  # one connection carried all three
        finally:
            await proxy.aclose()
            for s, t in ((server, task), (up_server, up_task)):
                s.should_exit = True
                await t

    asyncio.run(scenario())
