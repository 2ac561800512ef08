"""The SDK's everyday calls behave the same locally and through the service (each test runs in both
modes, ``sdk_mode``): commands and their shell state, files, transfers, streams, Python, background
commands, reattach, list and remove."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentbox.backends.base import SandboxState
from agentbox.errors import SandboxError, SandboxNotFoundError
from agentbox.protocol import OutputChunk, StreamEnd
from agentbox.sandbox import Sandbox

pytestmark = pytest.mark.docker


def test_run_keeps_cwd_and_env_between_commands(sandboxes: Callable[..., Any], sdk_mode: str) -> None:
    sb = sandboxes()
    assert ("/v1/sandboxes/" in sb.url) == (sdk_mode == "service")  # really through the service's proxy
    first = sb.run("mkdir -p /tmp/here && cd /tmp/here && export CARRIED=over")
    assert first.exit_code == 0 and first.cwd == "/tmp/here"
    second = sb.run("pwd; echo $CARRIED; exit 3")
    assert second.output.split() == ["/tmp/here", "over"]
    assert second.exit_code == 3


def test_files_read_write_list_and_bytes(sandboxes: Callable[..., Any], sdk_mode: str) -> None:
    sb = sandboxes()
    written = sb.write_file("notes/a.txt", "line 1\nline 2\n")
    assert written.path == "/workspace/notes/a.txt"
    assert sb.read_file("notes/a.txt", start_line=2).content == "line 2\n"
    blob = bytes(range(256)) * 64
    sb.write_file("blob.bin", blob)
    assert sb.read_bytes("blob.bin") == blob
    names = {entry.name for entry in sb.list_dir("notes").entries}
    assert names == {"a.txt"}


def test_upload_and_download_trees(sandboxes: Callable[..., Any], tmp_path: Path, sdk_mode: str) -> None:
    sb = sandboxes()
    src = tmp_path / "src"
    (src / "deep" / "er").mkdir(parents=True)
    (src / "deep" / "er" / "f.txt").write_text("uploaded")
    (src / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))  # beyond the proxy's one-read size
    sb.upload(src, "/tmp/up")
    assert sb.run("cat /tmp/up/deep/er/f.txt").output.strip() == "uploaded"
    sb.run("echo made inside > /tmp/up/deep/inside.txt")
    out = Path(sb.download("/tmp/up", tmp_path / "back"))
    assert (out / "deep" / "er" / "f.txt").read_text() == "uploaded"
    assert (out / "deep" / "inside.txt").read_text() == "made inside\n"
    assert (out / "big.bin").read_bytes() == (src / "big.bin").read_bytes()


def test_stream_yields_chunks_then_the_result(sandboxes: Callable[..., Any], sdk_mode: str) -> None:
    sb = sandboxes()
    events = list(sb.stream("for i in 1 2 3; do echo line $i; sleep 0.2; done; cd /tmp"))
    chunks = [e for e in events if isinstance(e, OutputChunk)]
    assert "".join(c.text for c in chunks).split("\n")[:3] == ["line 1", "line 2", "line 3"]
    assert len(chunks) >= 2  # streamed as produced, not one answer at the end
    assert isinstance(events[-1], StreamEnd)
    assert events[-1].result.exit_code == 0 and events[-1].result.cwd == "/tmp"


def test_python_kernel_keeps_state(sandboxes: Callable[..., Any], sdk_mode: str) -> None:
    sb = sandboxes()
    sb.run_python("x = 20")
    result = sb.run_python("x * 2 + 2")
    assert result.status == "ok"
    assert [o.text for o in result.outputs if o.type == "result"] == ["42"]


def test_background_command_output_and_kill(sandboxes: Callable[..., Any], sdk_mode: str) -> None:
    sb = sandboxes()
    bg = sb.start_background("echo started; exec sleep 1000")
    output = ""
    for _ in range(100):  # bounded: the line is written at once, before sleep starts
        output = sb.read_background(bg.id).output
        if "started" in output:
            break
        sb.run("sleep 0.1")
    assert output == "started\n"
    killed = sb.kill_background(bg.id)
    assert killed.id == bg.id
    assert sb.run("pgrep -x sleep").exit_code == 1  # the process is gone


def test_reattach_list_and_remove(sandboxes: Callable[..., Any], sdk_mode: str) -> None:
    sb = sandboxes()
    sb.run("cd /tmp")
    other = Sandbox.connect(sb.id, take_ownership=False)
    assert other.run("pwd").output.strip() == "/tmp"  # the same shell session
    other.detach()
    assert sb.id in {info.id for info in Sandbox.list()}
    sb.remove()
    assert sb.state is SandboxState.REMOVED
    assert sb.id not in {info.id for info in Sandbox.list()}
    with pytest.raises(SandboxNotFoundError):
        Sandbox.connect(sb.id)
    with pytest.raises(SandboxError):
        sb.run("true")
