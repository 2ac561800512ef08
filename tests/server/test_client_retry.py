"""A kept-alive connection the server closed while it was idle: idempotent calls go again once, others do not.

A scripted socket server answers the first request on a connection, then closes that connection when the
second request arrives without answering it: exactly the race of a server closing an idle keep-alive
connection while the client sends on it (and what the runtime server does after a 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from agentbox.client import AsyncRuntimeClient, RuntimeClient
from agentbox.errors import SandboxError

_ALIVE = b'{"status":"ok"}'
_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(_ALIVE), _ALIVE)


@dataclass
class Scripted:
    url: str
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next((int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length")), 0)
    while len(body) < length:
        body += conn.recv(65536)
    return lines[0]


@contextlib.contextmanager
def scripted_server(answer_all_later: bool = True) -> Iterator[Scripted]:
    """First connection: answer one request, drop the next one unanswered. Later connections: answer all
    (or, without ``answer_all_later``, drop their first request too)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    state = Scripted(f"http://127.0.0.1:{listener.getsockname()[1]}")

    def serve() -> None:
        with contextlib.suppress(OSError):  # the listener closed: the test is over
            while True:
                conn, _ = listener.accept()
                state.connections += 1
                with conn:
                    answered = 0
                    while line := _read_request(conn):
                        state.requests.append(line)
                        stale = state.connections == 1 and answered == 1
                        if stale or (state.connections > 1 and not answer_all_later and answered == 0):
                            break  # close without answering
                        conn.sendall(_ANSWER)
                        answered += 1

    server = threading.Thread(target=serve)
    server.start()
    try:
        yield state
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        server.join()


def test_idempotent_call_is_sent_again_on_a_fresh_connection() -> None:
    with scripted_server() as srv, RuntimeClient(srv.url, "k") as client:
        assert client.alive().status == "ok"
        assert client.alive().status == "ok"  # first try dropped on the kept-alive connection, then retried
        assert srv.requests == [b"GET /alive HTTP/1.1"] * 3
    assert srv.connections == 2


def test_async_idempotent_call_is_sent_again_on_a_fresh_connection() -> None:
    async def main(url: str) -> None:
        async with AsyncRuntimeClient(url, "k") as client:
            await client.alive()
            await client.alive()

    with scripted_server() as srv:
        asyncio.run(main(srv.url))
        assert srv.requests == [b"GET /alive HTTP/1.1"] * 3
    assert srv.connections == 2


def test_non_idempotent_call_is_not_sent_twice() -> None:
    with scripted_server() as srv, RuntimeClient(srv.url, "k") as client:
        client.alive()
        with pytest.raises(SandboxError, match="lost the connection") as info:
            client.run("echo once")  # the command may have run: never repeat it behind the caller's back
        assert info.value.__cause__ is not None
        assert srv.requests == [b"GET /alive HTTP/1.1", b"POST /sessions/default/run HTTP/1.1"]
    assert srv.connections == 1


def test_failure_on_a_fresh_connection_is_not_retried() -> None:
    # Only a kept-alive connection can have gone stale; a new connection failing is a real failure.
    with scripted_server(answer_all_later=False) as srv, RuntimeClient(srv.url, "k") as client:
        client.alive()
        with pytest.raises(SandboxError, match="lost the connection"):
            client.alive()  # stale kept-alive connection: retried once, on a new one that fails too
        assert srv.requests == [b"GET /alive HTTP/1.1"] * 3
    assert srv.connections == 2
