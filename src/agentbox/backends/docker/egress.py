"""The egress gateway of a sandbox with a network policy (``egress`` other than open, or ``host_ports``).

Per sandbox, all labelled ``agentbox.egress-for=<sandbox id>`` and removed with it (or by reap once
the sandbox is gone):

* network ``zzz-agentbox-egress-<id>`` (:func:`network_name` says why the odd name): a bridge without
  a host address (``inhibit_ipv4``) and without masquerading. The sandbox joins only this one (plus
  the manager's control network, when agentbox runs in a container); the gateway takes the network's
  gateway address, so it is the sandbox's only next hop: nothing reaches the host or beyond except through it.
* container ``agentbox-egress-<id>``: the gateway (:mod:`agentbox.netpolicy.gateway`), from the
  sandbox's runtime image, on that network and on the networks the sandbox would have joined (the
  default one, ``network``, ``additional_networks``); it publishes the runtime server's port, which
  it relays to the sandbox (the host has no address on the sandbox's network).
* with ``host_ports``: container ``agentbox-hostrelay-<id>`` in the host's network namespace and volume
  ``agentbox-egress-<id>`` holding one Unix socket per port, shared with the gateway only.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Container
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from agentbox.backends.base import Endpoint
from agentbox.backends.docker.endpoints import url
from agentbox.backends.docker.errors import engine_errors
from agentbox.backends.docker.lifecycle import close_stream
from agentbox.backends.labels import IDENTITY_LABELS, LABELS
from agentbox.backends.spec import SERVER_PORT, ContainerSpec
from agentbox.errors import SandboxStartError

__all__ = ["LABEL_FOR", "LABEL_GATEWAY", "PROXY_PORT", "Egress", "gateway_name", "host_addresses"]

log = logging.getLogger("agentbox.backends.docker")

#: On everything made for a sandbox's policy: the sandbox id.
LABEL_FOR = LABELS.EGRESS_FOR
#: On the sandbox container: its gateway's container name (the server is reached through it).
LABEL_GATEWAY = LABELS.EGRESS_GATEWAY
ROLE_EGRESS = "egress"
PROXY_PORT = 3128
PYTHON = "/opt/agentbox/venv/bin/python"
READY_TIMEOUT = 30.0
#: Seconds policy leftovers without a sandbox are left alone by reap (their sandbox may be being created).
GRACE = 60.0
NO_PROXY = "localhost,127.0.0.1,::1,host.docker.internal"


def gateway_name(sandbox_id: str) -> str:
    """The gateway container's (and the network's and volume's) name."""
    return f"agentbox-egress-{sandbox_id}"


def network_name(sandbox_id: str) -> str:
    """The sandbox's gateway network. The engine (20.10) routes and publishes a container on several
    bridges through the one whose *name sorts first*; the gateway must use its outside network for
    both, never this one, so the name sorts after any ordinary network's."""
    return f"zzz-agentbox-egress-{sandbox_id}"


def host_addresses() -> list[str]:
    """This host's IPv4 addresses (refused as destinations unless listed); empty when unknown."""
    from agentbox.netpolicy.gateway import _ifaddrs

    try:
        return sorted({ip for _, ip in _ifaddrs()})
    except OSError:
        return []


def _proxy_environment(address: str) -> tuple[tuple[str, str], ...]:
    proxy = f"http://{address}:{PROXY_PORT}"
    pairs = []
    for name in ("http_proxy", "https_proxy"):
        pairs += [(name, proxy), (name.upper(), proxy)]
    return (*pairs, ("no_proxy", NO_PROXY), ("NO_PROXY", NO_PROXY))


# The policy programs travel on the command line, not in the image: a runtime image (also one given as
# runtime_container_image, built by another agentbox version) only needs agentbox's venv python.
_LOADER = """
import base64, sys, types, zlib
names = sys.argv[1].split(",")
sources = zlib.decompress(base64.b64decode(sys.argv[2])).decode().split("\\0")
package = types.ModuleType("agentbox.netpolicy")
package.__path__ = []
sys.modules["agentbox.netpolicy"] = package
for name, source in zip(names, sources):
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(source, name.replace(".", "/") + ".py", "exec"), module.__dict__)
sys.modules[names[-1]].main(sys.argv[3:])
"""


def _program(module: str) -> list[str]:
    """``python -c`` arguments that run ``agentbox.netpolicy.<module>`` from sources on the command line."""
    import base64
    import importlib.util
    import zlib

    names = ["agentbox.netpolicy.rules", "agentbox.netpolicy.gateway"]
    if module != "gateway":
        names.append(f"agentbox.netpolicy.{module}")
    sources = []
    for name in names:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        with open(spec.origin, encoding="utf-8") as f:
            sources.append(f.read())
    payload = base64.b64encode(zlib.compress("\0".join(sources).encode(), 9)).decode()
    return ["-c", _LOADER, ",".join(names), payload]


def _wait_ready(api: Any, container_id: str, line: str, timeout: float) -> bool:
    """True when the container printed ``line``; False when it exited (or the timeout passed) first."""
    found: queue.Queue[bool] = queue.Queue()
    stream = api.logs(container_id, stdout=True, stderr=True, stream=True, follow=True)

    def follow() -> None:
        seen = b""
        with contextlib.suppress(Exception):
            for chunk in stream:
                seen += chunk
                if line.encode() in seen:
                    found.put(True)
                    return
        found.put(False)

    threading.Thread(target=follow, name=f"agentbox-egress-{container_id[:12]}", daemon=True).start()
    try:
        return found.get(timeout=timeout)
    except queue.Empty:
        return False
    finally:
        close_stream(stream)


class Egress:
    """Makes and removes the policy resources of sandboxes on one engine."""

    def __init__(self, api: Callable[[], Any]) -> None:
        self._api = api  # called on each use: the engine client is connected lazily

    def setup(self, spec: ContainerSpec, *, gateway_networks: list[str], control: str | None) -> ContainerSpec:
        """Make the network, the gateway (and host relay) for ``spec``; returns the sandbox's spec behind it.

        ``gateway_networks``: the real networks the sandbox would have joined (the gateway joins them
        instead). Everything made is removed again if a step fails.
        """
        sandbox_id = spec.label_map[LABELS.SANDBOX]
        try:
            return self._setup(spec, sandbox_id, gateway_networks, control)
        except BaseException:
            self.teardown(sandbox_id)
            raise

    def _setup(
        self, spec: ContainerSpec, sandbox_id: str, gateway_networks: list[str], control: str | None
    ) -> ContainerSpec:
        from docker.types import Mount

        api = self._api()
        name, net_name = gateway_name(sandbox_id), network_name(sandbox_id)
        labels = {k: v for k, v in spec.labels if k not in IDENTITY_LABELS and k != LABEL_GATEWAY}
        labels.update({LABELS.MANAGED: "1", LABELS.ROLE: ROLE_EGRESS, LABEL_FOR: sandbox_id})
        with engine_errors(f"creating the sandbox's egress network {net_name}"):
            api.create_network(
                net_name, driver="bridge", labels=labels, check_duplicate=True,
                options={
                    "com.docker.network.bridge.inhibit_ipv4": "true",
                    "com.docker.network.bridge.enable_ip_masquerade": "false",
                },
            )
            ipam = (api.inspect_network(net_name).get("IPAM") or {}).get("Config") or [{}]
        subnet, address = ipam[0]["Subnet"], ipam[0]["Gateway"]
        mounts = []
        if spec.host_ports:
            with engine_errors("creating the host relay's volume"):
                api.create_volume(name, labels=labels)
            mounts = [Mount(target="/relay", source=name, type="volume")]
            self._run(
                f"agentbox-hostrelay-{sandbox_id}", spec.image, labels,
                [*_program("hostrelay"), *[a for p in spec.host_ports for a in ("--port", str(p))]],
                api.create_host_config(network_mode="host", mounts=mounts, **_locked_down()),
                "agentbox-hostrelay ready",
            )
        sidecars, gateways = self._subnets(gateway_networks[1:]), self._gateways(gateway_networks)
        command = [
            *_program("gateway"), "--gateway", address, "--subnet", subnet,
            "--sandbox", spec.name or f"agentbox-{sandbox_id}", "--server-port", str(SERVER_PORT),
        ]
        if spec.egress is None:
            command.append("--open")
        for flag, values in (
            ("--rule", spec.egress or ()), ("--sidecar-net", sidecars),
            ("--host-address", sorted({*gateways, *host_addresses()})), ("--host-port", map(str, spec.host_ports)),
        ):
            for value in values:
                command += [flag, value]
        binding = spec.ports[0].host_ip if spec.ports else "127.0.0.1"
        host_config = api.create_host_config(
            network_mode=gateway_networks[0], port_bindings={SERVER_PORT: (binding, None)}, mounts=mounts,
            sysctls={"net.ipv4.ip_forward": "1", "net.ipv4.icmp_ratelimit": "0"},
            **_locked_down(cap_add=["NET_ADMIN", "NET_BIND_SERVICE"]),
        )
        self._run(name, spec.image, labels, command, host_config, "agentbox-egress ready",
                  ports=[SERVER_PORT], connect=[*gateway_networks[1:], net_name])
        environment = dict(spec.environment)
        environment.update(_proxy_environment(address))
        return replace(
            spec,
            networks=(net_name, *([control] if control else [])),
            ports=(),
            dns=(address,),
            extra_hosts=(("host.docker.internal", address),) if spec.host_ports else (),
            environment=tuple(environment.items()),
            labels=tuple(sorted({**spec.label_map, LABEL_GATEWAY: name}.items())),
        )

    def _run(
        self, name: str, image: str, labels: dict[str, str], command: list[str], host_config: Any, ready: str,
        *, ports: list[int] | None = None, connect: tuple[str, ...] | list[str] = (),
    ) -> None:
        api = self._api()
        with engine_errors(f"creating {name}"):
            created = api.create_container(
                image, entrypoint=[PYTHON, "-I", "-u"], command=command, name=name, labels=labels,
                user="0", host_config=host_config, ports=ports, detach=True,
            )
            for network in connect:
                api.connect_container_to_network(created["Id"], network)
            api.start(created["Id"])
        if not _wait_ready(api, created["Id"], ready, READY_TIMEOUT):
            tail = bytes(api.logs(created["Id"], tail=20)).decode("utf-8", "replace")
            raise SandboxStartError(
                f"the sandbox's network policy component {name} did not start (from image {image}, which "
                f"must be an agentbox runtime image). Its log:\n{tail}"
            )

    def _subnets(self, networks: list[str]) -> list[str]:
        return [c["Subnet"] for n in networks for c in self._ipam(n) if c.get("Subnet")]

    def _gateways(self, networks: list[str]) -> list[str]:
        return [c["Gateway"] for n in networks for c in self._ipam(n) if c.get("Gateway")]

    def _ipam(self, network: str) -> list[dict[str, str]]:
        with engine_errors(f"inspecting network {network}"):
            return list((self._api().inspect_network(network).get("IPAM") or {}).get("Config") or [])

    def server_endpoint(self, labels: dict[str, str]) -> Endpoint | None:
        """Where the runtime server of a policy sandbox is reached: its gateway's published port."""
        name = labels.get(LABEL_GATEWAY)
        if not name:
            return None
        with engine_errors("inspecting the sandbox's egress gateway"):
            attrs = self._api().inspect_container(name)
        for binding in ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{SERVER_PORT}/tcp") or []:
            return Endpoint(url(binding.get("HostIp", ""), binding["HostPort"]), "published")
        return None

    def logs(self, labels: dict[str, str]) -> str:
        """The gateway's log (what it allowed and refused, and why); empty without a gateway."""
        name = labels.get(LABEL_GATEWAY)
        if not name:
            return ""
        with contextlib.suppress(Exception):
            return bytes(self._api().logs(name, stdout=True, stderr=True)).decode("utf-8", "replace")
        return ""

    def teardown(self, sandbox_id: str) -> list[str]:
        """Remove the policy resources of ``sandbox_id``; returns the networks its gateway was on."""
        from docker.errors import APIError

        api = self._api()
        joined: list[str] = []
        selector = {"label": f"{LABEL_FOR}={sandbox_id}"}
        for summary in api.containers(all=True, filters=selector):
            joined += list(((summary.get("NetworkSettings") or {}).get("Networks") or {}).keys())
            with contextlib.suppress(APIError):
                api.remove_container(summary["Id"], force=True, v=True)
        for net in api.networks(filters=selector):
            with contextlib.suppress(APIError):
                api.remove_network(net["Id"])
        for volume in (api.volumes(filters=selector) or {}).get("Volumes") or []:
            with contextlib.suppress(APIError):
                api.remove_volume(volume["Name"], force=True)
        return [n for n in joined if n != network_name(sandbox_id) and n != "host"]

    def reap(self, present: Container[str | None]) -> list[str]:
        """Tear down policies whose sandbox is not ``present`` (older than :data:`GRACE`); their ids."""
        api = self._api()
        settled = time.time() - GRACE
        found: set[str] = set()
        for summary in api.containers(all=True, filters={"label": LABEL_FOR}):
            if summary.get("Created", 0) < settled:
                found.add((summary.get("Labels") or {}).get(LABEL_FOR, ""))
        for net in api.networks(filters={"label": LABEL_FOR}):
            created = _timestamp(net.get("Created"))
            if created is not None and created < settled:
                found.add((net.get("Labels") or {}).get(LABEL_FOR, ""))
        gone = sorted(i for i in found if i and i not in present)
        for sandbox_id in gone:
            self.teardown(sandbox_id)
        return gone


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    with contextlib.suppress(ValueError):  # "2026-12-05T10:12:33.123456789Z": the engine's UTC time
        return datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return None


def _locked_down(cap_add: list[str] | None = None) -> dict[str, Any]:
    return {
        "cap_drop": ["ALL"], "cap_add": cap_add or None, "security_opt": ["no-new-privileges"],
        "read_only": True, "pids_limit": 64, "mem_limit": "128m", "init": True,
    }
