"""Escapes on a real engine: mounts that expose the engine's socket, rewriting the runtime server's own
code from inside, and a container restarted behind agentbox's back.

Each test labels what it creates with a marker of its own, so "nothing was created" is checked on that
marker and holds while other tests and engineers share the engine.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import stat
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentbox.errors import VolumeSpecError
from agentbox.hostpaths import engine_sockets
from agentbox.images import ensure_server_volume, server_volume_name
from agentbox.protocol import API_KEY_HEADER, READY_LINE_PREFIX

pytestmark = pytest.mark.docker

CASE_LABEL = "agentbox.test-case"


def _engine_socket() -> str:
    """The engine's socket on this host, as a path that exists (the test needs the real one)."""
    for path in engine_sockets():
        if path.endswith("docker.sock") and os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
            return path
    pytest.skip("the Docker engine is not reached through a local Unix socket here")


def _leftovers(client: Any, marker: str) -> list[str]:
    selector = {"label": f"{CASE_LABEL}={marker}"}
    found = [f"container {c['Id'][:12]}" for c in client.api.containers(all=True, filters=selector)]
    found += [f"network {n['Name']}" for n in client.api.networks(filters=selector)]
    found += [f"volume {v['Name']}" for v in client.api.volumes(filters=selector).get("Volumes") or []]
    return found


# --- 1. the engine socket, whatever the spelling ------------------------------------------------------------


@pytest.mark.parametrize("spec", ["/run:/hostrun:ro", "/var/run:/x", "/:/host:ro", "symlink:/engine.sock"])
def test_mounts_exposing_the_engine_socket_are_refused_before_anything_is_created(
    sandboxes: Callable[..., Any], docker_client: Any, tmp_path: Path, spec: str
) -> None:
    if spec.startswith("symlink:"):
        link = tmp_path / "innocent"
        link.symlink_to("/var/run/docker.sock")
        spec = f"{link}:/engine.sock"
    marker = uuid.uuid4().hex
    sandbox = sandboxes(start=False, volumes=[spec], labels={CASE_LABEL: marker})
    with pytest.raises(VolumeSpecError) as info:
        sandbox.start()
    message = str(info.value)
    assert "socket" in message and "allow_docker_socket=True" in message, message
    assert spec.split(":")[0] in message
    if spec.startswith("/:"):
        assert "Mounting '/'" in message
    assert _leftovers(docker_client, marker) == []
    assert sandbox.backend.store.load(sandbox.id) is None


def test_allow_docker_socket_still_hands_the_socket_over(sandboxes: Callable[..., Any]) -> None:
    socket_path = _engine_socket()
    sandbox = sandboxes(start=False, volumes=[f"{socket_path}:/engine.sock"], user_id=0)
    with pytest.raises(VolumeSpecError):
        sandbox.start()
    allowed = sandboxes(volumes=[f"{socket_path}:/engine.sock"], user_id=0, allow_docker_socket=True)
    assert allowed.run("test -S /engine.sock && echo socket").output.strip() == "socket"


# --- 2. the runtime server's own code is read-only in every mode ---------------------------------------------

# Each attempt runs with the given prefix (sudo where the mode has it) and reports whether it changed
# anything. umount/remount would reveal or re-enable a writable /opt/agentbox under the mount.
ATTACK = r"""
P="$1"
attempt() {
    name=$1; shift
    if $P sh -c "$*" </dev/null >/dev/null 2>&1; then echo "$name=changed"; else echo "$name=refused"; fi
}
app=/opt/agentbox/src/agentbox/server/app.py
attempt create 'echo planted > /opt/agentbox/planted'
attempt append 'echo "# planted" >> /opt/agentbox/bin/agentbox-entrypoint'
attempt server-code "echo 'raise SystemExit' >> $app"
attempt delete 'rm -f /opt/agentbox/server-requirements.txt'
attempt mkdir 'mkdir /opt/agentbox/venv/planted'
attempt chmod 'chmod 0777 /opt/agentbox/src'
attempt chown 'chown 12345 /opt/agentbox/bin/agentbox-entrypoint'
attempt rename 'mv /opt/agentbox/src /opt/agentbox/src2'
attempt umount 'umount -l /opt/agentbox'
attempt remount 'mount -o remount,rw /opt/agentbox'
attempt touch-after 'touch /opt/agentbox/planted-after-umount'
"""


@pytest.mark.parametrize(
    ("settings", "prefix"),
    [
        ({"user_id": 0}, ""),
        ({"user_id": 1000}, "sudo -n"),
        ({"user_id": 0, "hardened": True}, ""),
        ({"user_id": 1000, "hardened": True}, ""),
        ({"user_id": 0, "runtime": "runsc"}, ""),
    ],
    ids=["default-uid0", "default-uid1000-sudo", "hardened-uid0", "hardened-uid1000", "runsc-uid0"],
)
def test_the_server_code_cannot_be_changed_from_inside(
    sandboxes: Callable[..., Any], docker_client: Any, settings: dict[str, Any], prefix: str
) -> None:
    if settings.get("runtime") == "runsc" and "runsc" not in (docker_client.info().get("Runtimes") or {}):
        pytest.skip("runsc (gVisor) is not registered with dockerd: run `agentbox doctor --fix --runsc`")
    sandbox = sandboxes(**settings)
    before = sandbox.run("sha256sum /opt/agentbox/bin/agentbox-entrypoint /opt/agentbox/src/agentbox/server/app.py")
    sandbox.write_file("/tmp/attack.sh", ATTACK)
    result = sandbox.run(f"bash /tmp/attack.sh '{prefix}'", timeout=60)
    outcomes = dict(line.split("=", 1) for line in result.output.split() if "=" in line)
    assert len(outcomes) == 11, result.output
    assert {name for name, outcome in outcomes.items() if outcome != "refused"} == set(), result.output
    # Python rather than ls/stat: this machine's gVisor answers coreutils' statx on any mount with EINVAL.
    listing = (
        "import os; s = os.stat('/opt/agentbox/src'); "
        "print(*sorted(os.listdir('/opt/agentbox')), s.st_uid, oct(s.st_mode))"
    )
    after = sandbox.run(
        "sha256sum /opt/agentbox/bin/agentbox-entrypoint /opt/agentbox/src/agentbox/server/app.py; "
        f'python3 -c "{listing}"'
    )
    assert after.output.startswith(before.output.strip()), after.output
    assert after.output.split()[4:] == ["bin", "build", "server-requirements.txt", "src", "venv", "0", "0o40755"]
    assert "planted" not in after.output
    # The read-only mount is what holds, not luck with permissions: the mount says so.
    options = sandbox.run("awk '$5 == \"/opt/agentbox\" {print $6}' /proc/self/mountinfo").output.split()
    assert options and options[0].split(",")[0] == "ro", options
    # And the server, its code untouched, still works.
    assert sandbox.run("echo still-serving").output.strip() == "still-serving"
    python = sandbox.run_python("print(6 * 7)")
    assert python.status == "ok" and "42" in str(python.outputs), python


def test_server_volume_is_per_image_labelled_and_only_for_agentbox_images(
    docker_client: Any, runtime_image: str
) -> None:
    image = docker_client.images.get(runtime_image)
    name = ensure_server_volume(docker_client, runtime_image)
    assert name == server_volume_name(image.id)
    labels = docker_client.api.inspect_volume(name)["Labels"]
    assert labels["agentbox.managed"] == "1" and labels["agentbox.role"] == "server"
    assert labels["agentbox.image"] == image.id
    assert not docker_client.api.containers(all=True, filters={"name": f"{name}-fill"})
    # The base it was built on has no agentbox server: nothing to protect, no volume.
    assert ensure_server_volume(docker_client, image.labels["agentbox.base"]) is None
    # An absent image: nothing to mount, and the container create that follows reports it with its fix.
    assert ensure_server_volume(docker_client, "agentbox-test-absent:nope") is None


def test_an_abandoned_fill_is_cleared_and_done_again(
    docker_client: Any, runtime_image: str, labels: dict[str, str]
) -> None:
    # An image of its own (a one-label layer on the runtime image), so the shared volume is not touched.
    marker = uuid.uuid4().hex
    image, _ = docker_client.images.build(
        fileobj=io.BytesIO(f"FROM {runtime_image}\nLABEL {CASE_LABEL}={marker}\n".encode()),
        labels={**labels, CASE_LABEL: marker},
        rm=True,
    )
    name = server_volume_name(image.id)
    try:
        # A filler whose process died before starting it: the volume exists and is empty.
        from docker.types import Mount

        docker_client.api.create_container(
            image.id,
            entrypoint=["/bin/true"],
            name=f"{name}-fill",
            labels={**labels, CASE_LABEL: marker},
            host_config=docker_client.api.create_host_config(
                mounts=[Mount(target="/opt/agentbox", source=name, labels={**labels, CASE_LABEL: marker})]
            ),
        )
        assert ensure_server_volume(docker_client, image.id, labels={**labels, CASE_LABEL: marker}) == name
        assert not docker_client.api.containers(all=True, filters={"name": f"{name}-fill"})
        listing = docker_client.containers.run(
            image.id,
            entrypoint=["ls", "/opt/agentbox/bin"],
            command=[],
            remove=True,
            network_disabled=True,
            labels={**labels, CASE_LABEL: marker},
            mounts=[Mount(target="/opt/agentbox", source=name, read_only=True, no_copy=True)],
        )
        assert b"agentbox-entrypoint" in listing.split()
    finally:
        for container in docker_client.api.containers(all=True, filters={"label": f"{CASE_LABEL}={marker}"}):
            docker_client.api.remove_container(container["Id"], force=True)
        from docker.errors import NotFound

        with contextlib.suppress(NotFound):
            docker_client.api.remove_volume(name)
        docker_client.images.remove(image.id, force=True)
    assert _leftovers(docker_client, marker) == []


FILL_ONCE = """
import sys
from agentbox.engine import docker_client
from agentbox.images import ensure_server_volume
client = docker_client()
print(ensure_server_volume(client, sys.argv[1], labels={sys.argv[2]: sys.argv[3]}))
"""


def test_processes_filling_one_volume_at_once_all_get_it_filled(
    docker_client: Any, runtime_image: str, labels: dict[str, str]
) -> None:
    # Several processes start the first sandbox of a new image at the same moment: one fills, the others
    # wait for its filler (the engine's container-name lock), and all get a complete volume.
    marker = uuid.uuid4().hex
    image, _ = docker_client.images.build(
        fileobj=io.BytesIO(f"FROM {runtime_image}\nLABEL {CASE_LABEL}={marker}\n".encode()),
        labels={**labels, CASE_LABEL: marker},
        rm=True,
    )
    name = server_volume_name(image.id)
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", FILL_ONCE, image.id, CASE_LABEL, marker], stdout=subprocess.PIPE, text=True
            )
            for _ in range(3)
        ]
        outputs = [proc.communicate(timeout=300)[0].strip() for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0, 0]
        assert outputs == [name, name, name]
        assert not docker_client.api.containers(all=True, filters={"name": f"{name}-fill"})
        from docker.types import Mount

        count = docker_client.containers.run(
            image.id,
            entrypoint=["sh", "-c", "find /opt/agentbox | wc -l; find /opt/agentbox-image | wc -l"],
            command=[],
            remove=True,
            network_disabled=True,
            labels={**labels, CASE_LABEL: marker},
            mounts=[Mount(target="/opt/agentbox-image", source=name, read_only=True, no_copy=True)],
        ).split()
        assert count[0] == count[1], count  # the volume holds every file the image has there
    finally:
        for container in docker_client.api.containers(all=True, filters={"label": f"{CASE_LABEL}={marker}"}):
            docker_client.api.remove_container(container["Id"], force=True)
        from docker.errors import NotFound

        with contextlib.suppress(NotFound):
            docker_client.api.remove_volume(name)
        docker_client.images.remove(image.id, force=True)
    assert _leftovers(docker_client, marker) == []


# --- 3. a restart behind agentbox's back --------------------------------------------------------------------


def _secrets_tar(files: dict[str, bytes]) -> bytes:
    """What the Docker backend puts at /run before start: ``agentbox/<name>`` entries, 0600."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("agentbox")
        info.type, info.mode = tarfile.DIRTYPE, 0o700
        tar.addfile(info)
        for name, content in files.items():
            info = tarfile.TarInfo(f"agentbox/{name}")
            info.size, info.mode = len(content), 0o600
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


class _LogLines:
    """The container's log as lines, followed live (the client's read timeout bounds every wait)."""

    def __init__(self, client: Any, container_id: str) -> None:
        self._stream = client.api.logs(container_id, stdout=True, stderr=True, stream=True, follow=True)
        self._pending = b""

    def until(self, pattern: bytes) -> list[bytes]:
        """Lines up to and including the first that contains ``pattern``."""
        seen: list[bytes] = []
        while True:
            while b"\n" in self._pending:
                line, self._pending = self._pending.split(b"\n", 1)
                seen.append(line)
                if pattern in line:
                    return seen
            chunk = next(self._stream, None)
            if chunk is None:
                raise AssertionError(f"the log ended before {pattern!r}: {b''.join(seen)!r}")
            self._pending += chunk

    def close(self) -> None:
        from agentbox.backends.docker.lifecycle import close_stream

        close_stream(self._stream)  # its docker.sock connection too, not just the stream


def test_a_restarted_container_waits_for_its_key_then_serves(sandboxes: Callable[..., Any], docker_client: Any) -> None:
    sandbox = sandboxes(user_id=1000)
    container_id = sandbox.container_id
    assert container_id is not None
    docker_client.api.restart(container_id, timeout=5)
    # Followed from the start of the log (a follow ends with the run it follows): the first run's ready
    # line, then the waiting line, then the ready line of this run.
    logs = _LogLines(docker_client, container_id)
    try:
        logs.until(READY_LINE_PREFIX.encode())
        logs.until(b"agentbox-entrypoint: waiting for the session key")
        assert docker_client.api.inspect_container(container_id)["State"]["Running"] is True

        key = secrets.token_urlsafe(32)
        # env.sh before the key: the entrypoint goes on as soon as the key is there.
        tar = _secrets_tar({"env.sh": b"export AGAIN='after restart'\n", "session-key": key.encode()})
        docker_client.api.put_archive(container_id, "/run", tar)
        ready = logs.until(READY_LINE_PREFIX.encode())[-1]
    finally:
        logs.close()
    assert re.search(rb"ready on (http://\S+:\d+|unix:/\S+)", ready), ready
    endpoint = sandbox.backend.endpoint(container_id)  # a socket on a local engine, a published port elsewhere
    transport = httpx.HTTPTransport(uds=endpoint.uds)
    with httpx.Client(base_url=endpoint.url, headers={API_KEY_HEADER: key}, transport=transport) as http:
        response = http.post("/sessions/default/run", json={"command": 'id -u; echo "$AGAIN"; ls -A /run/agentbox'})
    assert response.status_code == 200, response.text
    assert response.json()["output"].split("\n")[:2] == ["1000", "after restart"]
    assert "session-key" not in response.json()["output"]  # read and deleted, as on a first start
