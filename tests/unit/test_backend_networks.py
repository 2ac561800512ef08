"""Pure parts of the Docker backend: network name resolution (Compose prefixes), the secrets archive,
the state store, and endpoint selection."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from agentbox.backends.docker import DockerBackend, NetworkRef, resolve_network_name
from agentbox.backends.docker.endpoints import Placement, choose_endpoint, placement_of, url
from agentbox.backends.docker.lifecycle import secrets_tar
from agentbox.backends.labels import LABELS
from agentbox.backends.spec import ContainerSpec
from agentbox.backends.state import SandboxRecord, StateStore
from agentbox.errors import ConfigError, NetworkNotFoundError, SandboxError


def net(name: str, project: str | None = None, key: str | None = None) -> NetworkRef:
    labels = {}
    if project is not None:
        labels = {"com.docker.compose.network": key or name.split("_", 1)[1], "com.docker.compose.project": project}
    return NetworkRef(name=name, id=f"id-{name}".ljust(64, "0"), labels=labels)


def test_exact_name_wins_without_warning() -> None:
    found, warning = resolve_network_name("cache", [net("cache"), net("proj_cache", "proj")])
    assert found is not None and found.name == "cache"
    assert warning is None


def test_single_compose_match_is_used_with_a_warning() -> None:
    found, warning = resolve_network_name("cache", [net("bridge"), net("myproj_cache", "myproj")])
    assert found is not None and found.name == "myproj_cache"
    assert warning is not None and "myproj_cache" in warning and "myproj" in warning


def test_several_compose_matches_fail_listing_them() -> None:
    with pytest.raises(NetworkNotFoundError) as err:
        resolve_network_name("cache", [net("a_cache", "a"), net("b_cache", "b")])
    assert "'a_cache'" in str(err.value) and "'b_cache'" in str(err.value)


def test_compose_match_is_by_label_not_by_suffix() -> None:
    # a network that merely ends in _cache is not a Compose network for "cache"
    found, warning = resolve_network_name("cache", [net("x_cache"), net("proj_other", "proj")])
    assert found is None and warning is None


def test_unknown_name_gives_none() -> None:
    assert resolve_network_name("nope", [net("bridge")]) == (None, None)


def test_duplicate_exact_names_are_ambiguous() -> None:
    a = NetworkRef("dup", "a" * 64, {})
    b = NetworkRef("dup", "b" * 64, {})
    with pytest.raises(NetworkNotFoundError, match="several Docker networks"):
        resolve_network_name("dup", [a, b])


def test_full_id_matches() -> None:
    n = net("cache")
    assert resolve_network_name(n.id, [n])[0] == n


def test_secrets_tar_holds_the_files_with_their_modes() -> None:
    data = secrets_tar({"session-key": (b"k3y", 0o600), "env.sh": (b"export A='1'\n", 0o600)})
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["agentbox"].isdir() and members["agentbox"].mode == 0o700
        assert members["agentbox/session-key"].mode == 0o600
        f = tar.extractfile(members["agentbox/session-key"])
        assert f is not None and f.read() == b"k3y"


def test_state_store_is_private_and_round_trips(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    record = SandboxRecord(id="abc123", key="secret", container_id="c" * 64, owner_pid=1, owner_host="h", config={})
    store.save(record)
    path = store.path("abc123")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert store.load("abc123") == record
    assert "secret" not in repr(record)
    assert store.ids() == ["abc123"]
    store.delete("abc123")
    assert store.load("abc123") is None
    store.delete("abc123")  # idempotent


def test_state_store_rejects_path_tricks(tmp_path: Path) -> None:
    with pytest.raises(SandboxError):
        StateStore(tmp_path).path("../etc/passwd")


def test_url_forms() -> None:
    assert url("0.0.0.0", 5) == "http://127.0.0.1:5"
    assert url("::", 5) == "http://[::1]:5"
    assert url("[::1]", 5) == "http://[::1]:5"
    assert url("10.0.0.2", 5) == "http://10.0.0.2:5"


def test_endpoint_prefers_the_published_port() -> None:
    placement = Placement("agentbox-net", [("127.0.0.1", 32768, 49983)], {"agentbox-net": "172.20.0.2"}, 49983)
    ep = choose_endpoint(placement)
    assert (ep.url, ep.via) == ("http://127.0.0.1:32768", "published")


def test_endpoint_in_a_container_uses_the_control_network() -> None:
    placement = Placement("agentbox-net", [("127.0.0.1", 32768, 49983)], {"agentbox-ctl-mmmm": "172.30.0.5"}, 49983)
    ep = choose_endpoint(placement, control_network="agentbox-ctl-mmmm")
    assert (ep.url, ep.via) == ("http://172.30.0.5:49983", "network")
    # a control network the sandbox is not on: the published port, as from the host
    assert choose_endpoint(placement, control_network="agentbox-ctl-other").via == "published"


def test_endpoint_of_an_internal_network_sandbox_is_its_address() -> None:
    placement = Placement("agentbox-none", [], {"agentbox-none": "172.21.0.3"}, 49983)
    assert choose_endpoint(placement).url == "http://172.21.0.3:49983"


def test_endpoint_of_a_network_less_sandbox_is_its_socket() -> None:
    placement = Placement("none", [], {}, 49983, socket_dir="/run/agentbox/sockets/abc123")
    ep = choose_endpoint(placement)
    assert (ep.url, ep.via, ep.uds) == ("http://sandbox", "unix", "/run/agentbox/sockets/abc123/server.sock")


def test_endpoint_of_a_host_network_sandbox_comes_from_its_ready_line_or_record() -> None:
    placement = Placement("host", [], {}, 49983)
    assert choose_endpoint(placement, ready=("0.0.0.0", 41000)).url == "http://127.0.0.1:41000"
    assert choose_endpoint(placement, recorded_url="http://127.0.0.1:41001").url == "http://127.0.0.1:41001"
    with pytest.raises(SandboxError, match="state file"):
        choose_endpoint(placement)


def test_endpoint_without_any_way_in_says_so() -> None:
    with pytest.raises(SandboxError, match="not published"):
        choose_endpoint(Placement("agentbox-net", [], {"agentbox-net": "172.20.0.2"}, 49983))


INSPECT = {
    "Id": "c" * 64,
    "Config": {"Labels": {LABELS.SERVER_PORT: "49983", LABELS.SANDBOX: "abc123"}},
    "HostConfig": {"NetworkMode": "agentbox-net"},
    "NetworkSettings": {
        "Ports": {"49983/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32768"}], "8080/tcp": None},
        "Networks": {"agentbox-net": {"IPAddress": "172.20.0.2"}, "side": {"IPAddress": ""}},
    },
}
SUMMARY = {
    "Id": "c" * 64,
    "Labels": {LABELS.SERVER_PORT: "49983", LABELS.SANDBOX: "abc123"},
    "HostConfig": {"NetworkMode": "agentbox-net"},
    "Ports": [{"IP": "127.0.0.1", "PrivatePort": 49983, "PublicPort": 32768, "Type": "tcp"}, {"PrivatePort": 8080}],
    "NetworkSettings": {"Networks": {"agentbox-net": {"IPAddress": "172.20.0.2"}, "side": {"IPAddress": ""}}},
}


def test_one_placement_parser_reads_an_inspect_and_a_list_summary_alike() -> None:
    expected = Placement("agentbox-net", [("127.0.0.1", 32768, 49983)], {"agentbox-net": "172.20.0.2"}, 49983)
    assert placement_of(INSPECT) == expected
    assert placement_of(SUMMARY) == expected


def test_a_placement_keeps_the_socket_dir_and_a_custom_server_port() -> None:
    labels = {LABELS.SERVER_PORT: "4000", LABELS.SOCKET_DIR: "/run/agentbox/sockets/abc123"}
    placement = placement_of({"Config": {"Labels": labels}, "HostConfig": {"NetworkMode": "none"}})
    assert (placement.server_port, placement.socket_dir, placement.published) == (
        4000, "/run/agentbox/sockets/abc123", []
    )


#: Stands in for the docker client: these tests must not reach an engine.
NO_ENGINE: Any = object()


def _backend(sockets: Path) -> DockerBackend:
    b = DockerBackend(client=NO_ENGINE, sockets=sockets)
    b._facts.get("manager", lambda: (None, False))  # as if detected: not in a container
    return b


def _none_spec(**kwargs: object) -> ContainerSpec:
    from agentbox.backends.spec import spec_from_config
    from agentbox.config import SandboxConfig

    config = SandboxConfig(network="none", user_id=os.geteuid(), **kwargs)
    return spec_from_config(config, image="img", sandbox_id="abc123", labels={LABELS.SANDBOX: "abc123"})


def test_network_none_on_the_host_gets_a_private_socket_directory(tmp_path: Path) -> None:
    sockets = tmp_path / "agentbox" / "sockets"
    b = _backend(sockets)
    placed, created = b._place(_none_spec())
    directory = sockets / "abc123"
    assert created == [] and placed.network_mode == "none" and placed.networks == () and placed.ports == ()
    assert placed.socket_dir == str(directory)
    assert placed.label_map[LABELS.SOCKET_DIR] == str(directory)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    with pytest.raises(ConfigError, match="additional_networks"):
        b._place(_none_spec(additional_networks=["side"]))
    b.sockets.remove(str(directory), "abc123")
    assert not directory.exists()


def test_a_socket_directory_is_removed_only_where_agentbox_makes_them(tmp_path: Path) -> None:
    b = _backend(tmp_path / "agentbox" / "sockets")
    victim = tmp_path / "home" / "abc123"
    victim.mkdir(parents=True)
    b.sockets.remove(str(victim), "abc123")  # a label pointing elsewhere: left alone
    b.sockets.remove(str(tmp_path / "agentbox" / "sockets" / "abc123"), "other1")  # another sandbox's
    assert victim.exists()


def test_env_script_quotes_values() -> None:
    from agentbox.sandbox import _env_script

    script = _env_script({"A": "it's $HOME", "B": "x"}).decode()
    assert script == "export A='it'\"'\"'s $HOME'\nexport B=x\n"
