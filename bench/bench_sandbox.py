"""Benchmark of sandboxes on the local Docker engine: start latency, concurrency, idle cost.

Run ``python bench/bench_sandbox.py [--starts N] [--concurrent 10,50] [--json OUT]``; ``make bench``
calls :func:`run`. Measures, in one run and against one runtime image:

* create -> first command output (``Sandbox(...).start()`` then ``run("echo hi")``), p50/p95 over
  ``starts`` sequential starts, next to the floor: a bare ``docker run --rm --entrypoint true IMAGE``
  of the same image, measured in the same run; plus where a start's time goes (engine calls, the
  server's boot from container start to its ready line, the first command);
* N sandboxes started concurrently: total time and memory per sandbox (the container's cgroup usage
  minus page cache, from ``docker stats``);
* the idle CPU of one sandbox over a few seconds (cgroup CPU time), and its memory.

Everything it creates is labelled ``agentbox.test=1`` and removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from agentbox.backends.docker import DockerBackend
from agentbox.config import SandboxConfig
from agentbox.sandbox import Sandbox

LABELS = {"agentbox.test": "1", "agentbox.bench": "1"}
IDLE_SECONDS = 5.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))]


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "p50": statistics.median(values),
        "p95": _pct(values, 95),
        "min": min(values),
        "max": max(values),
        "samples": values,
    }


@contextlib.contextmanager
def _timed_api(backend: DockerBackend, into: dict[str, float]) -> Iterator[None]:
    """Time the engine calls a start makes (summed per call name) by wrapping the low-level client."""
    api = backend.api
    names = ("create_container", "connect_container_to_network", "put_archive", "start", "inspect_container", "logs")
    originals = {name: getattr(api, name) for name in names}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                into[name] = into.get(name, 0.0) + time.perf_counter() - t

        return timed

    for name, fn in originals.items():
        setattr(api, name, wrap(name, fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(api, name, fn)


def _parse_ts(text: str) -> float:
    # Docker's RFC 3339 with nanoseconds: keep microseconds for fromisoformat (3.10 compatible).
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()


def _server_boot(backend: DockerBackend, container_id: str) -> float | None:
    """Seconds from the container's start (engine clock) to the ready line's log timestamp."""
    attrs = backend.api.inspect_container(container_id)
    raw = backend.api.logs(container_id, timestamps=True).decode(errors="replace")
    for line in raw.splitlines():
        if "agentbox-server ready on" in line:
            return _parse_ts(line.split(" ", 1)[0]) - _parse_ts(attrs["State"]["StartedAt"])
    return None


def bare_docker_run(image: str, runs: int) -> list[float]:
    """Seconds for ``docker run --rm --entrypoint true IMAGE`` (the engine's floor for a container)."""
    times = []
    for i in range(runs + 1):
        t = time.perf_counter()
        done = subprocess.run(
            ["docker", "run", "--rm", "--label", "agentbox.test=1", "--entrypoint", "true", image],
            capture_output=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"docker run failed: {done.stderr.decode(errors='replace')[-300:]}")
        if i:  # the first pays for cold caches
            times.append(time.perf_counter() - t)
    return times


def measure_starts(image: str, starts: int, backend: DockerBackend) -> dict[str, Any]:
    """create -> first output over ``starts`` sequential sandboxes, with a per-phase breakdown."""
    totals: list[float] = []
    ready: list[float] = []
    first: list[float] = []
    boots: list[float] = []
    phases: dict[str, list[float]] = {}
    for i in range(starts + 1):
        calls: dict[str, float] = {}
        sb = Sandbox(runtime_container_image=image, labels=LABELS, backend=backend)
        try:
            with _timed_api(backend, calls):
                t0 = time.perf_counter()
                sb.start()
                t1 = time.perf_counter()
                out = sb.run("echo hi").output
                t2 = time.perf_counter()
            assert out.strip() == "hi", out
            if i == 0:
                continue  # warm-up: first connection, first network lookup
            totals.append(t2 - t0)
            ready.append(t1 - t0)
            first.append(t2 - t1)
            for name, seconds in calls.items():
                phases.setdefault(name, []).append(seconds)
            assert sb.container_id is not None
            boot = _server_boot(backend, sb.container_id)
            if boot is not None:
                boots.append(boot)
        finally:
            sb.remove()
    breakdown = {name: statistics.median(values) for name, values in phases.items()}
    breakdown["server_boot_to_ready_line"] = statistics.median(boots) if boots else float("nan")
    breakdown["start_to_ready"] = statistics.median(ready)
    breakdown["first_command"] = statistics.median(first)
    return {"create_to_first_output_s": _summary(totals), "breakdown_p50_s": breakdown}


def _memory_mb(stats: dict[str, Any]) -> float:
    mem = stats.get("memory_stats") or {}
    usage = float(mem.get("usage", 0))
    extra = mem.get("stats") or {}
    # cgroup v1 reports page cache in "cache" (v2: "inactive_file"); it is reclaimable, not the sandbox's.
    usage -= float(extra.get("total_inactive_file", extra.get("inactive_file", extra.get("cache", 0))))
    return usage / 2**20


def measure_concurrent(image: str, count: int, backend: DockerBackend) -> dict[str, Any]:
    """Start ``count`` sandboxes at once (each until its first output); total time and memory each."""
    made: list[Sandbox] = []

    def one() -> float:
        sb = Sandbox(runtime_container_image=image, labels=LABELS, backend=backend)
        made.append(sb)
        t = time.perf_counter()
        sb.start()
        sb.run("echo hi")
        return time.perf_counter() - t

    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=count) as pool:
            each = list(pool.map(lambda _: one(), range(count)))
        total = time.perf_counter() - t0
        with ThreadPoolExecutor(max_workers=min(count, 16)) as pool:
            memory = list(pool.map(
                lambda sb: _memory_mb(backend.api.stats(sb.container_id, stream=False, one_shot=True)), made
            ))
        return {
            "total_s": total,
            "per_sandbox_s": _summary(each),
            "memory_per_sandbox_mb": statistics.median(memory),
        }
    finally:
        with ThreadPoolExecutor(max_workers=min(count, 16)) as pool:
            list(pool.map(lambda sb: sb.remove(), made))


def _cpu_ns(backend: DockerBackend, container_id: str) -> int:
    stats = backend.api.stats(container_id, stream=False, one_shot=True)
    return int(stats["cpu_stats"]["cpu_usage"]["total_usage"])


def measure_idle(image: str, backend: DockerBackend, seconds: float = IDLE_SECONDS) -> dict[str, Any]:
    """CPU of one idle sandbox (after one command) over ``seconds``, and its memory."""
    with Sandbox(runtime_container_image=image, labels=LABELS, backend=backend) as sb:
        sb.run("echo warm")
        assert sb.container_id is not None
        c0, t0 = _cpu_ns(backend, sb.container_id), time.perf_counter()
        time.sleep(seconds)  # measuring idleness is the one thing a sleep is for
        c1, t1 = _cpu_ns(backend, sb.container_id), time.perf_counter()
        stats = backend.api.stats(sb.container_id, stream=False, one_shot=True)
        rss = sb.run("ps -o rss= -p $(pgrep -f 'agentbox.server' | head -1)").output.strip()
    return {
        "idle_cpu_percent": (c1 - c0) / 1e9 / (t1 - t0) * 100,
        "sandbox_memory_mb": _memory_mb(stats),
        "server_rss_mb": int(rss.split()[-1]) / 1024 if rss.split() and rss.split()[-1].isdigit() else None,
    }


def run(json_path: str | None = None, starts: int = 10, concurrent: tuple[int, ...] = (10, 50)) -> dict[str, Any]:
    """Run every measurement; returns (and with ``json_path`` writes) the results as a dict."""
    backend = DockerBackend()
    try:
        # AGENTBOX_TEST_IMAGE: bench an existing image instead of the one built from this checkout.
        image = os.environ.get("AGENTBOX_TEST_IMAGE") or backend.resolve_image(SandboxConfig())
        result: dict[str, Any] = {"image": image, "starts": starts}
        floor = bare_docker_run(image, max(5, starts // 2))
        result["docker_run_floor_s"] = _summary(floor)
        result.update(measure_starts(image, starts, backend))
        for count in concurrent:
            result[f"concurrent_{count}"] = measure_concurrent(image, count, backend)
        result.update(measure_idle(image, backend))
    finally:
        backend.close()
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: run and print the results as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=10, help="sequential starts to time (default 10)")
    parser.add_argument("--concurrent", default="10,50", help="comma-separated concurrency levels (default 10,50)")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    levels = tuple(int(n) for n in args.concurrent.split(",") if n.strip())
    result = run(args.json, starts=args.starts, concurrent=levels)
    for entry in result.values():
        if isinstance(entry, dict):
            entry.pop("samples", None)
            for sub in entry.values():
                if isinstance(sub, dict):
                    sub.pop("samples", None)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
