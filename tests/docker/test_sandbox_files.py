"""Mounts and ownership on a real engine: the host user owns what the sandbox writes; ro is read-only."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.docker

UID = 1234


def test_files_created_in_a_bind_mount_belong_to_the_configured_uid(
    sandboxes: Callable[..., Any], tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "existing.txt").write_text("host file")
    os.chown(workspace, UID, UID)  # the user's own checkout, as it would be on their machine
    local = tmp_path / "upload"
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "up.txt").write_text("uploaded")

    sb = sandboxes(user_id=UID, volumes=[f"{workspace}:/workspace"])
    made = sb.run("mkdir -p bycmd && echo x > bycmd/cmd.txt && id -u && pwd")
    assert made.exit_code == 0, made.output
    assert made.output.split()[0] == str(UID)
    assert made.cwd == "/workspace"
    sb.write_file("/workspace/written.txt", "written")
    sb.upload(str(local), "/workspace/uploaded")

    for rel in ("bycmd", "bycmd/cmd.txt", "written.txt", "uploaded", "uploaded/sub", "uploaded/sub/up.txt"):
        st = os.stat(workspace / rel)
        assert (st.st_uid, st.st_gid) == (UID, UID), rel
    # the user's existing tree is never chowned
    assert os.stat(workspace / "existing.txt").st_uid == 0
    assert (workspace / "uploaded" / "sub" / "up.txt").read_text() == "uploaded"


def test_a_read_only_mount_refuses_writes(sandboxes: Callable[..., Any], tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "ref.txt").write_text("reference")
    os.chmod(data, 0o777)  # writable by anyone on the host: only the ro mount can stop the write
    sb = sandboxes(user_id=UID, volumes=[f"{data}:/data:ro"])
    read = sb.run("cat /data/ref.txt")
    assert read.output.strip() == "reference"
    denied = sb.run("touch /data/new.txt")
    assert denied.exit_code != 0
    assert "Read-only file system" in denied.output
    root_denied = sb.run("sudo touch /data/new.txt")  # not even root inside can write
    assert root_denied.exit_code != 0
    assert not (data / "new.txt").exists()


def test_the_work_dir_exists_without_mounts_and_is_the_default_cwd(sandboxes: Callable[..., Any]) -> None:
    sb = sandboxes(user_id=UID, work_dir="/home/project")
    r = sb.run("pwd && touch here && stat -c %u here")
    assert r.exit_code == 0, r.output
    assert r.output.split() == ["/home/project", str(UID)]


def test_named_volume_mount_is_writable(
    sandboxes: Callable[..., Any], unique: Callable[[str], str], docker_client: Any
) -> None:
    name = unique("vol")
    sb = sandboxes(user_id=UID, volumes=[f"{name}:/workspace"])
    r = sb.run("echo kept > kept.txt && cat kept.txt")
    assert r.exit_code == 0 and r.output.strip() == "kept", r.output
    labels = docker_client.api.inspect_volume(name)["Labels"]
    assert labels["agentbox.test"] == "1"
    sb.close()
    # a named volume is the user's data: it outlives the sandbox
    assert docker_client.api.inspect_volume(name)["Name"] == name
