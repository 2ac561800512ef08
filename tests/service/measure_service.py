"""Measure the service against local agentbox (not a test; run by hand until `make bench` has it)::

    .venv/bin/python tests/service/measure_service.py [--rounds 5] [--echoes 300]

create -> first output through the service vs a local ``Sandbox``; proxied ``echo`` round trip vs the
same sandbox reached directly; the service's idle RSS and CPU.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from service_process import LABELS, SESSION, SESSION_LABEL, start_service

from agentbox.backends import get_backend
from agentbox.client import RuntimeClient
from agentbox.config import SandboxConfig
from agentbox.images import ensure_runtime_image
from agentbox.sandbox import Sandbox


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds used, RSS bytes) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--echoes", type=int, default=300)
    parser.add_argument("--idle", type=float, default=20.0)
    args = parser.parse_args()
    image = ensure_runtime_image(SandboxConfig())
    tmp = Path(tempfile.mkdtemp(prefix="abx-measure-"))
    config = tmp / "service.toml"
    pool_labels = ", ".join(f'"{k}" = "{v}"' for k, v in LABELS.items())
    config.write_text(f'[sandbox]\nruntime_container_image = "{image}"\n'
                      f'[[pool]]\nname = "m"\nsize = 1\nlabels = {{ {pool_labels} }}\n'
                      f'[[pool]]\nname = "c"\nsize = 10\nlabels = {{ {pool_labels}, "conc" = "1" }}\n')
    cold_labels = {**LABELS, "cold": "1"}  # not the pool's labels: made cold
    svc = start_service(tmp / "data", "--config", str(config))
    try:
        client = svc.client(svc.admin_token)
        local: list[float] = []
        remote: list[float] = []
        pooled: list[float] = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            with Sandbox(runtime_container_image=image, labels=LABELS) as sb:
                assert sb.run("echo hi").output == "hi\n"
                local.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sid = client.post("/v1/sandboxes", json={"labels": cold_labels}).json()["id"]
            out = client.post(f"/v1/sandboxes/{sid}/runtime/sessions/default/run", json={"command": "echo hi"})
            assert out.json()["output"] == "hi\n"
            remote.append(time.perf_counter() - t0)
            client.delete(f"/v1/sandboxes/{sid}")
            while 'agentbox_pool_free{pool="m"} 1.0' not in client.get("/metrics").text:
                time.sleep(0.1)
            t0 = time.perf_counter()
            sid = client.post("/v1/sandboxes", json={"labels": LABELS}).json()["id"]
            out = client.post(f"/v1/sandboxes/{sid}/runtime/sessions/default/run", json={"command": "echo hi"})
            assert out.json()["output"] == "hi\n"
            pooled.append(time.perf_counter() - t0)
            client.delete(f"/v1/sandboxes/{sid}")
        print(f"create -> first output  local p50 {statistics.median(local) * 1000:.0f} ms  "
              f"service p50 {statistics.median(remote) * 1000:.0f} ms  (n={args.rounds}; "
              f"local {[round(x * 1000) for x in local]}, service {[round(x * 1000) for x in remote]})")
        print(f"pooled create -> first output  p50 {statistics.median(pooled) * 1000:.1f} ms  "
              f"({[round(x * 1000, 1) for x in pooled]})")

        sid = client.post("/v1/sandboxes", json={"labels": cold_labels}).json()["id"]
        db = sqlite3.connect(svc.data_dir / "service.db")
        key, cid = db.execute("SELECT session_key, container_id FROM sandboxes WHERE id = ?", (sid,)).fetchone()
        db.close()
        endpoint = get_backend().endpoint(cid)
        direct = RuntimeClient(endpoint.url, key, uds=endpoint.uds)
        path = f"/v1/sandboxes/{sid}/runtime/sessions/default/run"
        for _ in range(20):  # warm both paths
            direct.run("echo hi")
            client.post(path, json={"command": "echo hi"})
        d: list[float] = []
        p: list[float] = []
        for _ in range(args.echoes):
            t0 = time.perf_counter()
            direct.run("echo hi")
            d.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            client.post(path, json={"command": "echo hi"})
            p.append(time.perf_counter() - t0)
        print(f"echo round trip  direct p50 {pct(d, 50) * 1000:.2f} ms p99 {pct(d, 99) * 1000:.2f} ms  "
              f"proxied p50 {pct(p, 50) * 1000:.2f} ms p99 {pct(p, 99) * 1000:.2f} ms  (n={args.echoes})")
        direct.close()
        client.delete(f"/v1/sandboxes/{sid}")
        def concurrent(body: dict[str, object], n: int = 10) -> tuple[float, list[float]]:
            each: list[float] = []
            ids: list[str] = []

            def one() -> None:
                with svc.client(svc.admin_token) as c:
                    t = time.perf_counter()
                    r = c.post("/v1/sandboxes", json=body)
                    each.append(time.perf_counter() - t)
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
            return total, each

        total, each = concurrent({"labels": cold_labels})
        print(f"10 concurrent cold creates: all served in {total:.2f} s (slowest {max(each):.2f} s)")
        while 'agentbox_pool_free{pool="c"} 10.0' not in client.get("/metrics").text:
            time.sleep(0.2)
        total, each = concurrent({"labels": {**LABELS, "conc": "1"}})
        print(f"10 concurrent pooled creates: all served in {total * 1000:.0f} ms (slowest {max(each) * 1000:.0f} ms)")

        latencies: list[float] = []

        def lister() -> None:
            with svc.client(svc.admin_token) as c:
                for _ in range(20):
                    t = time.perf_counter()
                    c.get("/v1/sandboxes")
                    latencies.append(time.perf_counter() - t)

        threads = [threading.Thread(target=lister) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"GET /v1/sandboxes under 50 concurrent clients: p50 {pct(latencies, 50) * 1000:.1f} ms "
              f"p99 {pct(latencies, 99) * 1000:.1f} ms (n={len(latencies)})")

        cpu0, _ = proc_stat(svc.proc.pid)
        time.sleep(args.idle)
        cpu1, rss = proc_stat(svc.proc.pid)
        client.close()
        print(f"service idle: RSS {rss / 1e6:.1f} MB, CPU {100 * (cpu1 - cpu0) / args.idle:.2f} % of a core "
              f"over {args.idle:.0f} s")
    finally:
        svc.stop()
        # The pool's waiting sandbox outlives the service by design (the next start adopts it): not here.
        from agentbox.engine import docker_client

        engine = docker_client()
        for c in engine.api.containers(all=True, filters={"label": [f"{SESSION_LABEL}={SESSION}"]}):
            engine.api.remove_container(c["Id"], force=True, v=True)
        engine.close()


if __name__ == "__main__":
    main()
