"""OpenHands bench: an unmodified OpenHands 0.62 client on agentbox's runtime API, beside OpenHands' own
local Docker runtime.

Rows:

* ``cold``: OpenHands' ``RemoteRuntime.connect()`` to its first ``echo`` with nothing prepared (the runtime
  is created, its action server and Jupyter kernel boot), and ``echo`` round trips through OpenHands'
  client (client -> service proxy -> action server -> tmux);
* ``pooled``: the same from an OpenHands pool (``[pool.openhands]`` made of what this OpenHands posts, as
  its own code computes it): ``/start`` takes a runtime that booted before anyone asked. The pool starts
  refilling at that moment, on the same cores;
* ``openhands_docker``: OpenHands' own ``DockerRuntime`` from the same OpenHands image and configuration,
  running the same image (``SANDBOX_RUNTIME_CONTAINER_IMAGE``: nothing is built), on the same engine
  through its socket. When it cannot run here, ``error`` says why in one line instead of a number.

The clients run with OpenHands' own Python, in a container of the OpenHands image on the host's network
(tests/openhands/openhands_runner.py). Every container made carries ``agentbox.bench=openhands`` (the
service's runtimes also their service's label) and is removed afterwards.

    python bench/bench_openhands.py        # prints the dict as JSON; run() returns it

Needs the OpenHands image (built from PyPI on first use, several minutes; then cached by content hash).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "service"))
sys.path.insert(0, str(ROOT / "tests" / "openhands"))

LABELS = {"agentbox.bench": "openhands"}
#: Seconds the pool may take to have its runtime booted (Jupyter on 2 busy cores).
POOL_FILL_S = 600.0
DOCKER_SOCKET = "/var/run/docker.sock"


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))] * 1000, 1),
        "n": len(ordered),
    }


def _figures(out: dict[str, Any]) -> dict[str, Any]:
    return {"connect_to_first_echo_s": round(out["connect_to_first_echo_s"], 2),
            "echo_round_trip": _ms(out["echo_round_trip_s"])}


def _remove(client: Any, label: str) -> None:
    """Remove through the backend, not docker rm: a sandbox's key and socket directories go with it."""
    from agentbox.backends.docker import DockerBackend

    backend = DockerBackend(client=client)
    for c in client.api.containers(all=True, filters={"label": label}):
        backend.remove(c["Id"], purge_volumes=True)


def _pool_free(url: str, token: str, pool: str) -> float:
    import httpx

    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"}).text
    for line in text.splitlines():
        if line.startswith(f'agentbox_pool_free{{pool="{pool}"}}'):
            return float(line.split()[-1])
    return -1


def _on_agentbox(client: Any, image: str, rounds: int, pool: dict[str, Any] | None) -> dict[str, Any]:
    """The bench step against a fresh service; with ``pool`` (a launch), from a pool of one such runtime."""
    import httpx
    from openhands_runner import run_client
    from service_process import start_service
    from test_openhands_client import openhands_pool_toml

    with tempfile.TemporaryDirectory(prefix="agentbox-bench-openhands-") as tmp:
        extra: list[str] = []
        if pool is not None:
            config = Path(tmp) / "service.toml"
            config.write_text(openhands_pool_toml(pool, "bench"))
            extra = ["--config", str(config)]
        svc = start_service(Path(tmp) / "data", *extra)
        service_id = ""
        try:
            service_id = httpx.get(svc.url + "/healthz").json()["service_id"]
            if pool is not None:
                deadline = time.monotonic() + POOL_FILL_S
                while _pool_free(svc.url, svc.admin_token, "bench") != 1:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the OpenHands pool did not fill in {POOL_FILL_S:.0f} s")
                    time.sleep(0.5)
            out = run_client(
                client, image, svc.url + "/openhands", svc.admin_token, "bench", "bench-" + uuid.uuid4().hex[:8],
                labels=LABELS, extra_env={"BENCH_ROUNDS": str(rounds)},
            )
            if pool is not None:
                metrics = httpx.get(svc.url + "/metrics", headers={"Authorization": f"Bearer {svc.admin_token}"})
                if 'agentbox_sandbox_creates_total{outcome="pooled"} 1.0' not in metrics.text:
                    raise RuntimeError("the start was not served from the pool")
        finally:
            svc.stop()
            if service_id:
                _remove(client, f"agentbox.service={service_id}")
    return _figures(out)


def _openhands_docker(client: Any, image: str, rounds: int) -> dict[str, Any]:
    """OpenHands' own DockerRuntime, or one line saying why it cannot run here."""
    from openhands_runner import run_client

    run_label = {"agentbox.bench-run": uuid.uuid4().hex[:12]}
    try:
        out = run_client(
            client, image, "http://unused.invalid", "unused", "docker-bench", "bench-" + uuid.uuid4().hex[:8],
            labels=LABELS,
            extra_env={"RUNTIME": "docker", "BENCH_ROUNDS": str(rounds),
                       "BENCH_LABELS": json.dumps({**LABELS, **run_label}),
                       "SANDBOX_RUNTIME_BINDING_ADDRESS": "127.0.0.1", "SANDBOX_KEEP_RUNTIME_ALIVE": "false"},
            volumes={DOCKER_SOCKET: {"bind": DOCKER_SOCKET, "mode": "rw"}},
        )
    except AssertionError as exc:  # the client failed: its last error line says why
        lines = [ln.strip() for ln in str(exc).splitlines() if "Error" in ln or "error" in ln]
        return {"error": (lines[-1] if lines else str(exc).splitlines()[0])[:300]}
    finally:
        (key, value), = run_label.items()
        _remove(client, f"{key}={value}")
    return _figures(out)


def run(rounds: int = 20) -> dict[str, Any]:
    from openhands_runner import run_client

    from agentbox.engine import docker_client
    from agentbox.images.openhands import DEFAULT_VERSION, ensure_openhands_images

    client = docker_client(timeout=3600)
    try:
        images = ensure_openhands_images(client, DEFAULT_VERSION, pull=False)
        image = images.names[0]
        cold = _on_agentbox(client, image, rounds, None)
        launch = run_client(client, image, "http://unused.invalid/openhands", "unused", "launch", "bench-launch",
                            labels=LABELS)
        pooled = _on_agentbox(client, image, rounds, launch)
        docker = _openhands_docker(client, image, rounds)
    finally:
        client.close()
    return {
        "openhands_version": DEFAULT_VERSION,
        "images": images.how,
        # The first two keys as before this bench compared anything (the cold row).
        "connect_to_first_echo_s": cold["connect_to_first_echo_s"],
        "echo_round_trip": cold["echo_round_trip"],
        "pooled": pooled,
        "openhands_docker": docker,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
