"""A frozen description of one sandbox container, and the one pure function that makes Docker arguments.

:func:`spec_from_config` turns a :class:`~agentbox.config.SandboxConfig` into a :class:`ContainerSpec`;
:func:`to_docker_args` turns a spec into keyword arguments for ``client.containers.create(**args)``.
Neither touches the engine, so both are unit-tested without Docker. Engine-dependent decisions (which
real network a configured name means, whether the manager runs in a container) are made by the backend,
which then ``dataclasses.replace``-s the spec before calling :func:`to_docker_args`.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from agentbox.backends.labels import LABELS
from agentbox.config import SandboxConfig
from agentbox.errors import ConfigError, VolumeSpecError
from agentbox.hostpaths import check_bind_mounts
from agentbox.volumes import Mount

__all__ = [
    "DEFAULT_CAP_DROP",
    "DEFAULT_NETWORK",
    "FOREIGN_SERVER_LABEL",
    "HARDENED_CAP_ADD",
    "LOOPBACK",
    "NONE_NETWORK",
    "RUN_MOUNT",
    "SERVER_DIR",
    "SERVER_PORT",
    "SOCKET_MOUNT",
    "SOCKET_NAME",
    "ContainerSpec",
    "Limits",
    "PortSpec",
    "Security",
    "foreign_server_spec",
    "spec_from_config",
    "to_docker_args",
    "unix_socket_spec",
    "with_server_volume",
]

#: Port the runtime server listens on inside a bridged sandbox. High and unusual, so an agent's own web
#: app on 8000/8080/3000 never collides with it.
SERVER_PORT = 49983
#: Where a server port is published when ``runtime_binding_address`` is unset and no socket serves.
LOOPBACK = "127.0.0.1"
#: The shared, agentbox-managed bridge every sandbox joins by default (inter-container traffic disabled).
DEFAULT_NETWORK = "agentbox-net"
#: How ``spec_from_config`` names ``network="none"``. On the host the backend turns such a spec into one
#: without any network (:func:`unix_socket_spec`); a manager running in a container cannot share a host
#: directory with its sandbox, so there it becomes the manager's internal control network (and, in a
#: host-networked manager container, this shared internal network, icc off).
NONE_NETWORK = "agentbox-none"
#: Where the runtime server's code lives in a runtime image; mounted read-only (:func:`with_server_volume`).
SERVER_DIR = "/opt/agentbox"
#: Where a network-less sandbox's socket directory is mounted, and the server's socket in it.
SOCKET_MOUNT = "/run/agentbox-sock"
SOCKET_NAME = "server.sock"
#: Where the entrypoint finds the session key and env.sh; a local engine's sandbox has its key directory
#: mounted here (:attr:`ContainerSpec.key_dir`).
RUN_MOUNT = "/run/agentbox"

#: Capabilities removed from Docker's default set in default (non-hardened) mode. Package installs with
#: sudo need CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETUID/SETGID (apt drops to _apt) and KILL; nothing an
#: agent does needs raw sockets (spoofing), device nodes, chroot or file capabilities. AUDIT_WRITE stays:
#: without it every sudo prints "unable to send audit message", noise agents misread as a failure.
DEFAULT_CAP_DROP: tuple[str, ...] = ("NET_RAW", "MKNOD", "SYS_CHROOT", "SETFCAP")
#: Hardened mode drops everything but what the entrypoint needs to create the user, make the work dir
#: and switch to the uid; setpriv then drops these too before the server starts (CapEff 0).
HARDENED_CAP_ADD: tuple[str, ...] = ("CHOWN", "SETUID", "SETGID", "SETPCAP", "DAC_OVERRIDE", "FOWNER")
#: On a container whose server is the image's own command (:func:`foreign_server_spec`): its start does
#: not wait for agentbox's ready line, and the port of that server is the ``agentbox.server-port`` label.
FOREIGN_SERVER_LABEL = "agentbox.foreign-server"


@dataclass(frozen=True)
class PortSpec:
    """One published container port."""

    container_port: int
    """Port inside the container."""
    host_ip: str = "127.0.0.1"
    """Host address it is published on."""
    host_port: int | None = None
    """Host port; None lets Docker pick a free one (read back after start)."""
    protocol: Literal["tcp", "udp"] = "tcp"
    """Transport protocol."""


@dataclass(frozen=True)
class Limits:
    """Resource limits; None means unlimited."""

    nano_cpus: int | None = None
    """CPU quota in units of 1e-9 cores."""
    memory: int | None = None
    """Memory limit in bytes (swap is limited to the same, i.e. no extra swap)."""
    pids_limit: int | None = None
    """Maximum number of processes and threads."""


@dataclass(frozen=True)
class Security:
    """Privilege settings of the container."""

    cap_drop: tuple[str, ...] = DEFAULT_CAP_DROP
    """Capabilities removed from Docker's default set (``ALL`` for every one)."""
    cap_add: tuple[str, ...] = ()
    """Capabilities added back after the drop."""
    no_new_privileges: bool = False
    """Forbid gaining privileges through setuid binaries (breaks sudo)."""


@dataclass(frozen=True)
class ContainerSpec:
    """Everything Docker needs to create one sandbox container; hashable and engine-independent."""

    image: str
    """Image reference to run."""
    command: tuple[str, ...] = ()
    """Arguments for the image's entrypoint."""
    entrypoint: tuple[str, ...] | None = None
    """Replaces the image's entrypoint; None keeps it (agentbox's runtime images)."""
    foreign_server: bool = False
    """The image runs its own server (:func:`foreign_server_spec`), not agentbox's runtime server: no
    server volume is mounted and no ready line is awaited; whoever started it probes its readiness."""
    name: str | None = None
    """Container name (informational only: agentbox finds containers by label, never by name)."""
    hostname: str | None = None
    """Hostname inside the container."""
    mounts: tuple[Mount, ...] = ()
    """Bind and named-volume mounts."""
    ports: tuple[PortSpec, ...] = ()
    """Published ports (ignored with host networking)."""
    user: str | None = None
    """User the entrypoint starts as (the entrypoint itself switches to the sandbox uid)."""
    user_id: int | None = None
    """The sandbox uid the runtime server runs as (it must be able to create its socket in ``socket_dir``)."""
    working_dir: str | None = None
    """Default directory for ``docker exec``."""
    network_mode: Literal["bridge", "host", "none"] = "bridge"
    """``bridge``: join ``networks``; ``host``: the host's network namespace; ``none``: no network."""
    networks: tuple[str, ...] = ()
    """Networks to join (bridge mode): the first at create, the others connected before start."""
    labels: tuple[tuple[str, str], ...] = ()
    """Container labels, as sorted pairs so the spec stays hashable."""
    limits: Limits = field(default_factory=Limits)
    """CPU, memory and pids limits."""
    runtime: str | None = None
    """OCI runtime (``runsc`` for gVisor); None for the engine's default."""
    security: Security = field(default_factory=Security)
    """Capabilities and no-new-privileges."""
    stop_timeout: int = 5
    """Seconds between SIGTERM and SIGKILL on stop."""
    egress: tuple[str, ...] | None = None
    """Network policy: None is open (no gateway unless ``host_ports``); otherwise the allow-list rules
    (empty: nothing) enforced by an egress gateway the backend runs (:mod:`agentbox.netpolicy`)."""
    host_ports: tuple[int, ...] = ()
    """Host ports relayed to ``host.docker.internal`` (needs the egress gateway)."""
    environment: tuple[tuple[str, str], ...] = ()
    """Container environment (non-secret: the proxy variables of a policy sandbox)."""
    dns: tuple[str, ...] = ()
    """DNS servers (a policy sandbox's gateway)."""
    extra_hosts: tuple[tuple[str, str], ...] = ()
    """/etc/hosts entries (``host.docker.internal`` of a sandbox with host ports)."""
    socket_dir: str | None = None
    """Host directory bind-mounted at :data:`SOCKET_MOUNT`, where the server creates its Unix socket
    (``network_mode="none"``); None when the server listens on TCP."""
    key_dir: str | None = None
    """Host directory bind-mounted at :data:`RUN_MOUNT`, into which the backend writes the session key
    before start (a local engine); None when the key is copied in through the engine instead."""
    local_server: bool = False
    """The server need only be reachable from this host (``runtime_binding_address`` unset): a backend on
    a local engine may serve it on a Unix socket in ``socket_dir`` instead of the published port."""

    @property
    def has_policy(self) -> bool:
        """True when the backend must put the sandbox behind an egress gateway."""
        return self.egress is not None or bool(self.host_ports)

    @property
    def label_map(self) -> dict[str, str]:
        """The labels as a dict."""
        return dict(self.labels)


def _check_mounts(mounts: tuple[Mount, ...], allow_docker_socket: bool) -> None:
    # By resolved path and inode, not spelling: a parent directory, `/` or a symlink exposes the socket too.
    if not allow_docker_socket:
        check_bind_mounts(mounts)


def server_command(config: SandboxConfig, *, host: str, port: int) -> tuple[str, ...]:
    """The entrypoint arguments of the runtime image for this configuration."""
    command = ["--uid", str(config.user_id), "--work-dir", config.work_dir, "--host", host, "--port", str(port)]
    if config.hardened:
        command.append("--hardened")
    elif config.runtime == "runsc":
        # gVisor (at least up to Debian's 0.0~20221219) sets no_new_privs on every task whatever the
        # OCI spec says, so /usr/bin/sudo cannot elevate: the entrypoint gives default mode its sudo
        # through a root broker instead (images/files/agentbox-sudo).
        command.append("--no-setuid")
    return tuple(command)


def spec_from_config(
    config: SandboxConfig,
    *,
    image: str,
    sandbox_id: str,
    labels: dict[str, str],
    allow_docker_socket: bool = False,
) -> ContainerSpec:
    """The container spec for ``config`` running ``image``; networks are still the configured names.

    ``labels`` are attached as given (the caller adds the ``agentbox.*`` identity labels). Raises
    VolumeSpecError (a ConfigError) for a bind mount that exposes a container engine's socket, whatever
    its spelling, unless ``allow_docker_socket``.
    """
    mounts = tuple(config.volumes)
    _check_mounts(mounts, allow_docker_socket)
    egress, host_ports = _policy(config)
    if config.use_host_network:
        # No port mapping exists on the host network: the server binds the binding address itself, on a
        # port the kernel picks, which the ready line reports.
        network_mode: Literal["bridge", "host", "none"] = "host"
        networks: tuple[str, ...] = ()
        ports: tuple[PortSpec, ...] = ()
        command = server_command(config, host=config.runtime_binding_address or LOOPBACK, port=0)
    else:
        network_mode = "bridge"
        if config.network is None:
            primary = DEFAULT_NETWORK
        elif config.network == "none":
            primary = NONE_NETWORK
        else:
            primary = config.network
        networks = (primary, *config.additional_networks)
        ports = (PortSpec(SERVER_PORT, config.runtime_binding_address or LOOPBACK),)
        command = server_command(config, host="0.0.0.0", port=SERVER_PORT)
    if config.hardened:
        security = Security(cap_drop=("ALL",), cap_add=HARDENED_CAP_ADD, no_new_privileges=True)
    else:
        security = Security()
    limits = Limits(
        nano_cpus=round(config.cpus * 1e9) if config.cpus is not None else None,
        memory=config.memory,
        pids_limit=config.pids_limit,
    )
    return ContainerSpec(
        image=image,
        command=command,
        name=f"agentbox-{sandbox_id}",
        hostname=f"sandbox-{sandbox_id}"[:63],
        mounts=mounts,
        ports=ports,
        user="root",
        user_id=config.user_id,
        working_dir=config.work_dir,
        network_mode=network_mode,
        networks=networks,
        labels=tuple(sorted(labels.items())),
        limits=limits,
        runtime=None if config.runtime == "runc" else config.runtime,
        security=security,
        egress=egress,
        host_ports=host_ports,
        local_server=network_mode == "bridge" and config.runtime_binding_address is None,
    )


def with_server_volume(spec: ContainerSpec, volume: str | None) -> ContainerSpec:
    """``spec`` with the image's server volume mounted read-only at :data:`SERVER_DIR` (unchanged for
    None: an image without an agentbox server).

    The runtime server's code must not be writable from the sandbox in any mode: a read-only mount is
    the one thing neither root nor sudo inside can undo (no CAP_SYS_ADMIN). See
    :mod:`agentbox.images.server_volume`. Raises VolumeSpecError when a configured mount already
    targets :data:`SERVER_DIR`.
    """
    if volume is None:
        return spec
    for mount in spec.mounts:
        if mount.target == SERVER_DIR:
            raise VolumeSpecError(
                f"volume {mount.spec()!r}: {SERVER_DIR} holds the sandbox's runtime server and cannot be "
                "mounted over; choose another container path"
            )
    server = Mount(source=volume, target=SERVER_DIR, read_only=True, kind="volume")
    return replace(spec, mounts=(*spec.mounts, server))


def _policy(config: SandboxConfig) -> tuple[tuple[str, ...] | None, tuple[int, ...]]:
    """The spec's ``egress`` and ``host_ports``; ConfigError for combinations that cannot hold."""
    host_ports = tuple(config.host_ports)
    egress = None if config.egress == "open" else () if config.egress == "none" else tuple(config.egress)
    if config.use_host_network and (egress is not None or host_ports):
        raise ConfigError(
            "use_host_network runs the sandbox in the host's network namespace, where no egress policy or "
            "host_ports can apply; drop use_host_network or egress/host_ports"
        )
    if config.network == "none":
        if host_ports:
            raise ConfigError(
                'host_ports needs a network: network="none" has none, so host.docker.internal cannot be '
                "reached; drop host_ports or choose a network"
            )
        if egress:
            raise ConfigError(
                f'network="none" reaches nothing, so the egress allow-list {list(egress)} cannot apply; '
                'drop one of them (egress="none" with a network also reaches nothing but the runtime server)'
            )
        egress = None  # no network at all already is "none"
    return egress, host_ports


def foreign_server_spec(
    spec: ContainerSpec,
    *,
    image: str,
    command: tuple[str, ...],
    entrypoint: tuple[str, ...],
    port: int,
    environment: dict[str, str],
    working_dir: str | None,
) -> ContainerSpec:
    """``spec`` (from :func:`spec_from_config`, so the operator's volumes, networks, limits and OCI runtime
    still apply) running ``image``'s own server instead of agentbox's: ``entrypoint`` + ``command`` as
    given, listening on ``port`` inside, reached over the sandbox's network from this host (nothing is
    published). Such servers run as root and create users with sudo (OpenHands' action server), so the
    hardened mode's capability set does not apply: Docker's default set minus :data:`DEFAULT_CAP_DROP`.

    Raises ConfigError for configurations that cannot reach such a server: the host network (the port
    would be the host's), no network, or an egress policy (its gateway relays agentbox's server port only).
    """
    if spec.network_mode != "bridge" or (spec.networks and spec.networks[0] == NONE_NETWORK):
        raise ConfigError(
            "a sandbox running its image's own server needs a bridge network the service can reach it on; "
            'the operator\'s use_host_network / network="none" do not allow that'
        )
    if spec.has_policy:
        raise ConfigError(
            "a sandbox running its image's own server cannot sit behind an egress policy or host_ports "
            "(the gateway relays agentbox's runtime server only); drop egress/host_ports for this mode"
        )
    labels = {**spec.label_map, LABELS.SERVER_PORT: str(port), FOREIGN_SERVER_LABEL: "1"}
    return replace(
        spec,
        image=image,
        command=command,
        entrypoint=entrypoint,
        foreign_server=True,
        ports=(),
        user="root",
        user_id=None,
        working_dir=working_dir or spec.working_dir,
        environment=tuple(sorted({**dict(spec.environment), **environment}.items())),
        labels=tuple(sorted(labels.items())),
        security=Security(),
    )


def unix_socket_spec(spec: ContainerSpec, socket_dir: str, *, keep_network: bool = False) -> ContainerSpec:
    """``spec`` with the server on a Unix socket in the host directory ``socket_dir`` (mounted at
    :data:`SOCKET_MOUNT`) instead of on TCP, and its port not published. Without ``keep_network``, also
    without any network (only loopback)."""
    command: list[str] = []
    args = iter(spec.command)
    for arg in args:
        if arg in ("--host", "--port"):
            next(args, None)  # and its value
            continue
        command.append(arg)
    command += ["--uds", posixpath.join(SOCKET_MOUNT, SOCKET_NAME)]
    if keep_network:
        ports = tuple(p for p in spec.ports if p.container_port != SERVER_PORT)
        return replace(spec, command=tuple(command), ports=ports, socket_dir=socket_dir)
    return replace(
        spec, command=tuple(command), network_mode="none", networks=(), ports=(), socket_dir=socket_dir
    )


def _docker_mount(mount: Mount) -> Any:
    from docker.types import Mount as DockerMount

    return DockerMount(target=mount.target, source=mount.source, type=mount.kind, read_only=mount.read_only)


def to_docker_args(spec: ContainerSpec) -> dict[str, Any]:
    """Keyword arguments for ``client.containers.create(**args)`` (the container is not started).

    Only the first of ``spec.networks`` is given here; Docker API 1.41 joins one network at create, so
    the backend connects the others between create and start.
    """
    args: dict[str, Any] = {
        "image": spec.image,
        "command": list(spec.command),
        "detach": True,
        "labels": spec.label_map,
        "stop_signal": "SIGTERM",
    }
    if spec.entrypoint is not None:
        args["entrypoint"] = list(spec.entrypoint)
    if spec.name:
        args["name"] = spec.name
    if spec.user is not None:
        args["user"] = spec.user
    if spec.working_dir:
        args["working_dir"] = spec.working_dir
    mounts = list(spec.mounts)
    if spec.socket_dir:
        mounts.append(Mount(source=spec.socket_dir, target=SOCKET_MOUNT, kind="bind"))
    if spec.key_dir:
        mounts.append(Mount(source=spec.key_dir, target=RUN_MOUNT, kind="bind"))
    if mounts:
        args["mounts"] = [_docker_mount(m) for m in mounts]
    if spec.network_mode == "host":
        args["network_mode"] = "host"
    else:
        if spec.hostname:
            args["hostname"] = spec.hostname
        if spec.network_mode == "none":
            args["network_mode"] = "none"
        elif spec.networks:
            args["network"] = spec.networks[0]
        if spec.ports and spec.network_mode == "bridge":
            args["ports"] = {
                f"{p.container_port}/{p.protocol}": (p.host_ip, p.host_port) for p in spec.ports
            }
    if spec.environment:
        args["environment"] = dict(spec.environment)
    if spec.dns:
        args["dns"] = list(spec.dns)
    if spec.extra_hosts:
        args["extra_hosts"] = dict(spec.extra_hosts)
    if spec.limits.nano_cpus is not None:
        args["nano_cpus"] = spec.limits.nano_cpus
    if spec.limits.memory is not None:
        args["mem_limit"] = spec.limits.memory
        args["memswap_limit"] = spec.limits.memory
    if spec.limits.pids_limit is not None:
        args["pids_limit"] = spec.limits.pids_limit
    if spec.runtime:
        args["runtime"] = spec.runtime
    if spec.security.cap_drop:
        args["cap_drop"] = list(spec.security.cap_drop)
    if spec.security.cap_add:
        args["cap_add"] = list(spec.security.cap_add)
    if spec.security.no_new_privileges:
        args["security_opt"] = ["no-new-privileges"]
    return args
