"""What every backend must do, tested through the public Sandbox API on each backend in turn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentbox.backends.base import Backend, SandboxState
from agentbox.backends.events import BackendEvent
from agentbox.errors import NetworkNotFoundError
from agentbox.sandbox import Sandbox

Make = Callable[..., Sandbox]
#: The engine probe of the backend under test (tests/contract/conftest.py: EngineProbe).
Probe = Any

HTTP_GET = "python3 -c \"import urllib.request as u; print(u.urlopen('http://{name}:8080/', timeout=10).status)\""


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=180, env=dict(os.environ)
    )


def test_create_and_first_command(sandbox: Make) -> None:
    sb = sandbox()
    assert sb.state is SandboxState.RUNNING
    first = sb.run("echo first; id -u")
    assert first.exit_code == 0 and first.output.split()[0] == "first", first.output
    assert first.cwd == sb.config.work_dir


def test_files_in_a_bind_mount_belong_to_the_sandbox_user(
    sandbox: Make, tmp_path: Path, owner_uid: Callable[[Path], int]
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    uid = owner_uid(workspace)
    sb = sandbox(user_id=uid, volumes=[f"{workspace}:/workspace"])
    made = sb.run("mkdir -p d && echo x > d/by-command.txt && id -u")
    assert made.exit_code == 0 and made.output.split()[-1] == str(uid), made.output
    sb.write_file("/workspace/by-api.txt", "y")
    for rel in ("d", "d/by-command.txt", "by-api.txt"):
        assert os.stat(workspace / rel).st_uid == uid, rel
    assert (workspace / "d" / "by-command.txt").read_text() == "x\n"


def test_a_sidecar_on_an_additional_network_answers_by_name_from_the_first_command(
    sandbox: Make, probe: Probe, image: str, labels: dict[str, str], unique: Callable[[str], str]
) -> None:
    network, name = unique("side-net"), unique("side")
    probe.create_network(network, labels)
    probe.sidecar(name, network, image, labels)
    sb = sandbox(additional_networks=[network])
    first = sb.run(HTTP_GET.format(name=name))
    assert first.output.strip().splitlines()[-1] == "200", first.output


def test_pause_and_resume_keep_shell_state(sandbox: Make) -> None:
    sb = sandbox()
    sb.run("cd /tmp; export KEPT=yes; sleep 1000 &")
    sb.pause()
    assert sb.state is SandboxState.PAUSED
    sb.resume()
    r = sb.run("pwd; echo $KEPT; jobs | wc -l")
    assert r.output.split() == ["/tmp", "yes", "1"], r.output


def test_stop_and_start_again_keep_files(sandbox: Make) -> None:
    sb = sandbox()
    sb.write_file("/workspace/kept.txt", "kept")
    sb.stop()
    assert sb.state is SandboxState.STOPPED
    sb.start()
    assert sb.state is SandboxState.RUNNING
    assert sb.run("cat /workspace/kept.txt").output.strip() == "kept"


def test_reattach_from_another_process(sandbox: Make, backend_name: str) -> None:
    sb = sandbox()
    sb.run("cd /tmp && export FROM_FIRST=1")
    code = (
        "import json, sys\n"
        "from agentbox.backends import get_backend\n"
        "from agentbox.sandbox import Sandbox\n"
        "sb = Sandbox.connect(sys.argv[1], backend=get_backend(sys.argv[2]), take_ownership=False)\n"
        "r = sb.run('pwd; echo $FROM_FIRST')\n"
        "print(json.dumps({'out': r.output.split(), 'state': sb.state.value}))\n"
        "sb.detach()\n"
    )
    proc = _python(code, sb.id, backend_name)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"out": ["/tmp", "1"], "state": "running"}
    assert sb.run("echo still mine").output.strip() == "still mine"


def test_events_report_a_sandbox_removed(sandbox: Make, backend: Backend, labels: dict[str, str]) -> None:
    sb, other = sandbox(), sandbox()
    seen: list[BackendEvent] = []
    with backend.events({**labels, "agentbox.sandbox": sb.id}) as events:
        # Bounded: a stream that never reports it is closed (which ends the iteration) and fails below.
        timer = threading.Timer(120, events.close)
        timer.start()
        try:
            sb.remove()
            other.remove()  # not carrying the watched labels: never reported
            for event in events:
                seen.append(event)
                if event.kind == "destroy":
                    break
        finally:
            timer.cancel()
    assert BackendEvent(sb.id, "destroy") in seen, seen
    assert all(e.sandbox_id == sb.id for e in seen), seen


def test_list_shows_the_sandbox_with_its_state(sandbox: Make, backend: Backend, labels: dict[str, str]) -> None:
    running, stopped = sandbox(), sandbox()
    stopped.stop()
    listed = {info.id: info for info in backend.list(labels=labels)}
    assert set(listed) == {running.id, stopped.id}
    assert listed[running.id].state is SandboxState.RUNNING and listed[running.id].url
    assert listed[stopped.id].state is SandboxState.STOPPED
    assert listed[running.id].owner_pid == os.getpid()
    assert running.id in {info.id for info in Sandbox.list(backend=backend)}


def test_reap_removes_only_orphans_carrying_the_labels(
    sandbox: Make, backend: Backend, backend_name: str, image: str, labels: dict[str, str], probe: Probe
) -> None:
    mine = sandbox()  # its owner (this process) lives: never reaped
    code = (
        "import json, sys\n"
        "from agentbox.backends import get_backend\n"
        "from agentbox.sandbox import Sandbox\n"
        "sb = Sandbox(backend=get_backend(sys.argv[1]), runtime_container_image=sys.argv[2],\n"
        "             labels=json.loads(sys.argv[3])).start()\n"
        "print(sb.id)\n"
    )  # exits without closing: an orphan
    proc = _python(code, backend_name, image, json.dumps(labels))
    assert proc.returncode == 0, proc.stderr
    orphan = proc.stdout.strip().splitlines()[-1]
    assert backend.reap(dry_run=True, labels=labels) == [orphan]
    assert backend.reap(labels={**labels, "agentbox.test-other": "1"}) == []  # the filter filters
    assert orphan in {info.id for info in backend.list(labels=labels)}
    assert backend.reap(labels=labels) == [orphan]
    assert {info.id for info in backend.list(labels=labels)} == {mine.id}
    assert mine.run("echo alive").output.strip() == "alive"


def test_nothing_is_left_behind(
    sandbox: Make, probe: Probe, labels: dict[str, str], unique: Callable[[str], str]
) -> None:
    own_network = sandbox(network=unique("own"))  # a network agentbox creates for it
    no_network = sandbox(network="none")
    socket_dir = os.path.dirname(no_network.uds) if no_network.uds else None
    assert probe.leftovers(labels)  # control: the probe sees what is there
    with pytest.raises(NetworkNotFoundError):  # a failed start leaves nothing either
        sandbox(network=unique("prim"), additional_networks=[unique("missing")])
    own_network.close()
    no_network.close()
    assert probe.leftovers(labels) == []
    if socket_dir is not None:
        assert not os.path.exists(socket_dir)
