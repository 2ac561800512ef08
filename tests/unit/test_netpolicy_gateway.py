"""The gateway's proxy in-process, on loopback: one lookup per connection, to the address it checked."""

from __future__ import annotations

import asyncio

from agentbox.netpolicy.gateway import Gateway
from agentbox.netpolicy.rules import Policy


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


def test_dns_rebinding_cannot_move_a_checked_connection() -> None:
    async def scenario() -> tuple[bytes, bytes, list[str]]:
        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.0 200 OK\r\n\r\nupstream")
            await writer.drain()
            writer.close()

        origin = await asyncio.start_server(upstream, "127.0.0.1", 0)
        origin_port = origin.sockets[0].getsockname()[1]
        policy = Policy.from_texts(["rebind.test", f"127.0.0.1/32:{origin_port}"])
        gateway = Gateway(policy, address="127.0.0.1", sandbox="x", server_port=0, host_ports=(), relay_dir="/")
        answers = iter([["127.0.0.1"], ["10.0.0.1"]])  # the second lookup would rebind to a private address
        looked_up: list[str] = []

        async def resolve(name: str, port: int | None) -> list[str]:
            looked_up.append(name)
            return next(answers)

        gateway.resolve = resolve  # type: ignore[method-assign]
        proxy = await asyncio.start_server(gateway.proxy, "127.0.0.1", 0)
        proxy_port = proxy.sockets[0].getsockname()[1]
        target = f"rebind.test:{origin_port}"
        first = await _exchange(proxy_port, f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        second = await _exchange(proxy_port, f"CONNECT rebind.test:{origin_port} HTTP/1.1\r\n\r\n".encode())
        proxy.close()
        origin.close()
        return first, second, looked_up

    first, second, looked_up = asyncio.run(scenario())
    assert first.endswith(b"upstream")  # connected to the address that was checked
    assert looked_up == ["rebind.test", "rebind.test"]  # one lookup per connection, none after the check
    assert b"403" in second and b"10.0.0.1 (private)" in second  # the rebound answer is judged, and refused
