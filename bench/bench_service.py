"""Service bench: ``agentbox serve`` for real (its own process, SQLite file, engine) beside its floors.

    python bench/bench_service.py        # prints the dict as JSON; run() returns it

- create -> first output through the service, cold (beside a local ``Sandbox`` cold create) and from a
  warm pool;
- the proxied ``echo`` round trip beside the same sandbox reached directly (budget: direct + 1 ms p50);
- 10 concurrent creates through the service, cold and pooled (budget pooled: all served in 0.5 s);
- ``GET /v1/sandboxes`` latency under 50 concurrent clients (asyncio, one process), and the service's
  CPU per listing (the figure the machine's load does not move);
- the service idle: CPU % of a core and RSS.

Everything it makes carries the test session labels and is removed at the end.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "service"))

ROUNDS = 3
ECHOES = 300
IDLE_S = 10.0
LIST_CLIENTS = 50
LIST_REQUESTS = 20


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def _proc_cpu_rss(pid: int) -> tuple[float, int]:
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")


def run() -> dict[str, Any]:
    import httpx
    from service_process import LABELS, SESSION_LABEL, start_service

    from agentbox.backends import get_backend
    from agentbox.client import RuntimeClient
    from agentbox.config import SandboxConfig
    from agentbox.engine import docker_client
    from agentbox.images import ensure_runtime_image
    from agentbox.sandbox import Sandbox

    image = ensure_runtime_image(SandboxConfig())
    tmp = Path(tempfile.mkdtemp(prefix="abx-bench-service-"))
    labels = {**LABELS, "agentbox.bench": "1"}
    pool_labels = ", ".join(f'"{k}" = "{v}"' for k, v in labels.items())
    config = tmp / "service.toml"
    config.write_text(f'[sandbox]\nruntime_container_image = "{image}"\n'
                      f'[[pool]]\nname = "one"\nsize = 1\nlabels = {{ {pool_labels} }}\n'
                      f'[[pool]]\nname = "ten"\nsize = 10\nlabels = {{ {pool_labels}, "conc" = "1" }}\n')
    cold_labels = {**labels, "cold": "1"}  # matches no pool: made cold
    out: dict[str, Any] = {"local_cold_create_to_first_output_s": [], "service_cold_create_to_first_output_s": [],
                           "service_pooled_create_to_first_output_s": []}
    svc = start_service(tmp / "data", "--config", str(config))
    client = svc.client(svc.admin_token)

    def pool_free(name: str, n: int) -> None:
        while f'agentbox_pool_free{{pool="{name}"}} {n}.0' not in client.get("/metrics").text:
            time.sleep(0.1)

    def first_output(sid: str) -> None:
        r = client.post(f"/v1/sandboxes/{sid}/runtime/sessions/default/run", json={"command": "echo hi"})
        assert r.json()["output"] == "hi\n", r.text

    try:
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            with Sandbox(runtime_container_image=image, labels=labels) as sb:
                assert sb.run("echo hi").output == "hi\n"
                out["local_cold_create_to_first_output_s"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sid = client.post("/v1/sandboxes", json={"labels": cold_labels}).json()["id"]
            first_output(sid)
            out["service_cold_create_to_first_output_s"].append(time.perf_counter() - t0)
            client.delete(f"/v1/sandboxes/{sid}")
            pool_free("one", 1)
            t0 = time.perf_counter()
            sid = client.post("/v1/sandboxes", json={"labels": labels}).json()["id"]
            first_output(sid)
            out["service_pooled_create_to_first_output_s"].append(time.perf_counter() - t0)
            client.delete(f"/v1/sandboxes/{sid}")

        # Proxied echo beside direct, interleaved so that the machine's load hits both alike.
        sid = client.post("/v1/sandboxes", json={"labels": cold_labels}).json()["id"]
        db = sqlite3.connect(svc.data_dir / "service.db")
        key, cid = db.execute("SELECT session_key, container_id FROM sandboxes WHERE id = ?", (sid,)).fetchone()
        db.close()
        endpoint = get_backend().endpoint(cid)
        direct = RuntimeClient(endpoint.url, key, uds=endpoint.uds)
        path = f"/v1/sandboxes/{sid}/runtime/sessions/default/run"
        for _ in range(30):
            direct.run("echo hi")
            client.post(path, json={"command": "echo hi"})
        d: list[float] = []
        p: list[float] = []
        cpu0, _ = _proc_cpu_rss(svc.proc.pid)
        for _ in range(ECHOES):
            t0 = time.perf_counter()
            client.post(path, json={"command": "echo hi"})
            p.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            direct.run("echo hi")
            d.append(time.perf_counter() - t0)
        cpu1, _ = _proc_cpu_rss(svc.proc.pid)
        direct.close()
        client.delete(f"/v1/sandboxes/{sid}")
        out["echo_direct_ms"] = {"p50": statistics.median(d) * 1000, "p99": _pct(d, 99) * 1000}
        out["echo_proxied_ms"] = {"p50": statistics.median(p) * 1000, "p99": _pct(p, 99) * 1000}
        out["echo_proxy_overhead_p50_ms"] = (statistics.median(p) - statistics.median(d)) * 1000
        out["echo_service_cpu_ms"] = (cpu1 - cpu0) / ECHOES * 1000

        def concurrent(body: dict[str, Any], n: int = 10) -> float:
            ids: list[str] = []

            def one() -> None:
                with svc.client(svc.admin_token) as c:
                    r = c.post("/v1/sandboxes", json=body)
                    assert r.status_code == 201, r.text
                    ids.append(r.json()["id"])

            threads = [threading.Thread(target=one) for _ in range(n)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            total = time.perf_counter() - t0
            for sandbox_id in ids:
                client.delete(f"/v1/sandboxes/{sandbox_id}")
            return total

        out["concurrent_10_cold_s"] = concurrent({"labels": cold_labels})
        pool_free("ten", 10)
        out["concurrent_10_pooled_s"] = concurrent({"labels": {**labels, "conc": "1"}})

        latencies: list[float] = []

        async def lister() -> None:
            headers = {"Authorization": f"Bearer {svc.admin_token}"}
            async with httpx.AsyncClient(base_url=svc.url, headers=headers) as c:
                await c.get("/v1/sandboxes")
                for _ in range(LIST_REQUESTS):
                    t0 = time.perf_counter()
                    r = await c.get("/v1/sandboxes")
                    latencies.append(time.perf_counter() - t0)
                    assert r.status_code == 200

        async def listers() -> None:
            await asyncio.gather(*(lister() for _ in range(LIST_CLIENTS)))

        cpu0, _ = _proc_cpu_rss(svc.proc.pid)
        asyncio.run(listers())
        cpu1, _ = _proc_cpu_rss(svc.proc.pid)
        out["list_50_clients_ms"] = {"p50": _pct(latencies, 50) * 1000, "p99": _pct(latencies, 99) * 1000}
        out["list_service_cpu_ms"] = (cpu1 - cpu0) / len(latencies) * 1000

        cpu0, _ = _proc_cpu_rss(svc.proc.pid)
        time.sleep(IDLE_S)
        cpu1, rss = _proc_cpu_rss(svc.proc.pid)
        out["idle_cpu_percent"] = 100 * (cpu1 - cpu0) / IDLE_S
        out["idle_rss_mb"] = rss / 1e6
    finally:
        client.close()
        svc.stop()
        # Through the backend, not docker rm: a sandbox's key and socket directories go with it.
        from agentbox.backends.docker import DockerBackend

        backend = DockerBackend(client=docker_client())
        for c in backend.api.containers(all=True, filters={"label": [f"{SESSION_LABEL}={LABELS[SESSION_LABEL]}"]}):
            backend.remove(c["Id"], purge_volumes=True)
        backend.client.close()
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
