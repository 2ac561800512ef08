"""Network policy on a real engine: allow-lists, refusals and their tricks, host ports, nothing left behind.

Every address targeted is on this machine: sidecars on a test network, the host's loopback, and
addresses (metadata, private ranges) the gateway refuses before any packet leaves.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agentbox.backends.docker.egress import LABEL_FOR
from agentbox.errors import ConfigError

pytestmark = pytest.mark.docker

# A TCP connect from inside the sandbox, not through the proxy; prints OK or FAIL <reason>.
PROBE = (
    "python3 -c \"import socket,sys; s=socket.socket(); s.settimeout(10)\n"
    "try:\n s.connect((sys.argv[1], int(sys.argv[2]))); print('OK')\n"
    "except Exception as e: print('FAIL', type(e).__name__, e)\" {host} {port}"
)
CURL = "curl -sS -m 20 -o /dev/null -w '%{{http_code}}' {args}"

# A TLS ClientHello for server_hostname, sent through a CONNECT to target; prints what came back.
SNI_PROBE = r"""python3 - <<'EOF'
import os, socket, ssl
proxy = os.environ["HTTP_PROXY"].rsplit("/", 1)[-1].rsplit(":", 1)
s = socket.create_connection((proxy[0], int(proxy[1])), timeout=10)
s.sendall(b"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")
print(s.recv(200).split(b"\r\n")[0].decode())
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="{sni}")
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
s.sendall(outgoing.read())
try:
    print("reply", len(s.recv(100)))
except OSError as e:
    print("reply error", e)
EOF"""


def leftovers(docker_client: Any, sandbox_id: str) -> list[str]:
    """Everything labelled as made for ``sandbox_id``'s policy that still exists."""
    api = docker_client.api
    selector = {"label": f"{LABEL_FOR}={sandbox_id}"}
    found = [c["Names"][0] for c in api.containers(all=True, filters=selector)]
    found += [n["Name"] for n in api.networks(filters=selector)]
    found += [v["Name"] for v in (api.volumes(filters=selector) or {}).get("Volumes") or []]
    return found


@pytest.fixture()
def sidecars(
    network: Callable[..., str], sidecar: Callable[..., Any], unique: Callable[[str], str]
) -> dict[str, Any]:
    """A test network with three HTTP sidecars a, b, c (port 8080): name -> (container name, address)."""
    net = network(unique("pnet"))
    out: dict[str, Any] = {"net": net}
    for key in ("a", "b", "c"):
        name = unique(f"side{key}")
        container = sidecar(name, net)
        out[key] = (name, container.attrs["NetworkSettings"]["Networks"][net]["IPAddress"])
    return out


def test_allow_list_sidecars_metadata_dns_and_tricks(sandboxes: Callable[..., Any], sidecars: dict[str, Any]) -> None:
    (a, a_ip), (b, _), (_c, c_ip) = sidecars["a"], sidecars["b"], sidecars["c"]
    net = sidecars["net"]
    # Docker's DNS answers <container>.<network>: a dotted name we control, resolving to a private address.
    sb = sandboxes(egress=[a, f"{c_ip}/32:8080", f"{b}.{net}"], additional_networks=[net])

    # Listed by name, and by CIDR: reachable through the proxy the sandbox's environment names.
    assert sb.run(CURL.format(args=f"http://{a}:8080/")).output == "200"
    assert sb.run(CURL.format(args=f"http://{c_ip}:8080/")).output == "200"
    # Not listed: refused by the gateway, with the reason.
    refused = sb.run(f"curl -sS -m 20 http://{b}:8080/")
    assert "not in the allow-list" in refused.output
    # A listed (dotted) name that resolves to a private address: refused, also as a tunnel.
    private = sb.run(f"curl -sS -m 20 http://{b}.{net}:8080/")
    assert "(private)" in private.output, private.output
    assert "403" in sb.run(f"curl -sS -m 20 -p http://{b}.{net}:8080/ 2>&1").output
    # The metadata address, through the proxy and directly.
    assert sb.run(CURL.format(args="http://169.254.169.254/latest/meta-data/")).output == "403"
    direct = sb.run(PROBE.format(host="169.254.169.254", port=80)).output
    assert direct.startswith("FAIL") and "timed out" not in direct, direct
    # Around the proxy to a listed sidecar: there is no route (the gateway is the only next hop).
    assert sb.run(PROBE.format(host=a_ip, port=8080)).output.startswith("FAIL")
    # DNS: a name not listed is refused; so is a sidecar not listed.
    assert sb.run(f"getent hosts {b} || echo refused").output.strip() == "refused"
    assert sb.run("getent hosts not-listed.example || echo refused").output.strip() == "refused"
    # CONNECT to the address of a sidecar listed only by name: a name rule never allows an address.
    tunnel = sb.run(f"curl -sS -m 20 -p http://{a_ip}:8080/ 2>&1")
    assert "403" in tunnel.output
    # Host header != target (plain HTTP), and TLS SNI != CONNECT host.
    assert sb.run(CURL.format(args=f"-H 'Host: {b}' http://{a}:8080/")).output == "403"
    sni = sb.run(SNI_PROBE.format(target=f"{a}:8080", sni=b)).output
    assert "200" in sni and ("reply 0" in sni or "reply error" in sni), sni
    # The sandbox's log says what was refused and why.
    log = sb.logs()
    assert "egress gateway" in log
    assert f"refused CONNECT {a_ip}:8080" in log
    assert f"TLS server name '{b}' differs from the CONNECT host" in log
    assert "refused DNS not-listed.example" in log


def test_egress_none_pause_resume_and_nothing_left(
    sandboxes: Callable[..., Any], sidecars: dict[str, Any], docker_client: Any
) -> None:
    a, _ = sidecars["a"]
    sb = sandboxes(egress="none", additional_networks=[sidecars["net"]])
    assert sb.run(CURL.format(args=f"http://{a}:8080/")).output == "403"
    sb.pause()
    sb.resume()
    assert sb.run("echo still here").output.strip() == "still here"
    assert leftovers(docker_client, sb.id)
    sb.remove()
    assert leftovers(docker_client, sb.id) == []


def test_policy_holds_under_gvisor_and_across_reattach(
    sandboxes: Callable[..., Any], sidecars: dict[str, Any], docker_client: Any
) -> None:
    from agentbox import Sandbox

    if "runsc" not in (docker_client.info().get("Runtimes") or {}):
        pytest.skip("runsc is not registered with this engine")
    (a, _), (b, _) = sidecars["a"], sidecars["b"]
    sb = sandboxes(egress=[a], additional_networks=[sidecars["net"]], runtime="runsc", keep_runtime_alive=True)
    assert sb.run(CURL.format(args=f"http://{a}:8080/")).output == "200"
    assert sb.run(CURL.format(args=f"http://{b}:8080/")).output == "403"
    assert sb.run(PROBE.format(host="169.254.169.254", port=80)).output.startswith("FAIL")
    sb.detach()
    again = Sandbox.connect(sb.id)
    try:
        assert again.run(CURL.format(args=f"http://{a}:8080/")).output == "200"
        assert again.run(CURL.format(args=f"http://{b}:8080/")).output == "403"
    finally:
        again.remove()
    assert leftovers(docker_client, sb.id) == []


@pytest.fixture()
def host_services() -> Iterator[tuple[int, int]]:
    """Two HTTP services on the host's loopback only: (port, port)."""
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
               for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield servers[0].server_address[1], servers[1].server_address[1]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_host_ports_reach_exactly_the_listed_loopback_service(
    sandboxes: Callable[..., Any], host_services: tuple[int, int]
) -> None:
    listed, other = host_services
    sb = sandboxes(egress="none", host_ports=[listed])
    assert sb.run(CURL.format(args=f"http://host.docker.internal:{listed}/")).output == "200"
    assert sb.run(PROBE.format(host="host.docker.internal", port=other)).output.startswith("FAIL")
    assert sb.run(CURL.format(args=f"-x '' http://host.docker.internal:{other}/")).output != "200"


def test_host_ports_with_open_egress_still_refuse_the_host(
    sandboxes: Callable[..., Any], host_services: tuple[int, int]
) -> None:
    listed, other = host_services
    sb = sandboxes(host_ports=[listed])  # egress stays "open": public destinations through the proxy
    assert sb.run(CURL.format(args=f"http://host.docker.internal:{listed}/")).output == "200"
    assert sb.run(CURL.format(args="http://169.254.169.254/")).output == "403"
    assert sb.run(PROBE.format(host="host.docker.internal", port=other)).output.startswith("FAIL")


def test_host_ports_refused_without_a_network(sandboxes: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match="host_ports needs a network"):
        sandboxes(network="none", host_ports=[8000])


def test_reap_removes_a_dead_owners_policy(docker_client: Any, runtime_image: str, labels: dict[str, str]) -> None:
    script = (
        "import os, sys\nfrom agentbox import Sandbox\n"
        f"sb = Sandbox(labels={labels!r}, runtime_container_image={runtime_image!r}, egress=['pypi.org'])\n"
        "sb.start()\nprint(sb.id, flush=True)\nos._exit(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ})
    assert done.returncode == 0, done.stderr
    sandbox_id = done.stdout.split()[-1]
    assert leftovers(docker_client, sandbox_id)
    from agentbox.backends.docker import default_backend

    reaped = default_backend().reap(labels=labels)
    assert sandbox_id in reaped, json.dumps(reaped)
    assert leftovers(docker_client, sandbox_id) == []
