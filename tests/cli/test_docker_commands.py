"""The CLI against real sandboxes, through the installed ``agentbox`` console script.

Everything these tests create carries ``agentbox.test=1`` plus a label unique to this test run, and is
removed by that label at the end even when a test fails (other runs' sandboxes are left alone).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentbox.engine import engine_available

pytestmark = pytest.mark.docker

RUN_LABEL = "agentbox.test.run"
RUN_ID = uuid.uuid4().hex[:12]
LABEL_ARGS = ["--label", "agentbox.test=1", "--label", f"{RUN_LABEL}={RUN_ID}"]


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    """A docker SDK client; skips when no engine answers. Removes this run's leftovers at the end."""
    if not engine_available():
        pytest.skip("no Docker engine answers (run `agentbox doctor --fix`)")
    from agentbox.engine import docker_client

    client = docker_client()
    try:
        yield client
    finally:
        _remove_leftovers(client)
        client.close()


def _mine(client: Any) -> list[dict[str, Any]]:
    return list(client.api.containers(all=True, filters={"label": f"{RUN_LABEL}={RUN_ID}"}))


def _remove_leftovers(client: Any) -> None:
    from docker.errors import APIError

    from agentbox.errors import AgentboxError
    from agentbox.sandbox import Sandbox

    for summary in _mine(client):
        sandbox_id = (summary.get("Labels") or {}).get("agentbox.sandbox", "")
        try:
            # Through agentbox first, so its state file goes too.
            Sandbox.connect(sandbox_id).remove()
        except AgentboxError:
            with contextlib.suppress(APIError):
                client.api.remove_container(summary["Id"], force=True, v=True)


@pytest.fixture
def cli(agentbox_bin: str, engine: Any) -> Any:
    """Run the console script; returns the CompletedProcess (text mode, stdin closed)."""

    def invoke(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [agentbox_bin, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
            cwd=cwd, timeout=timeout, env={**os.environ, "COLUMNS": "200"},
        )

    return invoke


@pytest.fixture
def started(cli: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A sandbox started with `agentbox start` (keep-alive), removed afterwards whatever happens."""
    result = cli("start", *LABEL_ARGS)
    assert result.returncode == 0, result.stderr
    sandbox_id = result.stdout.strip()
    request.node.user_properties.append(("sandbox", sandbox_id))
    try:
        yield sandbox_id
    finally:
        cli("rm", "-f", sandbox_id)


def _listed(cli: Any) -> dict[str, dict[str, Any]]:
    result = cli("ls", "--json")
    assert result.returncode == 0, result.stderr
    return {entry["id"]: entry for entry in json.loads(result.stdout)}


def test_run_propagates_the_exit_code(cli: Any) -> None:
    result = cli("run", *LABEL_ARGS, "--", "sh", "-c", "echo out; exit 3")
    assert result.returncode == 3, result.stderr
    assert result.stdout == "out\n"


def test_run_json_output_parses(cli: Any) -> None:
    result = cli("run", *LABEL_ARGS, "--json", "--", "cd /tmp && echo hi")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["exit_code"] == 0 and data["output"].strip() == "hi"
    assert data["cwd"] == "/tmp" and data["timed_out"] is False


def test_run_timeout_exits_124(cli: Any) -> None:
    # 124 and the message prove the interrupt (the sleep finishing would exit 0); no timing assertion.
    result = cli("run", *LABEL_ARGS, "--timeout", "1", "--", "echo started; sleep 30; echo finished")
    assert result.returncode == 124, result.stderr
    assert "started" in result.stdout and "finished" not in result.stdout and "timed out" in result.stderr


def test_start_exec_cp_ls_pause_resume_rm(cli: Any, started: str, tmp_path: Path, engine: Any) -> None:
    sandbox_id = started
    entry = _listed(cli)[sandbox_id]
    assert entry["state"] == "running" and entry["keep_alive"] is True
    assert entry["labels"]["agentbox.test"] == "1"

    # exec: the persistent shell keeps cwd and environment between separate CLI processes.
    assert cli("exec", sandbox_id, "--", "cd /tmp && export GREETING=hello").returncode == 0
    echoed = cli("exec", sandbox_id, "--json", "--", 'echo "$GREETING from $PWD"; (exit 5)')
    assert echoed.returncode == 5
    assert json.loads(echoed.stdout)["output"].strip() == "hello from /tmp"

    # cp in: a tree into an existing directory lands under its own name; a file can be renamed.
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.txt").write_text("beta\n")
    assert cli("cp", str(tree), f"{sandbox_id}:/tmp").returncode == 0
    assert cli("cp", str(tree / "a.txt"), f"{sandbox_id}:/tmp/renamed.txt").returncode == 0
    listing = cli("exec", sandbox_id, "--", "cat /tmp/tree/a.txt /tmp/tree/sub/b.txt /tmp/renamed.txt")
    assert listing.stdout.split() == ["alpha", "beta", "alpha"]
    owner = cli("exec", sandbox_id, "--", "stat -c %u /tmp/tree/sub/b.txt")
    assert owner.stdout.strip() == str(os.getuid())  # the sandbox user, i.e. this uid by default

    # cp out: a tree to a new name, a file into an existing directory.
    out = tmp_path / "out"
    out.mkdir()
    assert cli("cp", f"{sandbox_id}:/tmp/tree", str(out / "copy")).returncode == 0
    assert cli("cp", f"{sandbox_id}:/tmp/renamed.txt", str(out)).returncode == 0
    assert (out / "copy" / "sub" / "b.txt").read_text() == "beta\n"
    assert (out / "renamed.txt").read_text() == "alpha\n"

    # pause freezes, resume thaws with the shell's state intact.
    assert cli("pause", sandbox_id).returncode == 0
    assert _listed(cli)[sandbox_id]["state"] == "paused"
    assert cli("resume", sandbox_id).returncode == 0
    assert cli("exec", sandbox_id, "--", 'echo "$GREETING"').stdout.strip() == "hello"

    # rm refuses a running sandbox without -f, then removes it with -f.
    refused = cli("rm", sandbox_id)
    assert refused.returncode == 1 and "rm -f" in refused.stderr
    assert cli("rm", "-f", sandbox_id).returncode == 0
    assert sandbox_id not in _listed(cli)
    assert not [c for c in _mine(engine) if c["Labels"].get("agentbox.sandbox") == sandbox_id]


def test_logs_show_the_server_start(cli: Any, started: str) -> None:
    result = cli("logs", started, "--tail", "20")
    assert result.returncode == 0, result.stderr
    assert "ready" in result.stdout


def test_demo_without_a_tty_succeeds_and_leaves_nothing_behind(cli: Any, tmp_path: Path, engine: Any) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "README.md").write_text("# a project\n")
    before = sorted(p.name for p in folder.iterdir())
    result = cli("demo", *LABEL_ARGS, cwd=folder)  # how fast it is: `make bench`, not a timed test
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("✓") == 8 and "✗" not in result.stdout
    for feature in ("mount", "ownership", "read-only", "127.0.0.1", "persistent shell", "stateful Python",
                    "removal"):
        assert feature in result.stdout
    assert sorted(p.name for p in folder.iterdir()) == before
    assert _mine(engine) == []
    # Networks and volumes made for a sandbox carry its labels: none of this run's may be left.
    assert engine.api.networks(filters={"label": f"{RUN_LABEL}={RUN_ID}"}) == []
    assert (engine.api.volumes(filters={"label": f"{RUN_LABEL}={RUN_ID}"}).get("Volumes") or []) == []


def test_invalid_volume_exits_2_and_creates_no_container(cli: Any, engine: Any) -> None:
    since = int(time.time()) - 1
    # A label of this call alone: other tests of the run create containers within the same second.
    case = f"agentbox.test.case={uuid.uuid4().hex}"
    result = cli("run", *LABEL_ARGS, "--label", case, "-v", "/tmp/a:/workspace:rwx", "--", "true")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "unknown mode 'rwx'" in result.stderr
    events = engine.api.events(
        since=since, until=int(time.time()) + 1, decode=True,
        filters={"type": "container", "event": "create", "label": case},
    )
    assert list(events) == []


def test_exec_on_an_unknown_id_exits_1(cli: Any) -> None:
    result = cli("exec", "no-such-sandbox", "--", "true")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: no sandbox 'no-such-sandbox' on this engine (list them with `agentbox ls`)"


def test_images_and_reap_speak_json(cli: Any, engine: Any) -> None:
    from agentbox.config import SandboxConfig
    from agentbox.images import ensure_runtime_image

    tag = ensure_runtime_image(SandboxConfig(), client=engine)  # at least one to list, whatever ran before
    images = cli("images", "--json")
    assert images.returncode == 0, images.stderr
    listed = json.loads(images.stdout)
    assert [image for image in listed if tag in image["tags"]], listed
    assert all({"tags", "base", "size", "current"} <= set(image) for image in listed)
    reaped = cli("reap", "--dry-run", "--json")
    assert reaped.returncode == 0, reaped.stderr
    assert json.loads(reaped.stdout)["dry_run"] is True
