"""Streamed responses that watch for the client's disconnect with asyncio itself, not anyio.

Starlette's ``StreamingResponse``, on a server speaking ASGI < 2.4 (uvicorn says 2.3), runs the body and a
disconnect listener in an anyio task group. anyio loads its asyncio backend on first use: 20 ms on an idle
machine, 100-250 ms on a loaded one, paid by the first stream of every new sandbox (an ``echo`` streamed
first took 40 times as long as the next one). The same two tasks in plain asyncio cost nothing extra,
and importing that backend at startup instead would only move the cost onto create -> first output.
"""

from __future__ import annotations

import asyncio

from starlette import responses
from starlette.types import Receive, Scope, Send

__all__ = ["StreamingResponse"]


class StreamingResponse(responses.StreamingResponse):
    """Starlette's streamed response; the body stops when the client goes away, as there."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the body while listening for ``http.disconnect``; whichever ends first ends the other."""
        body = asyncio.ensure_future(self.stream_response(send))
        gone = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait((body, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (body, gone):
                task.cancel()
            await asyncio.gather(body, gone, return_exceptions=True)
        if not body.cancelled() and body.exception() is not None:
            raise body.exception()  # type: ignore[misc]
        if self.background is not None:
            await self.background()
