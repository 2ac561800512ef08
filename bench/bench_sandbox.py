"""Benchmark of sandboxes on the local Docker engine: start latency, concurrency, idle cost.

Run ``python bench/bench_sandbox.py [--starts N] [--concurrent 10,50] [--json OUT]``; ``make bench``
calls :func:`run`. Measures, in one run and against one runtime image:

* create -> first command output (``Sandbox(...).start()`` then ``run("echo hi")``), p50/p95 over
  ``starts`` sequential starts, next to the floor: a bare ``docker run --rm --entrypoint true IMAGE``
  of the same image, measured in the same run; plus where a start's time goes (engine calls, the
  server's boot from container start to its ready line, the first command);
* teardown (``Sandbox.remove``) next to its floor, ``docker rm -f`` of a running container of the image;
* a cold start phase by phase: the engine's create and start calls, container start -> entrypoint,
  entrypoint + interpreter start, imports, app and shell, the ready line reaching the host, the first
  command (from the server's phases line, see ``agentbox.server.__main__``);
* N sandboxes started concurrently: total time and memory per sandbox (the container's cgroup usage
  minus page cache, from ``docker stats``), next to N x (``docker run -d`` + ``docker exec``) at once;
* 10 MB of command output, whole (the result, then its full output), next to ``docker exec`` of the
  same command into a pipe;
* the first streamed chunk in a new sandbox, and in the same sandbox afterwards;
* the idle CPU of one sandbox over a few seconds (cgroup CPU time), its memory, and the server's RSS
  before and after 50 MB up and down.

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
import tempfile
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
OUTPUT_10MB = "head -c 10000000 /dev/zero | tr '\\0' x"
PHASES_PREFIX = "agentbox-server phases: "


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
    names = (
        "create_container", "disconnect_container_from_network", "connect_container_to_network", "put_archive",
        "start", "inspect_container", "logs",
    )
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
    # On a local engine the key is written into the sandbox's mounted directory instead of put_archive.
    keys = backend.keys
    if keys is not None:
        keys.hand_over = wrap("hand_over", keys.hand_over)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(api, name, fn)
        if keys is not None:
            del keys.hand_over


def _parse_ts(text: str) -> float:
    # Docker's RFC 3339 with nanoseconds: keep microseconds for fromisoformat (3.10 compatible).
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()


def _server_boot(backend: DockerBackend, container_id: str) -> dict[str, float]:
    """Where a container's start went, in seconds, from the engine's clock and the server's phases line.

    ``to_entrypoint``: container started (engine) -> the entrypoint process forked; ``entrypoint``: ->
    the server's main module runs (the entrypoint's shell, setpriv, the interpreter's own start);
    ``imports``, ``app`` (app built, uvicorn imported), ``lifespan`` (pools, the default shell) -> ready;
    ``boot``: container started -> ready line, by the log's own timestamp.
    """
    attrs = backend.api.inspect_container(container_id)
    started = _parse_ts(attrs["State"]["StartedAt"])
    raw = backend.api.logs(container_id, timestamps=True).decode(errors="replace")
    out: dict[str, float] = {}
    for line in raw.splitlines():
        stamp, _, text = line.partition(" ")
        if text.startswith(PHASES_PREFIX):
            marks = {k: float(v) for k, v in (p.split("=", 1) for p in text[len(PHASES_PREFIX):].split())}
            out["to_entrypoint"] = marks["start"] - started
            previous = 0.0
            for name, phase in (("main", "entrypoint"), ("imports", "imports"), ("app", "app"), ("ready", "lifespan")):
                if name in marks:
                    out[phase] = (marks[name] - previous) / 1000
                    previous = marks[name]
        elif "agentbox-server ready on" in text:
            out["boot"] = _parse_ts(stamp) - started
    return out


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


def _docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"docker {args[0]} failed: {done.stderr.decode(errors='replace')[-300:]}")
    return done.stdout.decode().strip()


def _idle_container(image: str, *extra: str) -> str:
    """A running container of ``image`` doing nothing (the floors' subject), labelled for cleanup."""
    return _docker("run", "-d", "--label", "agentbox.test=1", "--label", "agentbox.bench=1", *extra,
                   "--entrypoint", "sleep", image, "infinity")


def bare_docker_rm(image: str, runs: int, *extra: str) -> list[float]:
    """Seconds for ``docker rm -f`` of a running container of ``image`` (run with ``extra`` options): the
    floor of a teardown."""
    times = []
    for _ in range(runs):
        cid = _idle_container(image, *extra)
        t = time.perf_counter()
        _docker("rm", "-f", cid)
        times.append(time.perf_counter() - t)
    return times


def bare_concurrent(image: str, count: int) -> float:
    """Seconds for ``count`` x (``docker run -d`` + ``docker exec echo hi``) at once: the concurrent floor."""
    made: list[str] = []

    def one(_: int) -> None:
        cid = _idle_container(image)
        made.append(cid)
        assert _docker("exec", cid, "echo", "hi") == "hi"

    try:
        t = time.perf_counter()
        with ThreadPoolExecutor(max_workers=count) as pool:
            list(pool.map(one, range(count)))
        return time.perf_counter() - t
    finally:
        if made:
            _docker("rm", "-f", *made)


def bare_exec_10mb(container_id: str, runs: int) -> list[float]:
    """Seconds for ``docker exec`` of the 10 MB output command into a pipe here: the 10 MB floor."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        done = subprocess.run(["docker", "exec", container_id, "sh", "-c", OUTPUT_10MB], capture_output=True)
        times.append(time.perf_counter() - t)
        assert len(done.stdout) == 10_000_000, done.stderr[-300:]
    return times


def measure_starts(image: str, starts: int, backend: DockerBackend) -> dict[str, Any]:
    """create -> first output over ``starts`` sequential sandboxes, with a per-phase breakdown; teardowns."""
    totals: list[float] = []
    ready: list[float] = []
    first: list[float] = []
    teardowns: list[float] = []
    boots: dict[str, list[float]] = {}
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
            for name, seconds in _server_boot(backend, sb.container_id).items():
                boots.setdefault(name, []).append(seconds)
        finally:
            t = time.perf_counter()
            sb.remove()
            if i:
                teardowns.append(time.perf_counter() - t)
    breakdown = {name: statistics.median(values) for name, values in phases.items()}
    for name, values in boots.items():
        breakdown[f"server_{name}"] = statistics.median(values)
    breakdown["start_to_ready"] = statistics.median(ready)
    breakdown["first_command"] = statistics.median(first)
    return {"create_to_first_output_s": _summary(totals), "breakdown_p50_s": breakdown,
            "teardown_s": _summary(teardowns)}


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
        # The floor only at the level (10): at 50 it would double the bench's longest step.
        floor = bare_concurrent(image, count) if count <= 10 else None
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=count) as pool:
            each = list(pool.map(lambda _: one(), range(count)))
        total = time.perf_counter() - t0
        with ThreadPoolExecutor(max_workers=min(count, 16)) as pool:
            stats = list(pool.map(lambda sb: backend.api.stats(sb.container_id, stream=False, one_shot=True), made))
        # CPU each sandbox itself burnt to its first output (entrypoint, server imports and start, bash):
        # count x this / cores is what the starts cost the machine beyond the engine's own work.
        cpu = [int(st["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9 for st in stats]
        return {
            "total_s": total,
            "per_sandbox_s": _summary(each),
            "memory_per_sandbox_mb": statistics.median(_memory_mb(st) for st in stats),
            "cpu_per_sandbox_s": statistics.median(cpu),
            "cpus": os.cpu_count(),
            "floor_docker_run_exec_s": floor,
        }
    finally:
        with ThreadPoolExecutor(max_workers=min(count, 16)) as pool:
            list(pool.map(lambda sb: sb.remove(), made))


def _cpu_ns(backend: DockerBackend, container_id: str) -> int:
    stats = backend.api.stats(container_id, stream=False, one_shot=True)
    return int(stats["cpu_stats"]["cpu_usage"]["total_usage"])


def _server_rss_mb(sb: Sandbox) -> float | None:
    rss = sb.client.info().server.rss_bytes
    return rss / 2**20 if rss else None


def measure_stream_and_output(image: str, backend: DockerBackend, runs: int = 3) -> dict[str, Any]:
    """First streamed chunk in a new sandbox (and later), and 10 MB of output whole next to docker exec."""
    firsts: list[float] = []
    laters: list[float] = []
    whole: list[float] = []
    floor: list[float] = []
    for _ in range(runs):
        with Sandbox(runtime_container_image=image, labels=LABELS, backend=backend) as sb:
            for into in (firsts, laters, laters):
                t = time.perf_counter()
                events = sb.stream("echo hi")
                next(iter(events))
                into.append(time.perf_counter() - t)
                for _event in events:  # to its end: the session is free for the next command
                    pass
            t = time.perf_counter()
            res = sb.run(OUTPUT_10MB)
            text = sb.client.command_output(res.command_id)
            whole.append(time.perf_counter() - t)
            assert len(text) == 10_000_000, len(text)
            assert sb.container_id is not None
            floor += bare_exec_10mb(sb.container_id, 1)
    return {"first_stream_chunk_s": _summary(firsts), "later_stream_chunk_s": _summary(laters),
            "output_10mb_whole_s": _summary(whole), "docker_exec_10mb_floor_s": _summary(floor)}


# The runtime server's own stack and nothing else: Python, asyncio, uvicorn, Starlette and one pydantic model
# answering one route, idle after a few requests. What no server on this stack can go under; the runtime
# server adds its routes, models, shell session and pools on top.
STACK_FLOOR_APP = """
import pydantic, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
class Body(pydantic.BaseModel):
    command: str
    timeout: float | None = None
async def run(request):
    return JSONResponse({"output": Body.model_validate_json(await request.body()).command})
app = Starlette(routes=[Route("/run", run, methods=["POST"])])
uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=8765, log_level="warning", lifespan="off")).run()
"""
STACK_FLOOR_POKE = """
import http.client, time
for _ in range(200):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", 8765, timeout=5)
        for _ in range(20):
            conn.request("POST", "/run", body=b'{"command": "echo hi"}')
            assert conn.getresponse().read() == b'{"output":"echo hi"}'
        break
    except ConnectionRefusedError:
        time.sleep(0.05)
else:
    raise SystemExit("the stack floor app never answered")
"""


def stack_floor_memory(image: str, backend: DockerBackend, seconds: float = 2.0) -> float:
    """MiB of a container of ``image`` running only :data:`STACK_FLOOR_APP`, measured as a sandbox is."""
    python = "/opt/agentbox/venv/bin/python"
    cid = _docker("run", "-d", "--label", "agentbox.test=1", "--label", "agentbox.bench=1",
                  "--entrypoint", python, image, "-I", "-c", STACK_FLOOR_APP)
    try:
        _docker("exec", cid, python, "-I", "-c", STACK_FLOOR_POKE)
        time.sleep(seconds)  # idle, as the sandbox is when it is measured
        return _memory_mb(backend.api.stats(cid, stream=False, one_shot=True))
    finally:
        _docker("rm", "-f", cid)


def measure_idle(image: str, backend: DockerBackend, seconds: float = IDLE_SECONDS) -> dict[str, Any]:
    """CPU of one idle sandbox (after one command) over ``seconds``, its memory, and the server's RSS
    growth after 50 MB up and down (then idle memory once more)."""
    with Sandbox(runtime_container_image=image, labels=LABELS, backend=backend) as sb:
        sb.run("echo warm")
        assert sb.container_id is not None
        c0, t0 = _cpu_ns(backend, sb.container_id), time.perf_counter()
        time.sleep(seconds)  # measuring idleness is the one thing a sleep is for
        c1, t1 = _cpu_ns(backend, sb.container_id), time.perf_counter()
        stats = backend.api.stats(sb.container_id, stream=False, one_shot=True)
        rss_idle = _server_rss_mb(sb)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "50mb.bin"
            src.write_bytes(os.urandom(50 << 20))
            for _ in range(2):
                sb.upload(src, "bench-50mb.bin")
                sb.download("bench-50mb.bin", Path(tmp) / "back.bin")
            sb.run("rm -f bench-50mb.bin")
        rss_after = _server_rss_mb(sb)
        after = backend.api.stats(sb.container_id, stream=False, one_shot=True)
    return {
        "idle_cpu_percent": (c1 - c0) / 1e9 / (t1 - t0) * 100,
        "sandbox_memory_mb": _memory_mb(stats),
        "sandbox_memory_after_transfers_mb": _memory_mb(after),
        "server_rss_mb": rss_idle,
        "server_rss_after_transfers_mb": rss_after,
        "stack_floor_memory_mb": stack_floor_memory(image, backend),
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
        result["docker_rm_floor_s"] = _summary(bare_docker_rm(image, max(5, starts // 2)))
        result.update(measure_starts(image, starts, backend))
        result.update(measure_stream_and_output(image, backend))
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
