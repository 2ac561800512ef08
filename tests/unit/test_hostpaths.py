"""The engine-socket guard judges bind mounts by what their host path resolves to, not how it is spelt.

Every test works on a temp tree with a fake socket (a real Unix socket file bound in tmp_path) that the
guard is told is the engine's, so nothing depends on this machine's /run.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentbox import hostpaths
from agentbox.backends.spec import spec_from_config
from agentbox.config import SandboxConfig
from agentbox.errors import ConfigError, VolumeSpecError
from agentbox.hostpaths import check_bind_mounts, engine_sockets, exposed_socket
from agentbox.volumes import Mount, parse_volume


@pytest.fixture()
def fake_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """tmp/run/engine/api.sock is "the" engine socket; tmp/varrun -> run mimics Debian's /var/run."""
    run = tmp_path / "run"
    (run / "engine").mkdir(parents=True)
    sock_path = run / "engine" / "api.sock"
    # A short relative bind: sun_path is 108 bytes and tmp_path can be longer.
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = os.getcwd()
    os.chdir(sock_path.parent)
    try:
        server.bind("api.sock")
    finally:
        os.chdir(cwd)
    (tmp_path / "varrun").symlink_to(run)
    (tmp_path / "data").mkdir()
    monkeypatch.setattr(hostpaths, "ENGINE_SOCKETS", (str(tmp_path / "varrun" / "engine" / "api.sock"),))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    try:
        yield tmp_path
    finally:
        server.close()


def test_socket_list_holds_the_spelled_and_the_resolved_path(fake_run: Path) -> None:
    assert engine_sockets() == (
        str(fake_run / "varrun" / "engine" / "api.sock"),
        str(fake_run / "run" / "engine" / "api.sock"),
    )


def test_docker_host_unix_path_and_rootless_socket_are_engine_sockets() -> None:
    env = {"DOCKER_HOST": "unix:///srv/engine.sock", "XDG_RUNTIME_DIR": "/run/user/1000"}
    found = engine_sockets(env)
    assert "/srv/engine.sock" in found and "/run/user/1000/docker.sock" in found
    assert "/srv/engine.sock" not in engine_sockets({"DOCKER_HOST": "tcp://10.0.0.1:2375"})


@pytest.mark.parametrize(
    "source",
    [
        "run/engine/api.sock",  # the socket itself
        "varrun/engine/api.sock",  # through the symlinked parent
        "run",  # a parent directory
        "varrun",  # a symlink to a parent directory
        "run/engine",
        "run/./engine/../engine",  # odd spelling of a parent
    ],
)
def test_the_socket_or_a_parent_whatever_the_spelling_is_exposed(fake_run: Path, source: str) -> None:
    assert exposed_socket(str(fake_run / source)) is not None


def test_symlinks_to_the_socket_and_to_its_directory_are_exposed(fake_run: Path) -> None:
    (fake_run / "data" / "link.sock").symlink_to(fake_run / "varrun" / "engine" / "api.sock")
    (fake_run / "data" / "linkdir").symlink_to(fake_run / "run" / "engine")
    sock = exposed_socket(str(fake_run / "data" / "link.sock"))
    assert sock is not None and sock.is_socket
    directory = exposed_socket(str(fake_run / "data" / "linkdir"))
    assert directory is not None and not directory.is_socket


def test_a_hard_link_to_the_socket_is_exposed(fake_run: Path) -> None:
    os.link(fake_run / "run" / "engine" / "api.sock", fake_run / "data" / "hard")
    found = exposed_socket(str(fake_run / "data" / "hard"))
    assert found is not None and found.is_socket


def test_unrelated_paths_and_siblings_are_not_exposed(fake_run: Path) -> None:
    (fake_run / "run" / "engine-other").mkdir()
    for source in ("data", "run/engine-other", "does/not/exist"):
        assert exposed_socket(str(fake_run / source)) is None, source


def test_root_always_contains_the_socket(fake_run: Path) -> None:
    found = exposed_socket("/")
    assert found is not None and not found.is_socket


@pytest.mark.parametrize("name", ["docker.sock", "containerd.sock"])
def test_socket_names_are_refused_anywhere(fake_run: Path, name: str) -> None:
    assert exposed_socket(str(fake_run / "data" / name)) is not None


def test_error_names_the_mount_the_socket_and_the_way_out(fake_run: Path) -> None:
    mount = parse_volume(f"{fake_run / 'varrun'}:/hostrun:ro")
    with pytest.raises(VolumeSpecError) as info:
        check_bind_mounts([mount])
    message = str(info.value)
    assert mount.spec() in message
    assert str(fake_run / "varrun" / "engine" / "api.sock") in message
    assert f"resolves to {fake_run / 'run'}" in message
    assert "allow_docker_socket=True" in message
    assert "Mounting '/'" not in message


def test_error_for_root_says_what_mounting_root_means() -> None:
    with pytest.raises(VolumeSpecError, match=r"Mounting '/' hands the sandbox the host's whole file system"):
        check_bind_mounts([parse_volume("/:/host:ro")])


def test_named_volumes_and_harmless_binds_pass(fake_run: Path) -> None:
    check_bind_mounts([Mount("run", "/x", kind="volume"), parse_volume(f"{fake_run / 'data'}:/data")])


def test_spec_from_config_refuses_a_parent_unless_allowed(fake_run: Path) -> None:
    config = SandboxConfig(volumes=f"{fake_run / 'varrun'}:/hostrun:ro")
    with pytest.raises(ConfigError, match="allow_docker_socket"):
        spec_from_config(config, image="img", sandbox_id="abc123", labels={})
    spec = spec_from_config(config, image="img", sandbox_id="abc123", labels={}, allow_docker_socket=True)
    assert spec.mounts[0].source == str(fake_run / "varrun")
