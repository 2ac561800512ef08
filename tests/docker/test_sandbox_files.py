"""Mounts and ownership on a real engine: the host user owns what the sandbox writes; ro is read-only.

Tests taking ``sdk_mode`` run twice: locally and through an ``agentbox serve`` process on the same host
(which allows bind mounts under pytest's temporary root, see conftest).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentbox.backends.labels import LABELS
from agentbox.errors import ConfigError

pytestmark = pytest.mark.docker

ME = os.geteuid()
#: The sandbox uid of these tests: another uid than ours when we may hand a folder to it (root), else ours
#: (a sandbox runs as root before it switches: files owned by us still prove the switch happened).
UID = 1234 if ME == 0 else ME
#: A uid that is not ours, for folders the sandbox user must not be able to write.
STRANGER = 1234 if ME != 1234 else 1235


def test_files_created_in_a_bind_mount_belong_to_the_configured_uid(
    sandboxes: Callable[..., Any], tmp_path: Path, sdk_mode: str
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "existing.txt").write_text("host file")
    if ME == 0:
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
    assert os.stat(workspace / "existing.txt").st_uid == ME
    assert (workspace / "uploaded" / "sub" / "up.txt").read_text() == "uploaded"


def test_a_read_only_mount_refuses_writes(sandboxes: Callable[..., Any], tmp_path: Path, sdk_mode: str) -> None:
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


def test_the_work_dir_exists_without_mounts_and_is_the_default_cwd(
    sandboxes: Callable[..., Any], sdk_mode: str
) -> None:
    sb = sandboxes(user_id=UID, work_dir="/home/project")
    r = sb.run("pwd && touch here && stat -c %u here")
    assert r.exit_code == 0, r.output
    assert r.output.split() == ["/home/project", str(UID)]


def test_named_volume_mount_is_writable(
    sandboxes: Callable[..., Any], unique: Callable[[str], str], docker_client: Any, sdk_mode: str
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


def test_a_workspace_the_sandbox_user_cannot_write_is_refused_before_start(
    sandboxes: Callable[..., Any], tmp_path: Path, docker_client: Any
) -> None:
    workspace = tmp_path / "theirs"
    workspace.mkdir()
    (workspace / "keep.txt").write_text("mine")
    os.chmod(workspace, 0o755)  # ours, 0755: nobody else may write it
    with pytest.raises(ConfigError) as err:
        sandboxes(user_id=STRANGER, volumes=[f"{workspace}:/workspace"])
    message = str(err.value)
    assert f"uid {STRANGER}" in message and f"owned by uid {ME}" in message and "mode 0755" in message
    assert f"chown -R {STRANGER} {workspace}" in message and f"SANDBOX_USER_ID={ME}" in message
    assert err.value.sandbox_id and err.value.sandbox_id in message
    # reported before anything was created, and the user's tree is untouched
    assert docker_client.api.containers(all=True, filters={"label": f"{LABELS.SANDBOX}={err.value.sandbox_id}"}) == []
    st = os.stat(workspace)
    assert (st.st_uid, oct(st.st_mode & 0o777)) == (ME, oct(0o755))
    # read-only on purpose is fine
    sb = sandboxes(user_id=STRANGER, volumes=[f"{workspace}:/workspace:ro"])
    assert sb.run("cat /workspace/keep.txt").output.strip() == "mine"


def test_the_verdict_matches_what_the_sandbox_user_can_really_do(
    sandboxes: Callable[..., Any], tmp_path: Path
) -> None:
    # The same folder mounted elsewhere than the workspace: a warning only, and the write does fail inside.
    folder = tmp_path / "other"
    folder.mkdir()
    os.chmod(folder, 0o755)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb = sandboxes(user_id=STRANGER, volumes=[f"{folder}:/data"])
    assert any("cannot write" in str(w.message) and str(folder) in str(w.message) for w in caught)
    denied = sb.run("touch /data/x")
    assert denied.exit_code != 0 and "Permission denied" in denied.output
    # and once it is writable for everyone, no warning, and the write works
    writable = tmp_path / "open"
    writable.mkdir()
    os.chmod(writable, 0o777)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb2 = sandboxes(user_id=STRANGER, volumes=[f"{writable}:/workspace"])
    assert not [w for w in caught if "cannot write" in str(w.message)]
    assert sb2.run("touch /workspace/x").exit_code == 0
