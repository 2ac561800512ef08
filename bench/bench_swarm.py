"""Swarm bench: create -> first output of an agentbox sandbox on a real three-node swarm, beside its floors
measured in the same run: ``docker service create`` -> answering, and a plain ``docker run`` on a node ->
answering (both a python3 HTTP server on node2, probed from the host over the fixture's veth).

    python bench/bench_swarm.py        # prints the dict as JSON; run() returns it

Builds the swarm of tests/swarm/swarm_cluster.py (root, iproute2, util-linux) and tears it down.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROUNDS = 3
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "swarm"))


def _answering(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s")


def run() -> dict[str, Any]:
    import swarm_cluster

    from agentbox.backends import get_backend
    from agentbox.config import SandboxConfig
    from agentbox.sandbox import Sandbox

    image = get_backend("docker").resolve_image(SandboxConfig())
    cleanups: list[Any] = []
    cluster = swarm_cluster.shared(cleanups.append, [image])
    samples: dict[str, list[float]] = {"agentbox_create_to_first_output_s": [], "service_create_to_answering_s": [],
                                       "docker_run_to_answering_s": [], "agentbox_remove_s": []}
    server = ["python3", "-m", "http.server"]
    try:
        backend = get_backend("swarm")
        for r in range(ROUNDS):
            t0 = time.monotonic()
            sb = Sandbox(backend=backend, runtime_container_image=image, labels={"agentbox.bench": "1"}).start()
            sb.run("echo first")
            samples["agentbox_create_to_first_output_s"].append(time.monotonic() - t0)
            t0 = time.monotonic()
            sb.close()
            samples["agentbox_remove_s"].append(time.monotonic() - t0)

            port = 18100 + r
            t0 = time.monotonic()
            cluster.docker(1, "service", "create", "--detach", "--quiet", "--name", f"bench{r}", "--init",
                           "--replicas", "1", "--restart-condition", "none", "--constraint", "node.hostname==node2",
                           "--endpoint-mode", "dnsrr", "--no-resolve-image", "--user", "nobody", "--workdir", "/tmp",
                           "--publish", f"mode=host,target=8000,published={port}", "--entrypoint", server[0],
                           image, *server[1:])
            _answering(f"http://{swarm_cluster.addr(2)}:{port}/")
            samples["service_create_to_answering_s"].append(time.monotonic() - t0)
            cluster.docker(1, "service", "rm", f"bench{r}")

            port = 18200 + r
            t0 = time.monotonic()
            cluster.docker(2, "run", "-d", "--rm", "--init", "--name", f"benchrun{r}", "--user", "nobody", "-w", "/tmp",
                           "-p", f"{port}:8000", "--entrypoint", server[0], image, *server[1:])
            _answering(f"http://{swarm_cluster.addr(2)}:{port}/")
            samples["docker_run_to_answering_s"].append(time.monotonic() - t0)
            cluster.docker(2, "rm", "-f", f"benchrun{r}")
        backend.close()
    finally:
        for cleanup in cleanups:
            cleanup()
    result: dict[str, Any] = {"rounds": ROUNDS, "samples": samples}
    for name, values in samples.items():
        result[name] = round(statistics.median(values), 3)
    result["agentbox_over_service_create_s"] = round(
        result["agentbox_create_to_first_output_s"] - result["service_create_to_answering_s"], 3
    )
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
