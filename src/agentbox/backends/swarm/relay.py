"""The relay: how a process outside the swarm reaches runtime servers that publish nothing.

Swarm's host-mode publishing binds every address of a node (it cannot bind 127.0.0.1), and the ingress
mesh needs IPVS. So sandboxes publish no port at all. One small container per swarm, on the manager's
engine, publishes one port on one chosen address of the manager (its swarm address by default, or
``swarm_relay_address``), and forwards ``/s/<sandbox-id>/<path>`` to ``agentbox-<sandbox-id>:<port>``
over that sandbox's own overlay network, which the relay joins when the sandbox is created and leaves
when it is removed. Sandboxes cannot reach each other (each has an overlay of its own) nor the relay's
listening socket (it is bound to its bridge address only, before any overlay is joined).

Every request is forwarded on a connection of its own (``Connection: close`` both ways), so a client
never sends a second request down a connection already routed to another path; an ``Upgrade`` is piped
as it is. The relay authenticates nothing: the session key still guards every server, as on one host.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from typing import Any

from agentbox.backends.docker.errors import engine_errors
from agentbox.backends.labels import LABELS
from agentbox.errors import SandboxError

__all__ = ["RELAY_NAME", "RELAY_PORT", "ROLE_RELAY", "Relay", "sandbox_path"]

RELAY_NAME = "agentbox-relay"
ROLE_RELAY = "relay"
#: Port the relay listens on inside its container.
RELAY_PORT = 49980

#: Runs in the runtime image's python3 (stdlib only). argv: none. Routes by the first path segments.
SCRIPT = r"""
import asyncio, re, socket
ROUTE = re.compile(rb"^([A-Z]+) /s/([0-9a-zA-Z_-]+)/(\d+)(/[^ ]*)? (HTTP/1\.[01])\r\n")
async def pipe(r, w):
    try:
        while True:
            data = await r.read(65536)
            if not data:
                break
            w.write(data)
            await w.drain()
    except Exception:
        pass
    finally:
        try:
            w.close()
        except Exception:
            pass
def close_header(head):
    lines = [l for l in head.split(b"\r\n") if not l.lower().startswith(b"connection:")]
    return b"\r\n".join(lines[:1] + [b"Connection: close"] + lines[1:])
async def handle(cr, cw):
    try:
        head = await cr.readuntil(b"\r\n\r\n")
        m = ROUTE.match(head)
        if not m:
            cw.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await cw.drain(); cw.close(); return
        method, sid, port, path, version = m.groups()
        rest = head[m.end():]
        upgrade = b"\r\nupgrade:" in head.lower()
        first = b"%s %s %s\r\n" % (method, path or b"/", version)
        head = first + rest
        if not upgrade:
            head = close_header(head[:-4]) + b"\r\n\r\n"
        # A task that just started is known to this node's DNS only once the swarm's gossip brings it.
        for attempt in range(50):
            try:
                ur, uw = await asyncio.open_connection("agentbox-" + sid.decode(), int(port))
                break
            except OSError:
                if attempt == 49:
                    cw.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    await cw.drain(); cw.close(); return
                await asyncio.sleep(0.1)
        uw.write(head)
        await uw.drain()
        upstream = asyncio.ensure_future(pipe(cr, uw))  # the body may follow the head: send it meanwhile
        if not upgrade:
            rhead = await ur.readuntil(b"\r\n\r\n")
            cw.write(close_header(rhead[:-4]) + b"\r\n\r\n")
            await cw.drain()
        await asyncio.gather(upstream, pipe(ur, cw))
    except Exception:
        try:
            cw.close()
        except Exception:
            pass
async def main():
    # The bridge address only: overlays joined later (one per sandbox) get no listener.
    here = socket.gethostbyname(socket.gethostname())
    server = await asyncio.start_server(handle, here, PORT, limit=1 << 20)
    print("relay listening on", here, flush=True)
    await server.serve_forever()
asyncio.run(main())
""".replace("PORT", str(RELAY_PORT))


#: The relay's script version: a relay running an older script is replaced by the next create.
VERSION = hashlib.sha256(SCRIPT.encode()).hexdigest()[:12]
VERSION_LABEL = "agentbox.relay-version"


def sandbox_path(sandbox_id: str, port: int) -> str:
    """The relay path prefix of a sandbox's server."""
    return f"/s/{sandbox_id}/{port}"


class Relay:
    """The one relay container on the manager's engine (found by label, made on first use)."""

    def __init__(self, api: Any, address: str) -> None:
        self.api = api
        self.address = address
        self._url: str | None = None

    def _find(self) -> dict[str, Any] | None:
        found = self.api.containers(
            all=True, filters={"label": [f"{LABELS.ROLE}={ROLE_RELAY}", f"{LABELS.MANAGED}=1"]}
        )
        return found[0] if found else None

    def url(self, image: str | None = None) -> str:
        """``http://ADDRESS:PORT`` of the running relay; made (from ``image``) when there is none."""
        if self._url is not None:
            return self._url
        found = self._find()
        stale = found is not None and (found.get("Labels") or {}).get(VERSION_LABEL) != VERSION
        if found is not None and (found.get("State") != "running" or (stale and image is not None)):
            with contextlib.suppress(Exception):
                self.api.remove_container(found["Id"], force=True)
            found = None
        if found is None:
            if image is None:
                raise SandboxError("the swarm's relay is not running; create a sandbox to start it again")
            found = self._make(image)
        for port in found.get("Ports") or []:
            if port.get("PrivatePort") == RELAY_PORT and port.get("PublicPort"):
                self._url = f"http://{port.get('IP') or self.address}:{port['PublicPort']}"
                return self._url
        raise SandboxError(f"the swarm's relay container publishes no port: {found.get('Ports')}")

    def _make(self, image: str) -> dict[str, Any]:
        from docker.errors import APIError

        with engine_errors("starting the swarm relay on the manager"):
            host_config = self.api.create_host_config(
                port_bindings={RELAY_PORT: (self.address, None)}, init=True,
                restart_policy={"Name": "unless-stopped"}, cap_drop=["ALL"],
            )
            try:
                created = self.api.create_container(
                    image, name=RELAY_NAME, entrypoint=["python3", "-u", "-c", SCRIPT], command=[],
                    user="nobody", working_dir="/tmp", host_config=host_config, ports=[RELAY_PORT],
                    labels={LABELS.MANAGED: "1", LABELS.ROLE: ROLE_RELAY, VERSION_LABEL: VERSION},
                )
                self.api.start(created["Id"])
            except APIError as exc:
                if exc.status_code != 409:  # another process made it meanwhile: use theirs
                    raise
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = self._find()
            if found and found.get("State") == "running" and any(p.get("PublicPort") for p in found.get("Ports") or []):
                logs = bytes(self.api.logs(found["Id"]))
                if b"relay listening" in logs:
                    return found
            time.sleep(0.05)
        raise SandboxError("the swarm relay did not start on the manager in 30 s")

    def container_id(self) -> str | None:
        found = self._find()
        return str(found["Id"]) if found else None

    def join(self, network: str) -> None:
        """Join a sandbox's overlay (attachable) so the relay resolves and reaches it by name."""
        cid = self.container_id()
        if cid is None:
            raise SandboxError("the swarm relay is gone")
        with engine_errors(f"connecting the relay to network {network}"):
            self.api.connect_container_to_network(cid, network)

    def leave(self, network: str) -> None:
        cid = self.container_id()
        if cid is not None:
            with contextlib.suppress(Exception):
                self.api.disconnect_container_from_network(cid, network, force=True)
