"""``python -m agentbox.netpolicy.hostrelay``: host ports for one sandbox (runs in a container in the
host's network namespace).

For each listed port it listens on ``<relay dir>/<port>.sock`` (a volume shared with the sandbox's
egress gateway only) and relays each connection to ``127.0.0.1:<port>`` -- so a host service that
listens on loopback only is reachable, and no TCP port is opened anywhere: only the gateway, which
mounts the volume, can connect, and only to the listed ports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
from collections.abc import Sequence

from agentbox.netpolicy.gateway import log, splice

__all__ = ["READY", "main"]

READY = "agentbox-hostrelay ready"


async def _relay(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    for host in ("127.0.0.1", "::1"):
        try:
            upstream = await asyncio.open_connection(host, port)
        except OSError:
            continue
        await splice((reader, writer), upstream)
        return
    log(f"host port {port}: nothing listens on the host's loopback")
    writer.close()


async def serve(ports: Sequence[int], directory: str) -> None:
    """Listen on one Unix socket per port until killed."""
    servers = []
    for port in ports:
        path = os.path.join(directory, f"{port}.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a socket left by an earlier run of this container
        servers.append(await asyncio.start_unix_server(functools.partial(_relay, port), path))
    print(READY, flush=True)
    await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(prog="agentbox-hostrelay")
    parser.add_argument("--port", type=int, action="append", default=[], help="a host port to relay")
    parser.add_argument("--relay-dir", default="/relay")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.relay_dir))


if __name__ == "__main__":
    main()
