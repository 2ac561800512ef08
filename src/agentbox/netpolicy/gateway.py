"""``python -m agentbox.netpolicy.gateway``: the egress gateway of one sandbox (runs in its own container).

The sandbox sits alone with this gateway on an internal network whose bridge has no host address
(``inhibit_ipv4``). The gateway takes the network's gateway address itself (an alias on its interface),
so every packet the sandbox sends off its subnet arrives here, where it is not forwarded
(a routing rule prohibits it): the kernel answers ICMP "administratively prohibited" at once -- a
refusal within milliseconds, never a silent drop. On that address the gateway serves:

* an HTTP proxy (``:3128``; the sandbox's ``HTTP(S)_PROXY``): ``CONNECT host:port`` and absolute-URI
  requests. It checks the target against the allow-list, resolves names itself, judges every address,
  and connects to the one it checked (no second lookup, so no rebinding window). A TLS ClientHello
  whose SNI differs from the CONNECT host, and an HTTP Host header that differs from the request
  target, are refused.
* DNS (``:53``, the sandbox's resolver): listed names get their checked addresses, everything else
  REFUSED.
* host ports (``:PORT``, ``host.docker.internal``): relayed to the host relay's Unix socket for PORT.

On its other side it relays the runtime server's port to the sandbox (agentbox reaches the server
through the gateway's published port: the host has no address on the sandbox's network). Every refusal
is logged on stdout (``docker logs``) with its reason.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import fcntl
import functools
import ipaddress
import os
import socket
import struct
import sys
from collections.abc import Sequence
from typing import Any

from agentbox.netpolicy.rules import Decision, Policy

__all__ = ["READY", "main", "parse_sni"]

READY = "agentbox-egress ready"
PROXY_PORT = 3128
HEAD_LIMIT = 64 * 1024
CHUNK = 64 * 1024
CONNECT_TIMEOUT = 10.0
RESOLVE_TIMEOUT = 5.0
HEAD_TIMEOUT = 60.0

SIOCGIFCONF, SIOCSIFADDR, SIOCSIFNETMASK = 0x8912, 0x8916, 0x891C


def log(message: str) -> None:
    """One line on stdout, which is the gateway's ``docker logs``."""
    print(f"egress: {message}", flush=True)


# -- the gateway address --------------------------------------------------------------------------------


def _ifaddrs() -> list[tuple[str, str]]:
    """(interface, IPv4 address) pairs of this network namespace (SIOCGIFCONF: no iproute2 needed)."""
    size = 40 * 128
    names = array.array("B", bytes(size))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        out = fcntl.ioctl(s.fileno(), SIOCGIFCONF, struct.pack("iL", size, names.buffer_info()[0]))
    length = struct.unpack("iL", out)[0]
    raw = names.tobytes()[:length]
    return [
        (raw[i : i + 16].split(b"\0", 1)[0].decode(), socket.inet_ntoa(raw[i + 20 : i + 24]))
        for i in range(0, length, 40)
    ]


def claim(gateway: str, subnet: str) -> str:
    """Add ``gateway`` as an alias of the interface on ``subnet``; returns that interface."""
    net = ipaddress.ip_network(subnet)
    for name, ip in _ifaddrs():
        if ipaddress.ip_address(ip) in net and ":" not in name:
            alias = f"{name}:gw"
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for request, address in ((SIOCSIFADDR, gateway), (SIOCSIFNETMASK, str(net.netmask))):
                    sockaddr = struct.pack("HH4s8x", socket.AF_INET, 0, socket.inet_aton(address))
                    fcntl.ioctl(s.fileno(), request, struct.pack("16s", alias.encode()) + sockaddr)
            return name
    raise SystemExit(f"agentbox-egress: no interface on {subnet}")


def refuse_forwarding() -> None:
    """``ip rule add not iif lo prohibit``: a packet that arrives from outside for an address that is not
    this gateway's is answered at once with ICMP "administratively prohibited" (with forwarding on, the
    kernel replies; with it off, it would drop silently and the sender would hang). The gateway's own
    connections (from lo's point of view, locally generated) are routed as usual."""
    rule = struct.pack("BBBBBBBBI", socket.AF_INET, 0, 0, 0, 0, 0, 0, FR_ACT_PROHIBIT, FIB_RULE_INVERT)
    attrs = _nlattr(FRA_IIFNAME, b"lo\0") + _nlattr(FRA_PRIORITY, struct.pack("I", 100))
    body = rule + attrs
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    message = struct.pack("IHHII", 16 + len(body), RTM_NEWRULE, flags, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        nl.sendto(message, (0, 0))
        reply = nl.recv(4096)
    error = struct.unpack("i", reply[16:20])[0]
    if error:
        raise SystemExit(f"agentbox-egress: adding the refusal rule failed: {os.strerror(-error)}")


def _nlattr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


RTM_NEWRULE, FRA_IIFNAME, FRA_PRIORITY = 32, 3, 6
FR_ACT_PROHIBIT, FIB_RULE_INVERT = 8, 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 1, 4, 0x200, 0x400


# -- relaying -------------------------------------------------------------------------------------------


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter], b: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> None:
    """Copy both ways until both directions end, then close both."""
    try:
        await asyncio.gather(_pump(a[0], b[1]), _pump(b[0], a[1]))
    finally:
        for _, writer in (a, b):
            writer.close()


# -- TLS --------------------------------------------------------------------------------------------------


def tls_record_length(head: bytes) -> int | None:
    """Bytes in the first TLS handshake record (None: not a TLS handshake)."""
    if len(head) < 5 or head[0] != 0x16 or head[1] != 0x03:
        return None
    return 5 + int.from_bytes(head[3:5], "big")


def parse_sni(record: bytes) -> str | None:
    """The server name of a TLS ClientHello record (None: none given, or not a ClientHello)."""
    try:
        if record[5] != 0x01:
            return None
        pos = 5 + 4 + 2 + 32
        pos += 1 + record[pos]
        pos += 2 + int.from_bytes(record[pos : pos + 2], "big")
        pos += 1 + record[pos]
        end = pos + 2 + int.from_bytes(record[pos : pos + 2], "big")
        pos += 2
        while pos + 4 <= end:
            kind = int.from_bytes(record[pos : pos + 2], "big")
            size = int.from_bytes(record[pos + 2 : pos + 4], "big")
            if kind == 0:
                body = record[pos + 4 : pos + 4 + size]
                if body[2] == 0:
                    length = int.from_bytes(body[3:5], "big")
                    return body[5 : 5 + length].decode("ascii").lower().rstrip(".")
            pos += 4 + size
    except (IndexError, UnicodeDecodeError):
        return None
    return None


# -- the gateway ------------------------------------------------------------------------------------------


class Gateway:
    """The servers of one gateway, sharing one policy."""

    def __init__(self, policy: Policy, *, address: str, sandbox: str, server_port: int, host_ports: Sequence[int],
                 relay_dir: str) -> None:
        self.policy = policy
        self.address = address
        self.sandbox = sandbox
        self.server_port = server_port
        self.host_ports = tuple(host_ports)
        self.relay_dir = relay_dir
        self._sandbox_ip: str | None = None

    # resolving and connecting, always to a checked address

    async def resolve(self, name: str, port: int | None) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(name, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT
            )
        except (OSError, asyncio.TimeoutError):
            return []
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def decide(self, host: str, port: int) -> Decision:
        decision = self.policy.check_target(host, port)
        if decision is not None:
            return decision
        return self.policy.choose(host, port, await self.resolve(host, port))

    # the HTTP proxy

    async def proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            writer.close()
            return
        try:
            await self._proxy(head, reader, writer)
        except (ConnectionError, OSError) as exc:
            log(f"connection from {peer[0] if peer else '?'} ended: {exc}")
            writer.close()

    async def _refuse(
        self, writer: asyncio.StreamWriter, what: str, reason: str, status: str = "403 Forbidden"
    ) -> None:
        log(f"refused {what}: {reason}")
        body = f"agentbox egress policy refused {what}: {reason}\n".encode()
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"X-Agentbox-Egress: refused\r\nConnection: close\r\n\r\n".encode() + body
        )
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()
        writer.close()

    async def _proxy(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            await self._refuse(writer, "a request", "malformed request line", "400 Bad Request")
            return
        method, target, version = parts
        if method.upper() == "CONNECT":
            host, port = _split_hostport(target, None)
            if host is None or port is None:
                await self._refuse(writer, f"CONNECT {target}", "expected host:port", "400 Bad Request")
                return
            await self._connect(host, port, reader, writer)
            return
        if not target.lower().startswith("http://"):
            why = "https:// URLs go through CONNECT" if target.lower().startswith("https://") else (
                "this is a forward proxy: send an absolute http:// URL")
            await self._refuse(writer, f"{method} {target}", why, "400 Bad Request")
            return
        rest = target[len("http://"):]
        authority, _, path = rest.partition("/")
        authority = authority.rpartition("@")[2]
        host, port = _split_hostport(authority, 80)
        if host is None or port is None:
            await self._refuse(writer, f"{method} {target}", "no host in the URL", "400 Bad Request")
            return
        headers = [line for line in lines[1:] if line]
        host_header = next((h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("host:")), None)
        if host_header is not None:
            named, _ = _split_hostport(host_header, port)
            if (named or "").lower().rstrip(".") != host.lower().rstrip("."):
                why = f"Host header {host_header!r} differs from the URL's host"
                await self._refuse(writer, f"{method} {target}", why)
                return
        decision = await self.decide(host, port)
        if not decision.allowed:
            await self._refuse(writer, f"{method} http://{authority}", decision.reason)
            return
        upstream = await self._open(decision, host, port, writer)
        if upstream is None:
            return
        kept = [h for h in headers if not h.lower().startswith(("proxy-", "connection:", "keep-alive:"))]
        upstream[1].write(
            (f"{method} /{path} {version}\r\n" + "".join(f"{h}\r\n" for h in kept) + "Connection: close\r\n\r\n")
            .encode("latin-1")
        )
        log(f"allowed {method} http://{authority}/ -> {decision.address}:{port} ({decision.reason})")
        await splice((reader, writer), upstream)

    async def _open(
        self, decision: Decision, host: str, port: int, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        assert decision.address is not None
        try:
            return await asyncio.wait_for(asyncio.open_connection(decision.address, port), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            why = f"{decision.address}:{port} did not accept ({exc or 'timeout'})"
            await self._refuse(writer, f"{host}:{port}", why, "502 Bad Gateway")
            return None

    async def _connect(self, host: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decision = await self.decide(host, port)
        if not decision.allowed:
            await self._refuse(writer, f"CONNECT {host}:{port}", decision.reason)
            return
        upstream = await self._open(decision, host, port, writer)
        if upstream is None:
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        first = await reader.read(CHUNK)
        length = tls_record_length(first)
        if length is not None:
            while len(first) < min(length, 16 * 1024 + 5):
                more = await reader.read(CHUNK)
                if not more:
                    break
                first += more
            sni = parse_sni(first)
            # A name was checked: the TLS session must be for that name. (A listed literal address
            # was checked as an address: any server name on it is the address owner's business.)
            if sni is not None and not _is_literal(host) and sni != host.lower().rstrip("."):
                log(f"refused CONNECT {host}:{port}: TLS server name {sni!r} differs from the CONNECT host")
                writer.close()
                upstream[1].close()
                return
        log(f"allowed CONNECT {host}:{port} -> {decision.address}:{port} ({decision.reason})")
        upstream[1].write(first)
        await splice((reader, writer), upstream)

    # the runtime server, for agentbox on the other side

    async def server_relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for attempt in range(2):
            if self._sandbox_ip is None or attempt:
                addresses = await self.resolve(self.sandbox, self.server_port)
                self._sandbox_ip = addresses[0] if addresses else None
            if self._sandbox_ip is None:
                break
            try:
                upstream = await asyncio.open_connection(self._sandbox_ip, self.server_port)
            except OSError:
                continue  # the sandbox restarted with another address: look it up again
            await splice((reader, writer), upstream)
            return
        writer.close()

    # host ports

    async def host_port(self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.open_unix_connection(os.path.join(self.relay_dir, f"{port}.sock"))
        except OSError as exc:
            log(f"host port {port}: the host relay is not there ({exc})")
            writer.close()
            return
        await splice((reader, writer), upstream)

    async def serve(self) -> None:
        servers: list[Any] = [
            await asyncio.start_server(self.proxy, self.address, PROXY_PORT, limit=HEAD_LIMIT),
            await asyncio.start_server(self.server_relay, "0.0.0.0", self.server_port),
        ]
        for port in self.host_ports:
            servers.append(await asyncio.start_server(functools.partial(self.host_port, port), self.address, port))
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: Dns(self), local_addr=(self.address, 53))
        print(READY, flush=True)
        await asyncio.Event().wait()


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _split_hostport(text: str, default: int | None) -> tuple[str | None, int | None]:
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host:
        return None, None
    if not port_text:
        return host, default
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None, None
    return host, int(port_text)


# -- DNS --------------------------------------------------------------------------------------------------

REFUSED, NOERROR = 5, 0


class Dns(asyncio.DatagramProtocol):
    """Answers A queries for listed names with their checked addresses; REFUSED for everything else."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.transport: asyncio.DatagramTransport | None = None
        self._pending: set[asyncio.Future[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.ensure_future(self._answer(data, addr))
        self._pending.add(task)  # a task nobody references may be collected mid-flight
        task.add_done_callback(self._pending.discard)

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        parsed = parse_query(data)
        if parsed is None or self.transport is None:
            return
        name, qtype, question_end = parsed
        gateway = self.gateway
        addresses: list[str] = []
        if name == "host.docker.internal" and gateway.host_ports:
            addresses = [gateway.address] if qtype == 1 else []
        elif gateway.policy.name_rule(name, None) is None:
            log(f"refused DNS {name}: not in the allow-list")
            self.transport.sendto(dns_reply(data, question_end, REFUSED, []), addr)
            return
        elif qtype == 1:
            for ip in await gateway.resolve(name, None):
                if ":" not in ip and gateway.policy.check_address(ipaddress.ip_address(ip), None, name).allowed:
                    addresses.append(ip)
            if not addresses:
                log(f"refused DNS {name}: no address it resolves to is allowed")
        self.transport.sendto(dns_reply(data, question_end, NOERROR, addresses), addr)


def parse_query(data: bytes) -> tuple[str, int, int] | None:
    """(name, qtype, end of the question) of a DNS query with one question."""
    if len(data) < 12 or data[2] & 0x80 or int.from_bytes(data[4:6], "big") != 1:
        return None
    labels, pos = [], 12
    try:
        while data[pos]:
            size = data[pos]
            if size & 0xC0:
                return None
            labels.append(data[pos + 1 : pos + 1 + size].decode("ascii").lower())
            pos += 1 + size
        qtype = int.from_bytes(data[pos + 1 : pos + 3], "big")
    except (IndexError, UnicodeDecodeError):
        return None
    return ".".join(labels), qtype, pos + 5


def dns_reply(query: bytes, question_end: int, rcode: int, addresses: Sequence[str]) -> bytes:
    """The reply to ``query``: its question, and one A record per address (TTL 5 s)."""
    flags = 0x8000 | (int.from_bytes(query[2:4], "big") & 0x0100) | 0x0080 | rcode
    header = query[:2] + struct.pack(">HHHHH", flags, 1, len(addresses), 0, 0)
    answers = b"".join(
        struct.pack(">HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton(ip) for ip in addresses
    )
    return header + query[12:question_end] + answers


# -- main ----------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, take the gateway address, serve until killed."""
    parser = argparse.ArgumentParser(prog="agentbox-egress")
    parser.add_argument("--gateway", required=True, help="the sandbox network's gateway address to take")
    parser.add_argument("--subnet", required=True, help="the sandbox network's subnet")
    parser.add_argument("--sandbox", required=True, help="the sandbox container's name")
    parser.add_argument("--server-port", type=int, required=True)
    parser.add_argument("--rule", action="append", default=[], help="an allow-list rule")
    parser.add_argument("--open", action="store_true", help="allow every public destination")
    parser.add_argument("--sidecar-net", action="append", default=[], help="a subnet sidecars live on")
    parser.add_argument("--host-address", action="append", default=[], help="an address of the host")
    parser.add_argument("--host-port", action="append", type=int, default=[])
    parser.add_argument("--relay-dir", default="/relay")
    args = parser.parse_args(argv)
    policy = Policy.from_texts(args.rule, args.sidecar_net, args.host_address, open_public=args.open)
    claim(args.gateway, args.subnet)
    refuse_forwarding()
    shown = "every public destination" if args.open else ", ".join(str(r) for r in policy.rules) or "(nothing)"
    log(f"allow-list: {shown}; host ports: {', '.join(map(str, args.host_port)) or '(none)'}")
    gateway = Gateway(policy, address=args.gateway, sandbox=args.sandbox, server_port=args.server_port,
                      host_ports=args.host_port, relay_dir=args.relay_dir)
    try:
        asyncio.run(gateway.serve())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
