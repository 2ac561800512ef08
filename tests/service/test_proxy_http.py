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
