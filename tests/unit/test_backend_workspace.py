"""A workspace the sandbox user cannot write is reported before start, with owner, mode and fixes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agentbox.backends.workspace import unwritable_reason
from agentbox.volumes import Mount


def _owned(path: Path, uid: int, gid: int, mode: int) -> Path:
    """``path`` as if owned by uid:gid: really chowned when root, else the test uses our own uid."""
    path.mkdir(exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


def test_another_users_folder_is_reported_with_owner_mode_and_fixes(tmp_path: Path) -> None:
    me = os.geteuid()
    other = me + 1000  # any uid that is not the owner
    folder = _owned(tmp_path / "ws", me, os.getegid(), 0o755) if me != 0 else _owned(tmp_path / "ws", 0, 0, 0o755)
    owner = os.stat(folder).st_uid
    reason = unwritable_reason(Mount(str(folder), "/workspace"), other)
    assert reason is not None
    assert f"uid {other}" in reason and f"owned by uid {owner}" in reason and "mode 0755" in reason
    assert f"chown -R {other} {folder}" in reason and f"SANDBOX_USER_ID={owner}" in reason
    assert str(folder) in reason and ":ro" in reason


def test_writable_cases_are_not_reported(tmp_path: Path) -> None:
    me = os.geteuid()
    other = me + 1000
    own = _owned(tmp_path / "own", me, os.getegid(), 0o755)
    assert unwritable_reason(Mount(str(own), "/workspace"), me if me != 0 else 0, root_bypasses=False) is None
    world = _owned(tmp_path / "world", me, os.getegid(), 0o777)
    assert unwritable_reason(Mount(str(world), "/workspace"), other) is None
    # read-only mounts are meant not to be written; named volumes are the engine's; missing: the engine says
    assert unwritable_reason(Mount(str(own), "/workspace", read_only=True), other) is None
    assert unwritable_reason(Mount("myvol", "/workspace", kind="volume"), other) is None
    assert unwritable_reason(Mount(str(tmp_path / "missing"), "/workspace"), other) is None


def test_root_in_the_sandbox_writes_anything_unless_hardened(tmp_path: Path) -> None:
    folder = _owned(tmp_path / "ro", os.geteuid(), os.getegid(), 0o555)
    assert unwritable_reason(Mount(str(folder), "/workspace"), 0) is None
    # hardened: uid 0 without CAP_DAC_OVERRIDE is held to the mode bits like anyone (0555: no write bit)
    reason = unwritable_reason(Mount(str(folder), "/workspace"), 0, root_bypasses=False)
    assert reason is not None and "mode 0555" in reason


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another uid needs root")
def test_group_write_counts_for_the_sandbox_group(tmp_path: Path) -> None:
    folder = _owned(tmp_path / "grp", 0, 1234, 0o775)  # gid 1234: the sandbox user's own group inside
    assert unwritable_reason(Mount(str(folder), "/workspace"), 1234) is None
    os.chmod(folder, 0o755)
    assert unwritable_reason(Mount(str(folder), "/workspace"), 1234) is not None
