"""Runs OpenHands' own client (client_scenario.py) in a container of the OpenHands image, on the host's
network, configured only by environment. A module of its own so the tests and bench/bench_openhands.py
share it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agentbox.images.openhands import VENV

HERE = Path(__file__).parent
#: Seconds one client step may take (connect builds nothing: the image is there; Jupyter starts slowly).
STEP_TIMEOUT = 600


def run_client(
    docker_client: Any,
    image: str,
    api_url: str,
    key: str,
    step: str,
    sid: str,
    *,
    labels: dict[str, str],
    extra_env: dict[str, str] | None = None,
    volumes: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Run one step of client_scenario.py against the runtime API at ``api_url``; returns what it printed."""
    env = {
        "RUNTIME": "remote",
        "SANDBOX_REMOTE_RUNTIME_API_URL": api_url,
        "SANDBOX_API_KEY": key,
        "SANDBOX_RUNTIME_CONTAINER_IMAGE": image,
        "SANDBOX_KEEP_RUNTIME_ALIVE": "true",
        "SANDBOX_PAUSE_CLOSED_RUNTIMES": "true",
        "ENABLE_BROWSER": "false",
        "LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    container = docker_client.containers.run(
        image, [f"{VENV}/bin/python", "-u", "/scenario/client_scenario.py", step, sid],
        environment=env, network_mode="host", labels=labels, detach=True, working_dir="/tmp",
        volumes={str(HERE): {"bind": "/scenario", "mode": "ro"}, **(volumes or {})},
    )
    try:
        status = container.wait(timeout=STEP_TIMEOUT)
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    lines = [ln for ln in logs.splitlines() if ln.startswith("RESULT ")]
    if status.get("StatusCode") != 0 or not lines:
        raise AssertionError(f"OpenHands' client failed ({status}):\n{logs[-6000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
    return result
