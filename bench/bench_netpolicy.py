"""Network policy bench: what the egress gateway costs.

``python bench/bench_netpolicy.py [out.json]`` (``bench/run.py`` imports it and calls :func:`run`).
Against one local HTTP sidecar on a test network, from inside a sandbox:

* ``connect_open_ms``: TCP connect + one HTTP GET, directly (``egress = "open"``);
* ``connect_policy_ms``: the same through the gateway's proxy (``egress = [sidecar]``): the proxy's
  check, its own DNS lookup of the name, and the relayed connection;
* ``echo_open_ms`` / ``echo_policy_ms``: an ``echo hi`` round trip from this process (with a policy,
  the runtime server is reached through the gateway's relay);
* ``start_open_s`` / ``start_policy_s``: create -> first command output, without and with a policy (the
  gateway container is made and started before the sandbox).

Only local addresses are used; everything made is labelled and removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from typing import Any

LABELS = {"agentbox.test": "1", "agentbox.bench": "1"}
CONNECTS = 50

# Runs in the sandbox: CONNECTS connect+GET round trips, through the proxy when HTTP_PROXY is set.
MEASURE = r"""python3 - <<'EOF'
import json, os, time, urllib.request
opener = urllib.request.build_opener()  # honours HTTP_PROXY from the environment
times = []
for _ in range({n} + 5):
    t = time.perf_counter()
    with opener.open("http://{host}:8080/", timeout=10) as r:
        r.read()
    times.append((time.perf_counter() - t) * 1000)
print(json.dumps(times[5:]))
EOF"""


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 3),
        "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 3),
        "min": round(ordered[0], 3),
    }


def run(json_path: str | None = None, connects: int = CONNECTS) -> dict[str, Any]:
    """Measure with and without a policy; returns (and with ``json_path`` writes) the results."""
    from agentbox import Sandbox
    from agentbox.backends.docker import DockerBackend
    from agentbox.config import SandboxConfig

    backend = DockerBackend()
    client = backend.client
    net = f"abxb-pnet-{uuid.uuid4().hex[:8]}"
    side = f"abxb-side-{uuid.uuid4().hex[:8]}"
    result: dict[str, Any] = {"connects": connects}
    try:
        image = os.environ.get("AGENTBOX_TEST_IMAGE") or backend.resolve_image(SandboxConfig())
        result["image"] = image
        client.api.create_network(net, driver="bridge", labels=LABELS)
        sidecar = client.containers.run(
            image, entrypoint=["python3", "-u", "-m", "http.server", "8080"], command=[], name=side,
            network=net, labels=LABELS, detach=True, user="nobody", working_dir="/tmp",
        )
        for line in sidecar.logs(stream=True, follow=True):
            if b"Serving HTTP" in line:
                break
        for key, settings in (("open", {}), ("policy", {"egress": [side]})):
            t = time.perf_counter()
            sb = Sandbox(runtime_container_image=image, labels=LABELS, backend=backend,
                         additional_networks=[net], **settings)
            try:
                sb.start()
                sb.run("true")
                result[f"start_{key}_s"] = round(time.perf_counter() - t, 3)
                out = sb.run(MEASURE.format(n=connects, host=side), timeout=120).output
                result[f"connect_{key}_ms"] = _summary(json.loads(out.strip().splitlines()[-1]))
                echoes = []
                for _ in range(connects):
                    t = time.perf_counter()
                    sb.run("echo hi")
                    echoes.append((time.perf_counter() - t) * 1000)
                result[f"echo_{key}_ms"] = _summary(echoes)
            finally:
                sb.remove()
    finally:
        from docker.errors import APIError

        for c in client.api.containers(all=True, filters={"name": side}):
            with contextlib.suppress(APIError):
                client.api.remove_container(c["Id"], force=True)
        with contextlib.suppress(APIError):
            client.api.remove_network(net)
        backend.close()
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else None), indent=2))
