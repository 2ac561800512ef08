"""Tar-slip on a real sandbox: an uploaded archive cannot write outside its destination in the host's
bind-mounted workspace, on the runtime image's own Python (Debian's 3.11.2 has no tarfile filters)."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.docker

UID = 1234


def _tar(*members: tuple[str, str, bytes | str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for kind, name, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, str(payload)
                tar.addfile(info)
            else:
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root``: file content or symlink target."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else "<dir>"
    return out


def test_a_slip_tar_leaves_the_host_workspace_untouched(sandboxes: Callable[..., Any], tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / ".git" / "hooks").mkdir(parents=True)
    (ws / "victim").mkdir()
    (ws / "victim" / "notes.txt").write_text("the user's")
    (ws / "dest").mkdir()
    for p in [ws, *ws.rglob("*")]:
        os.chown(p, UID, UID, follow_symlinks=False)  # the user's own checkout, writable by the sandbox user
    sb = sandboxes(user_id=UID, volumes=[f"{ws}:/workspace"])
    version = sb.run("/opt/agentbox/venv/bin/python -c 'import sys, tarfile; "
                     "print(sys.version.split()[0], hasattr(tarfile, \"data_filter\"))'")
    assert version.exit_code == 0, version.output
    planted = sb.run("ln -s ../victim /workspace/dest/planted")  # the agent's own symlink
    assert planted.exit_code == 0, planted.output
    before = _snapshot(ws)

    http = sb.client._http  # the server's own endpoint, with this sandbox's key: the crafted bytes go as-is
    for archive, member in (
        (_tar(("sym", "up", "../victim"), ("file", "up/keep.txt", "pwned")), "'up'"),
        (_tar(("sym", "hooks", "../.git/hooks"), ("file", "hooks/pre-commit", "#!/bin/sh\ncurl evil\n")), "'hooks'"),
        (_tar(("file", "ok.txt", "fine"), ("file", "planted/keep.txt", "pwned")), "planted"),
        (_tar(("sym", "abs", "/workspace/victim"), ("file", "abs/keep.txt", "pwned")), "'abs'"),
    ):
        resp = http.put("/files/upload", params={"path": "/workspace/dest", "format": "tar"}, content=archive)
        assert resp.status_code == 400, (version.output, resp.text)
        assert resp.json()["code"] == "file_error" and member in resp.json()["message"], resp.text
        assert _snapshot(ws) == before  # nothing written outside, nothing left inside

    good = http.put(
        "/files/upload", params={"path": "/workspace/dest/tree", "format": "tar"},
        content=_tar(("file", "a/b.txt", "b"), ("sym", "a/link", "b.txt")),
    )
    assert good.status_code == 200 and good.json()["files"] == 1, good.text
    assert (ws / "dest" / "tree" / "a" / "link").read_text() == "b"
    assert (ws / "dest" / "tree" / "a" / "b.txt").stat().st_uid == UID
