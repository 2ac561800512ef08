"""The session-key directories of a local engine's sandboxes: placement, the handover, removal, sweep
(pure: no engine; the handover on a real engine is in tests/docker/test_key_handover.py)."""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agentbox.backends.docker import DockerBackend
from agentbox.backends.docker.keydirs import KeyDirs
from agentbox.backends.docker.sockets import SocketDirs
from agentbox.backends.labels import LABELS
from agentbox.backends.spec import RUN_MOUNT, ContainerSpec, to_docker_args
from agentbox.errors import SandboxError

NO_ENGINE: Any = object()


def _spec() -> ContainerSpec:
    from agentbox.backends.spec import spec_from_config
    from agentbox.config import SandboxConfig

    return spec_from_config(SandboxConfig(), image="img", sandbox_id="abc123", labels={LABELS.SANDBOX: "abc123"})


def test_a_placed_spec_mounts_a_private_directory_at_the_run_dir(tmp_path: Path) -> None:
    keys = KeyDirs(tmp_path / "agentbox" / "keys")
    placed = keys.place(_spec(), "abc123")
    directory = tmp_path / "agentbox" / "keys" / "abc123"
    assert placed.key_dir == str(directory) and placed.label_map[LABELS.KEY_DIR] == str(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(directory.parent.stat().st_mode) == 0o700
    mounts = {(m["Target"], m["Source"], m["Type"], m["ReadOnly"]) for m in to_docker_args(placed)["mounts"]}
    assert (RUN_MOUNT, str(directory), "bind", False) in mounts
    assert not any(m["Target"] == RUN_MOUNT for m in to_docker_args(_spec()).get("mounts", []))


def test_the_handover_writes_each_file_whole_in_order_with_its_mode(tmp_path: Path) -> None:
    keys = KeyDirs(tmp_path / "agentbox" / "keys")
    directory = keys.make("abc123")
    keys.hand_over(str(directory), {"env.sh": (b"export A=b\n", 0o600), "session-key": (b"k" * 43, 0o600)})
    assert sorted(os.listdir(directory)) == ["env.sh", "session-key"]  # no temporary file is left
    assert (directory / "session-key").read_bytes() == b"k" * 43
    assert stat.S_IMODE((directory / "session-key").stat().st_mode) == 0o600
    # The key is written last: the entrypoint goes on once it is there, and env.sh must be complete by then.
    assert (directory / "env.sh").stat().st_mtime_ns <= (directory / "session-key").stat().st_mtime_ns


def test_the_handover_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    keys = KeyDirs(tmp_path / "agentbox" / "keys")
    directory = keys.make("abc123")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    # A restarted sandbox's user owns its directory and may leave anything under the key's name.
    (directory / "session-key").symlink_to(victim)
    keys.hand_over(str(directory), {"session-key": (b"new-key", 0o600)})
    assert victim.read_text() == "precious"
    assert not (directory / "session-key").is_symlink() and (directory / "session-key").read_bytes() == b"new-key"


def test_a_failed_handover_leaves_no_temporary_file(tmp_path: Path) -> None:
    keys = KeyDirs(tmp_path / "agentbox" / "keys")
    directory = keys.make("abc123")
    (directory / "session-key").mkdir()  # a rename cannot replace a directory with a file
    with pytest.raises(OSError):
        keys.hand_over(str(directory), {"session-key": (b"k", 0o600)})
    assert os.listdir(directory) == ["session-key"]


def test_a_key_directory_is_only_owned_and_removed_where_agentbox_makes_them(tmp_path: Path) -> None:
    keys = KeyDirs(tmp_path / "agentbox" / "keys")
    victim = tmp_path / "home" / "abc123"
    victim.mkdir(parents=True)
    assert not keys.owns(str(victim), "abc123")
    keys.remove(str(victim), "abc123")  # a label pointing elsewhere: left alone
    sockets = tmp_path / "agentbox" / "sockets" / "abc123"
    sockets.mkdir(parents=True)
    assert not keys.owns(str(sockets), "abc123")  # the other kind's directory is not a key directory
    keys.remove(str(sockets), "abc123")
    assert victim.exists() and sockets.exists()
    own = keys.make("abc123")
    assert keys.owns(str(own), "abc123") and not keys.owns(str(own), "other1")
    # A key is only ever written into this root's own directory, never one of the same form elsewhere.
    elsewhere = tmp_path / "other" / "agentbox" / "keys" / "abc123"
    assert keys.made_here(str(own), "abc123") and keys.owns(str(elsewhere), "abc123")
    assert not keys.made_here(str(elsewhere), "abc123") and not keys.made_here(str(own), "other1")
    keys.remove(str(own), "abc123")
    assert not own.exists()
    with pytest.raises(SandboxError, match="invalid sandbox id"):
        keys.path("../etc")


def test_sweep_removes_settled_directories_of_gone_sandboxes_only(tmp_path: Path) -> None:
    for dirs in (KeyDirs(tmp_path / "agentbox" / "keys"), SocketDirs(tmp_path / "agentbox" / "sockets")):
        gone, present, young = dirs.make("gone01"), dirs.make("here01"), dirs.make("young1")
        settled = time.time() - 3600
        for path in (gone, present):
            os.utime(path, (settled, settled))
        dirs.sweep(dirs.candidates(), {"here01"})
        assert not gone.exists() and present.exists() and young.exists(), dirs.kind


def _backend(tmp_path: Path, *, shares_files: bool) -> DockerBackend:
    b = DockerBackend(client=NO_ENGINE, keys=tmp_path / "agentbox" / "keys", sockets=tmp_path / "agentbox" / "sockets")
    b._facts.get("shares-files", lambda: shares_files)  # as if asked: the engine does (not) share our files
    return b


def test_only_a_sandbox_on_an_engine_sharing_this_hosts_files_gets_a_key_directory(tmp_path: Path) -> None:
    spec = _spec()
    assert _backend(tmp_path, shares_files=True)._with_key_dir(spec).key_dir is not None
    assert _backend(tmp_path, shares_files=False)._with_key_dir(spec).key_dir is None  # remote: copied in
    b = _backend(tmp_path, shares_files=True)
    # gVisor's gofer may not show a restarted sandbox a file written on the host later; an image's own
    # server reads a copied key; a spec without a sandbox id has no directory name.
    assert b._with_key_dir(replace(spec, runtime="runsc")).key_dir is None
    assert b._with_key_dir(replace(spec, foreign_server=True)).key_dir is None
    assert b._with_key_dir(replace(spec, labels=())).key_dir is None

    off = DockerBackend(client=NO_ENGINE, keys=tmp_path / "k2" / "agentbox" / "keys", mount_keys=False)
    assert off.keys is None and off._with_key_dir(spec).key_dir is None


def test_only_a_this_host_only_server_on_a_local_engine_moves_to_a_socket(tmp_path: Path) -> None:
    from agentbox.backends.spec import DEFAULT_NETWORK, PortSpec

    spec = replace(_spec(), networks=(DEFAULT_NETWORK,))  # as placed: the configured name resolved
    b = _backend(tmp_path, shares_files=True)
    placed = b._with_server_socket(spec)
    assert placed.socket_dir == str(tmp_path / "agentbox" / "sockets" / "abc123") and placed.ports == ()
    assert placed.networks == (DEFAULT_NETWORK,) and placed.network_mode == "bridge"
    assert placed.label_map[LABELS.SOCKET_DIR] == placed.socket_dir  # removed with the sandbox, swept if not
    assert b._joins_after_start(placed)  # no network needed to reach it: joined while the server boots
    assert not b._joins_after_start(replace(placed, ports=(PortSpec(8080),)))  # something to publish
    assert not b._joins_after_start(replace(placed, networks=("mynet",)))  # may be removed as unused meanwhile
    # A remote engine, an address asked for, gVisor, an egress gateway, an image's own server: a port.
    assert _backend(tmp_path, shares_files=False)._with_server_socket(spec).socket_dir is None
    for other in (
        replace(spec, local_server=False), replace(spec, runtime="runsc"), replace(spec, egress=()),
        replace(spec, foreign_server=True), replace(spec, labels=()),
    ):
        assert b._with_server_socket(other) == other
        assert not b._joins_after_start(other)


def test_a_backend_sweeps_forgotten_key_and_socket_directories_now_and_then(tmp_path: Path) -> None:
    b = _backend(tmp_path, shares_files=True)
    keys = b.keys
    assert keys is not None
    forgotten, live = keys.make("gone01"), keys.make("here01")
    socket_dir = b.sockets.make("gone03")  # a network-less sandbox's, gone the same way
    settled = time.time() - 3600
    for path in (forgotten, live, socket_dir):
        os.utime(path, (settled, settled))
    b.present_ids = lambda: {"here01"}  # type: ignore[method-assign]
    b._sweep_dirs_now_and_then()  # what a backend's first create with a key directory calls
    for thread in threading.enumerate():
        if thread.name == "agentbox-key-sweep":
            thread.join(10)
    assert not forgotten.exists() and not socket_dir.exists() and live.exists()
    again = keys.make("gone02")
    os.utime(again, (settled, settled))
    b._sweep_dirs_now_and_then()  # not again so soon
    assert again.exists()
