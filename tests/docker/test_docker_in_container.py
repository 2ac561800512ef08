"""agentbox running inside a container (Docker socket mounted) still reaches its sandboxes.

The published port is on the host's 127.0.0.1, out of the manager container's reach; the backend
detects it runs in a container and reaches the sandbox over a shared internal control network.
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

import agentbox
from agentbox.sandbox import reap

pytestmark = pytest.mark.docker

SCRIPT = """
import json, sys
from agentbox.sandbox import Sandbox
from agentbox.backends.docker import default_backend
manager = default_backend().manager()
with Sandbox(runtime_container_image=sys.argv[1], labels=json.loads(sys.argv[2])) as sb:
    out = sb.run("echo from-inside").output.strip()
    print(json.dumps({"manager": manager.container_id if manager else None, "url": sb.url, "out": out}))
"""


def engine_socket(docker_client: Any) -> str:
    """Host path of the engine's Unix socket (DOCKER_HOST, else Docker's default); skips for other engines."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        pytest.skip(f"the engine is reached over {host}: no local socket to lend a manager container")
    return host[len("unix://"):]


def test_a_manager_in_a_container_reaches_its_sandbox_over_a_shared_network(
    runtime_image: str, docker_client: Any, tmp_path: Path, labels: dict[str, str]
) -> None:
    sock = engine_socket(docker_client)
    probe = docker_client.containers.run(
        runtime_image, entrypoint=["python3", "-c", "import sys; print(sys.version_info[:2])"], command=[],
        remove=True, labels=labels,
    ).decode()
    if probe.strip() != str(tuple(sys.version_info[:2])):
        pytest.skip(f"the image's python {probe.strip()} differs from this one's; cannot lend it our packages")
    src = Path(agentbox.__file__).resolve().parents[1]
    # Compiled dependencies (pydantic-core) live in platlib, which is not purelib on every layout.
    paths = sysconfig.get_paths()
    sites = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    site_mounts = {site: {"bind": f"/site{i}", "mode": "ro"} for i, site in enumerate(sites)}
    pythonpath = ":".join(["/src", *(f"/site{i}" for i in range(len(sites)))])
    (tmp_path / "manager.py").write_text(SCRIPT)
    output = docker_client.containers.run(
        runtime_image,
        entrypoint=["python3", "/m/manager.py", runtime_image, json.dumps(labels)],
        command=[],
        remove=True,
        labels=labels,
        environment={"PYTHONPATH": pythonpath, "HOME": "/tmp"},
        volumes={
            sock: {"bind": "/var/run/docker.sock", "mode": "rw"},
            str(src): {"bind": "/src", "mode": "ro"},
            **site_mounts,
            str(tmp_path): {"bind": "/m", "mode": "ro"},
        },
    ).decode()
    data = json.loads(output.strip().splitlines()[-1])
    assert data["out"] == "from-inside"
    assert data["manager"] is not None
    assert not data["url"].startswith("http://127.0.0.1")  # reached over the control network
    control = f"agentbox-ctl-{data['manager'][:12]}"
    assert docker_client.api.networks(names=[control])  # left behind by the (now gone) manager ...
    reap(labels=labels)  # sweeps control networks of gone managers; removes no other process's sandbox
    assert not [n for n in docker_client.api.networks(names=[control]) if n["Name"] == control]  # ... until reaped
