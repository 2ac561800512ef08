"""Binding, networks and isolation on a real engine. Every address targeted is on this machine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from agentbox.backends.labels import LABELS
from agentbox.backends.spec import DEFAULT_NETWORK, SERVER_PORT
from agentbox.errors import AgentboxError, NetworkNotFoundError, VolumeSpecError

pytestmark = pytest.mark.docker


def in_a_container() -> bool:
    """This process runs in a container of the engine: sandboxes are reached over a control network."""
    from agentbox.backends.docker import default_backend

    return default_backend().manager() is not None


needs_host = pytest.mark.skipif(
    "in_a_container()", reason="reached over a control network from a container: no host loopback or socket here"
)

# A TCP connect from inside the sandbox; prints OK or FAIL <reason>. Python is in every runtime image.
PROBE = (
    "python3 -c \"import socket,sys; s=socket.socket(); s.settimeout(3)\n"
    "try:\n s.connect((sys.argv[1], int(sys.argv[2]))); print('OK')\n"
    "except Exception as e: print('FAIL', type(e).__name__, e)\" {host} {port}"
)


def probe(sb: Any, host: str, port: int) -> str:
    result = sb.run(PROBE.format(host=host, port=port), timeout=30)
    return str(result.output.strip().splitlines()[-1])


#: A TCP port a sandbox listens on for the isolation checks (its own server may be on a Unix socket).
LISTEN_PORT = 8000
# Binds and listens before the command returns, then accepts in a detached child.
LISTEN = (
    "python3 -c \"import os,socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('0.0.0.0', {port})); s.listen(8)\n"
    "if os.fork() == 0:\n os.setsid(); os.closerange(0, s.fileno()); os.closerange(s.fileno() + 1, 256)\n"
    " while True: s.accept()[0].close()\n"
    "print('listening')\""
)


def listen(sb: Any, port: int = LISTEN_PORT) -> None:
    output = sb.run(LISTEN.format(port=port), timeout=30).output
    assert output.strip().splitlines()[-1] == "listening", output


def bridge_gateway(docker_client: Any, attrs: Any) -> str:
    """The host's address on Docker's default bridge. A running container's endpoint reports it; the
    network's IPAM config does not always (a fresh Docker 20.10 leaves ``Gateway`` out): then the first
    address of the subnet, which is what the engine gives the bridge."""
    import ipaddress

    gateway = (attrs["NetworkSettings"]["Networks"]["bridge"] or {}).get("Gateway")
    if gateway:
        return str(gateway)
    config = docker_client.api.inspect_network("bridge")["IPAM"]["Config"][0]
    return str(config.get("Gateway") or next(ipaddress.ip_network(config["Subnet"]).hosts()))


def ip_on(docker_client: Any, container_id: str, network: str) -> str:
    return str(docker_client.api.inspect_container(container_id)["NetworkSettings"]["Networks"][network]["IPAddress"])


@needs_host
def test_by_default_the_server_is_on_a_private_socket_and_nothing_is_published(
    sandboxes: Callable[..., Any], docker_client: Any
) -> None:
    sb = sandboxes(user_id=1000)
    attrs = docker_client.api.inspect_container(sb.container_id)
    assert attrs["NetworkSettings"]["Ports"] in ({}, None)  # no docker-proxy, no port any local user could try
    assert attrs["NetworkSettings"]["Networks"]  # still on its network: only the way in changed
    assert sb.uds is not None and os.path.exists(sb.uds)
    directory = os.path.dirname(sb.uds)
    st = os.stat(directory)
    assert (st.st_mode & 0o777, st.st_uid) == (0o700, 1000)  # the server's (uid 1000) alone...
    if os.geteuid() == 0:
        parent = os.stat(os.path.dirname(directory))
        assert (parent.st_mode & 0o777, parent.st_uid) == (0o700, 0)  # ...inside a root-only directory
    assert sb.run("echo hi").output.strip() == "hi"
    assert probe(sb, "127.0.0.1", SERVER_PORT).startswith("FAIL")  # the server is not on TCP at all
    client = sb.client
    sb.close()
    assert not os.path.exists(directory)  # gone with its sandbox
    with pytest.raises(AgentboxError):
        client.alive()  # a removed sandbox's socket refuses at once (no address left to resolve)


@needs_host
def test_a_sandbox_is_on_its_network_with_its_dns_from_the_first_command(
    sandboxes: Callable[..., Any], docker_client: Any
) -> None:
    # Started detached and joined while its server boots: the first command must already see it all.
    sb = sandboxes()
    [(network, settings)] = docker_client.api.inspect_container(sb.container_id)["NetworkSettings"]["Networks"].items()
    name = f"agentbox-{sb.id}"  # its container name: answered by the network's DNS, not /etc/hosts
    first = sb.run(f"python3 -c \"import socket; print(socket.gethostbyname('{name}'))\"; grep -c {name} /etc/hosts")
    assert first.output.split() == [settings["IPAddress"], "0"], (network, first.output)


def test_an_explicit_binding_address_publishes_the_port_there_only(
    sandboxes: Callable[..., Any], docker_client: Any
) -> None:
    sb = sandboxes(runtime_binding_address="127.0.0.1")
    assert sb.uds is None
    ports = docker_client.api.inspect_container(sb.container_id)["NetworkSettings"]["Ports"]
    bindings = ports[f"{SERVER_PORT}/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    if not in_a_container():  # from a container, the loopback port is out of reach: a control network is used
        assert sb.url == f"http://127.0.0.1:{bindings[0]['HostPort']}"
    assert all(b["HostIp"] == "127.0.0.1" for bs in ports.values() for b in bs or [])
    assert sb.client.alive().status == "ok"


def test_a_sidecar_on_an_additional_network_answers_by_name_from_the_first_command(
    sandboxes: Callable[..., Any],
    sidecar: Callable[..., Any],
    network: Callable[..., str],
    unique: Callable[[str], str],
    docker_client: Any,
) -> None:
    net1 = network(unique("net1"))
    name = unique("myredis")
    sidecar(name, net1)
    sb = sandboxes(additional_networks=[net1])
    # The very first command: the network was joined before the container started.
    first = sb.run(f"python3 -c \"import urllib.request as u; print(u.urlopen('http://{name}:8080/').status)\"")
    assert first.output.strip().splitlines()[-1] == "200", first.output
    # and the sandbox is still only published on loopback, its primary network the agentbox one
    attrs = docker_client.api.inspect_container(sb.container_id)
    assert set(attrs["NetworkSettings"]["Networks"]) == {DEFAULT_NETWORK, net1}


def test_sandboxes_on_different_networks_cannot_reach_each_other(
    sandboxes: Callable[..., Any], unique: Callable[[str], str], docker_client: Any
) -> None:
    net_a, net_b = unique("a"), unique("b")
    a = sandboxes(network=net_a)
    b = sandboxes(network=net_b)
    c = sandboxes(network=net_a)
    b_ip = ip_on(docker_client, b.container_id, net_b)
    c_ip = ip_on(docker_client, c.container_id, net_a)
    listen(b)
    listen(c)
    # positive control: on the same (agentbox-created, icc on) network, a reaches c's listener
    assert probe(a, c_ip, LISTEN_PORT) == "OK"
    assert probe(a, b_ip, LISTEN_PORT).startswith("FAIL")


def test_sandboxes_on_the_default_network_cannot_reach_each_other(
    sandboxes: Callable[..., Any], docker_client: Any
) -> None:
    a = sandboxes()
    b = sandboxes()
    b_ip = ip_on(docker_client, b.container_id, DEFAULT_NETWORK)
    listen(b)
    assert probe(b, b_ip, LISTEN_PORT) == "OK"  # control: b listens there
    assert probe(a, b_ip, LISTEN_PORT).startswith("FAIL")


@needs_host
def test_network_none_has_no_network_at_all(
    sandboxes: Callable[..., Any], sidecar: Callable[..., Any], unique: Callable[[str], str], docker_client: Any
) -> None:
    side = sidecar(unique("web"), "bridge")
    side_ip = side.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    gateway = bridge_gateway(docker_client, side.attrs)
    # A service of this machine listening on the bridge address: what an internal network still reached.
    try:
        listener = socket.create_server((gateway, 0))
    except OSError as exc:
        pytest.skip(f"the bridge address {gateway} is not on this machine (engine elsewhere, or in a container): {exc}")
    try:
        sb = sandboxes(network="none")
        # The first command answers: the host reaches the server over its Unix socket.
        assert sb.run("echo reachable").output.strip() == "reachable"
        assert sb.uds is not None and os.path.exists(sb.uds)
        attrs = docker_client.api.inspect_container(sb.container_id)
        assert attrs["HostConfig"]["NetworkMode"] == "none"
        assert set(attrs["NetworkSettings"]["Networks"]) <= {"none"}  # not agentbox-none, nor any other
        assert attrs["NetworkSettings"]["Ports"] in ({}, None)
        assert sb.run("ls /sys/class/net").output.split() == ["lo"]
        ifaces = sb.run("tail -n +3 /proc/net/dev | cut -d: -f1").output.split()
        assert ifaces == ["lo"]
        # Nothing but loopback is routed: the host's bridge address, another network on this machine and
        # any outside address (TEST-NET-1, never routed anywhere) fail with "unreachable", not "refused".
        port = listener.getsockname()[1]
        for host, target_port in ((gateway, port), (side_ip, 8080), ("192.0.2.1", 53)):
            assert probe(sb, host, target_port).startswith("FAIL OSError [Errno 101]"), host
        assert probe(sb, "127.0.0.1", 1).startswith("FAIL ConnectionRefusedError")  # control: loopback is up
        resolve = sb.run("getent hosts example.com || echo NORESOLVE")
        assert "NORESOLVE" in resolve.output
    finally:
        listener.close()


@needs_host
def test_a_network_none_sandbox_is_reattached_from_a_new_process_and_leaves_nothing(
    sandboxes: Callable[..., Any], docker_client: Any
) -> None:
    sb = sandboxes(network="none")
    sb.run("export FROM_FIRST=1")
    socket_dir = os.path.dirname(sb.uds)
    code = (
        "import json, sys\n"
        "from agentbox.sandbox import Sandbox\n"
        "sb = Sandbox.connect(sys.argv[1], take_ownership=False)\n"
        "r = sb.run('echo $FROM_FIRST')\n"
        "print(json.dumps({'out': r.output.split(), 'uds': sb.uds}))\n"
        "sb.detach()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, sb.id], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"out": ["1"], "uds": sb.uds}
    sb.close()
    assert docker_client.api.containers(all=True, filters={"id": sb.container_id}) == []
    assert not os.path.exists(socket_dir)


def test_closing_the_last_sandbox_removes_the_network_agentbox_created(
    sandboxes: Callable[..., Any], unique: Callable[[str], str], docker_client: Any
) -> None:
    from docker.errors import NotFound

    name = unique("own")
    a = sandboxes(network=name)
    b = sandboxes(network=name)
    labels = docker_client.api.inspect_network(name)["Labels"]
    assert labels[LABELS.MANAGED] == "1" and labels["agentbox.test"] == "1"
    a.close()
    assert docker_client.api.containers(all=True, filters={"id": a.container_id}) == []
    docker_client.api.inspect_network(name)  # b still uses it
    b.close()
    with pytest.raises(NotFound):
        docker_client.api.inspect_network(name)


def test_a_network_agentbox_did_not_create_is_kept(
    sandboxes: Callable[..., Any], network: Callable[..., str], unique: Callable[[str], str], docker_client: Any
) -> None:
    name = network(unique("theirs"))
    sb = sandboxes(network=name)
    sb.close()
    assert docker_client.api.inspect_network(name)["Name"] == name


def _leftovers(docker_client: Any, sandbox_id: str) -> list[Any]:
    """Containers, networks and volumes still labelled with ``sandbox_id`` (or made for it)."""
    api = docker_client.api
    found = list(api.containers(all=True, filters={"label": f"{LABELS.SANDBOX}={sandbox_id}"}))
    found += api.networks(filters={"label": f"{LABELS.CREATED_FOR}={sandbox_id}"})
    found += api.volumes(filters={"label": f"{LABELS.CREATED_FOR}={sandbox_id}"}).get("Volumes") or []
    return found


def test_an_unknown_additional_network_fails_clearly_and_leaves_nothing(
    sandboxes: Callable[..., Any], unique: Callable[[str], str], docker_client: Any
) -> None:
    missing = unique("missing")
    primary = unique("prim")
    with pytest.raises(NetworkNotFoundError, match=missing) as err:
        sandboxes(network=primary, additional_networks=[missing])
    assert "docker network create" in str(err.value)
    sandbox_id = err.value.sandbox_id
    assert sandbox_id and sandbox_id in str(err.value)
    assert _leftovers(docker_client, sandbox_id) == []
    assert docker_client.api.networks(names=[primary]) == []  # the primary made for it is gone too


def test_a_bad_volume_leaves_nothing(sandboxes: Callable[..., Any], tmp_path: Any, docker_client: Any) -> None:
    with pytest.raises(VolumeSpecError) as err:
        sandboxes(volumes=[f"{tmp_path}/does-not-exist:/workspace"])
    assert "does-not-exist" in str(err.value)
    sandbox_id = err.value.sandbox_id
    assert sandbox_id and sandbox_id in str(err.value)
    assert _leftovers(docker_client, sandbox_id) == []


def test_compose_prefixed_network_is_resolved_when_unambiguous(
    sandboxes: Callable[..., Any], network: Callable[..., str], sidecar: Callable[..., Any],
    unique: Callable[[str], str],
) -> None:
    key = unique("cache")
    compose_net = network(
        f"proj1_{key}", labels={"com.docker.compose.network": key, "com.docker.compose.project": "proj1"}
    )
    name = unique("side")
    sidecar(name, compose_net)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb = sandboxes(additional_networks=[key])
    assert any(f"proj1_{key}" in str(w.message) for w in caught)
    r = sb.run(f"python3 -c \"import urllib.request as u; print(u.urlopen('http://{name}:8080/').status)\"")
    assert r.output.strip().splitlines()[-1] == "200", r.output

    network(f"proj2_{key}", labels={"com.docker.compose.network": key, "com.docker.compose.project": "proj2"})
    with pytest.raises(NetworkNotFoundError, match="several Docker Compose") as err:
        sandboxes(additional_networks=[key])
    assert f"proj1_{key}" in str(err.value) and f"proj2_{key}" in str(err.value)


@needs_host
def test_host_network_reads_the_port_from_the_ready_line(sandboxes: Callable[..., Any], docker_client: Any) -> None:
    sb = sandboxes(use_host_network=True)
    assert docker_client.api.inspect_container(sb.container_id)["HostConfig"]["NetworkMode"] == "host"
    assert sb.url.startswith("http://127.0.0.1:") and not sb.url.endswith(":0")
    assert sb.run("echo on-host").output.strip() == "on-host"
