"""SandboxConfig -> ContainerSpec -> Docker create arguments, without Docker."""

from __future__ import annotations

import dataclasses

import pytest
from docker.models.containers import _create_container_args

from agentbox.backends.spec import (
    DEFAULT_CAP_DROP,
    DEFAULT_NETWORK,
    HARDENED_CAP_ADD,
    NONE_NETWORK,
    SERVER_PORT,
    SOCKET_MOUNT,
    ContainerSpec,
    Limits,
    PortSpec,
    Security,
    spec_from_config,
    to_docker_args,
    unix_socket_spec,
)
from agentbox.config import SandboxConfig
from agentbox.errors import ConfigError
from agentbox.volumes import Mount

IMAGE = "agentbox-runtime:test"


def make(config: SandboxConfig, **kwargs: object) -> ContainerSpec:
    labels = kwargs.pop("labels", {"agentbox.sandbox": "abc123"})
    return spec_from_config(config, image=IMAGE, sandbox_id="abc123", labels=labels, **kwargs)  # type: ignore[arg-type]


def test_defaults_publish_on_loopback_with_a_docker_picked_port() -> None:
    args = to_docker_args(make(SandboxConfig(user_id=1000)))
    assert args["ports"] == {f"{SERVER_PORT}/tcp": ("127.0.0.1", None)}
    assert args["network"] == DEFAULT_NETWORK
    assert "network_mode" not in args
    assert args["user"] == "root"  # the entrypoint needs root to create the user, then drops to the uid
    assert args["working_dir"] == "/workspace"
    assert args["command"] == [
        "--uid", "1000", "--work-dir", "/workspace", "--host", "0.0.0.0", "--port", str(SERVER_PORT),
    ]
    assert args["detach"] is True
    assert args["labels"] == {"agentbox.sandbox": "abc123"}


def test_no_secret_or_environment_reaches_the_container_config() -> None:
    config = SandboxConfig(env={"TOKEN": "s3cret"})
    args = to_docker_args(make(config))
    assert "environment" not in args
    assert "s3cret" not in repr(args)


def test_binding_address_is_honoured() -> None:
    spec = make(SandboxConfig(runtime_binding_address="0.0.0.0"))
    assert to_docker_args(spec)["ports"] == {f"{SERVER_PORT}/tcp": ("0.0.0.0", None)}
    assert not spec.local_server  # an address asked for: the port is published there, never a socket instead


def test_an_unset_binding_address_means_this_host_only() -> None:
    assert make(SandboxConfig()).local_server  # a local engine may serve it on a socket instead
    assert make(SandboxConfig(runtime_binding_address="")).local_server
    assert not make(SandboxConfig(runtime_binding_address="127.0.0.1")).local_server
    assert not make(SandboxConfig(use_host_network=True)).local_server  # no bridge, no socket swap
    with pytest.raises(ValueError, match="IP address"):
        SandboxConfig(runtime_binding_address="localhost:80")


def test_a_local_server_keeps_its_networks_and_other_ports_on_a_socket() -> None:
    spec = dataclasses.replace(make(SandboxConfig(additional_networks=["cache"])), ports=(
        PortSpec(SERVER_PORT, "127.0.0.1"), PortSpec(8080, "127.0.0.1"),
    ))
    unix = unix_socket_spec(spec, "/run/agentbox/sockets/abc123", keep_network=True)
    assert (unix.network_mode, unix.networks) == ("bridge", (DEFAULT_NETWORK, "cache"))
    assert unix.ports == (PortSpec(8080, "127.0.0.1"),)  # only the server's port goes
    args = to_docker_args(unix)
    assert args["network"] == DEFAULT_NETWORK and "network_mode" not in args
    cmd = args["command"]
    assert "--host" not in cmd and "--port" not in cmd
    assert cmd[cmd.index("--uds") + 1] == f"{SOCKET_MOUNT}/server.sock"
    assert [m["Source"] for m in args["mounts"] if m["Target"] == SOCKET_MOUNT] == ["/run/agentbox/sockets/abc123"]


def test_default_capabilities_are_trimmed_but_sudo_stays_possible() -> None:
    args = to_docker_args(make(SandboxConfig()))
    assert args["cap_drop"] == list(DEFAULT_CAP_DROP)
    for cap in ("NET_RAW", "MKNOD", "SYS_CHROOT", "SETFCAP"):
        assert cap in args["cap_drop"]
    # apt-get and dpkg need these, so they must not be dropped in default mode
    for cap in ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "KILL", "FSETID"):
        assert cap not in args["cap_drop"]
    assert "security_opt" not in args
    assert "--hardened" not in args["command"]


def test_hardened_drops_all_and_forbids_new_privileges() -> None:
    args = to_docker_args(make(SandboxConfig(hardened=True)))
    assert args["cap_drop"] == ["ALL"]
    assert args["cap_add"] == list(HARDENED_CAP_ADD)
    assert args["security_opt"] == ["no-new-privileges"]
    assert args["command"][-1] == "--hardened"


def test_limits() -> None:
    args = to_docker_args(make(SandboxConfig(cpus=1.5, memory="512m", pids_limit=128)))
    assert args["nano_cpus"] == 1_500_000_000
    assert args["mem_limit"] == 512 * 1024**2
    assert args["memswap_limit"] == 512 * 1024**2  # no swap beyond the memory limit
    assert args["pids_limit"] == 128


def test_no_limits_by_default() -> None:
    args = to_docker_args(make(SandboxConfig()))
    for key in ("nano_cpus", "mem_limit", "memswap_limit", "pids_limit", "runtime"):
        assert key not in args


def test_runsc_runtime() -> None:
    assert to_docker_args(make(SandboxConfig(runtime="runsc")))["runtime"] == "runsc"


def test_mounts_bind_volume_and_read_only() -> None:
    config = SandboxConfig(volumes="/src:/workspace,/data:/data:ro,cache:/cache")
    mounts = to_docker_args(make(config))["mounts"]
    assert [dict(m) for m in mounts] == [
        {"Target": "/workspace", "Source": "/src", "Type": "bind", "ReadOnly": False},
        {"Target": "/data", "Source": "/data", "Type": "bind", "ReadOnly": True},
        {"Target": "/cache", "Source": "cache", "Type": "volume", "ReadOnly": False},
    ]


def test_docker_socket_is_refused_unless_allowed() -> None:
    config = SandboxConfig(volumes="/var/run/docker.sock:/var/run/docker.sock")
    with pytest.raises(ConfigError, match="Docker socket"):
        make(config)
    spec = make(config, allow_docker_socket=True)
    assert spec.mounts[0].source == "/var/run/docker.sock"


def test_networks_default_named_none_and_additional() -> None:
    assert make(SandboxConfig()).networks == (DEFAULT_NETWORK,)
    spec = make(SandboxConfig(network="mynet", additional_networks=["net1", "net2"]))
    assert spec.networks == ("mynet", "net1", "net2")
    # only the first network is joined at create; the backend connects the others before start
    assert to_docker_args(spec)["network"] == "mynet"
    assert make(SandboxConfig(network="none")).networks == (NONE_NETWORK,)


def test_host_network_lets_the_server_pick_its_port_on_the_binding_address() -> None:
    spec = make(SandboxConfig(use_host_network=True))
    args = to_docker_args(spec)
    assert args["network_mode"] == "host"
    assert "ports" not in args and "network" not in args and "hostname" not in args
    assert args["command"][args["command"].index("--port") + 1] == "0"
    assert args["command"][args["command"].index("--host") + 1] == "127.0.0.1"


def test_network_mode_none_spec() -> None:
    spec = ContainerSpec(image=IMAGE, network_mode="none", ports=(PortSpec(1),))
    args = to_docker_args(spec)
    assert args["network_mode"] == "none"
    assert "ports" not in args


def test_network_none_on_the_host_has_no_network_and_a_socket_directory() -> None:
    spec = make(SandboxConfig(network="none", user_id=1234, hardened=True))
    assert spec.user_id == 1234
    unix = unix_socket_spec(spec, "/run/agentbox/sockets/abc123")
    args = to_docker_args(unix)
    assert args["network_mode"] == "none"
    assert "ports" not in args and "network" not in args
    assert args["hostname"] == "sandbox-abc123"
    cmd = args["command"]
    assert "--host" not in cmd and "--port" not in cmd
    assert cmd[cmd.index("--uds") + 1] == f"{SOCKET_MOUNT}/server.sock"
    assert cmd[cmd.index("--uid") + 1] == "1234" and "--hardened" in cmd  # the rest is kept
    [mount] = [m for m in args["mounts"] if m["Target"] == SOCKET_MOUNT]
    assert (mount["Source"], mount["Type"], mount["ReadOnly"]) == ("/run/agentbox/sockets/abc123", "bind", False)
    assert dataclasses.replace(spec, socket_dir=None) == spec  # the input spec is unchanged
    assert "mounts" not in to_docker_args(spec)  # and a TCP spec mounts no socket directory


def test_user_id_and_work_dir_reach_the_entrypoint() -> None:
    args = to_docker_args(make(SandboxConfig(user_id=1234, work_dir="/work/dir")))
    cmd = args["command"]
    assert cmd[cmd.index("--uid") + 1] == "1234"
    assert cmd[cmd.index("--work-dir") + 1] == "/work/dir"
    assert args["working_dir"] == "/work/dir"


def test_spec_is_frozen_and_hashable() -> None:
    spec = make(SandboxConfig(volumes="/a:/a"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.image = "other"  # type: ignore[misc]
    assert hash(spec) == hash(make(SandboxConfig(volumes="/a:/a")))


def test_labels_are_sorted_pairs() -> None:
    spec = make(SandboxConfig(), labels={"b": "2", "a": "1"})
    assert spec.labels == (("a", "1"), ("b", "2"))
    assert spec.label_map == {"a": "1", "b": "2"}


def test_args_are_accepted_by_the_docker_sdk() -> None:
    spec = ContainerSpec(
        image=IMAGE,
        command=("--x",),
        name="n",
        hostname="h",
        mounts=(Mount("/s", "/t", True),),
        ports=(PortSpec(80, "127.0.0.1"),),
        networks=("n1", "n2"),
        labels=(("k", "v"),),
        limits=Limits(nano_cpus=10, memory=10 * 1024**2, pids_limit=5),
        runtime="runsc",
        security=Security(cap_drop=("ALL",), cap_add=("CHOWN",), no_new_privileges=True),
    )
    created = _create_container_args({**to_docker_args(spec), "version": "1.41"})
    host = created["host_config"]
    assert host["NetworkMode"] == "n1"
    assert host["PortBindings"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    assert host["PidsLimit"] == 5
    assert host["MemorySwap"] == 10 * 1024**2
    assert host["Runtime"] == "runsc"
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert created["networking_config"] == {"n1": None}
