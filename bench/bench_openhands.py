"""OpenHands bench: an unmodified OpenHands 0.62 client on agentbox's runtime API.

Rows: OpenHands' ``RemoteRuntime.connect()`` to its first ``echo`` (a cold start: the runtime is created,
its action server and Jupyter kernel boot), and ``echo`` round trips through OpenHands' client (client ->
service proxy -> action server -> tmux). The client runs with OpenHands' own Python, in a container of the
OpenHands image on the host's network (tests/openhands/openhands_runner.py).

    python bench/bench_openhands.py        # prints the dict as JSON; run() returns it

Needs the OpenHands image (built from PyPI on first use, ~1-2 min; then cached by content hash).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "service"))
sys.path.insert(0, str(ROOT / "tests" / "openhands"))

LABELS = {"agentbox.bench": "openhands"}


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))] * 1000, 1),
        "n": len(ordered),
    }


def run(rounds: int = 20) -> dict[str, Any]:
    from openhands_runner import run_client
    from service_process import start_service

    from agentbox.engine import docker_client
    from agentbox.images.openhands import DEFAULT_VERSION, ensure_openhands_images

    client = docker_client(timeout=3600)
    images = ensure_openhands_images(client, DEFAULT_VERSION, pull=False)
    with tempfile.TemporaryDirectory(prefix="agentbox-bench-openhands-") as tmp:
        svc = start_service(Path(tmp) / "data")
        service_id = ""
        try:
            import httpx

            service_id = httpx.get(svc.url + "/healthz").json()["service_id"]
            out = run_client(
                client, images.names[0], svc.url + "/openhands", svc.admin_token, "bench",
                "bench-" + uuid.uuid4().hex[:8], labels=LABELS, extra_env={"BENCH_ROUNDS": str(rounds)},
            )
        finally:
            svc.stop()
            for c in client.api.containers(all=True, filters={"label": f"agentbox.service={service_id}"}):
                client.api.remove_container(c["Id"], force=True, v=True)
            client.close()
    return {
        "openhands_version": DEFAULT_VERSION,
        "images": images.how,
        "connect_to_first_echo_s": round(out["connect_to_first_echo_s"], 2),
        "echo_round_trip": _ms(out["echo_round_trip_s"]),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
