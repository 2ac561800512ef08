"""``make bench``: every figure of the architecture's performance budget in one table, beside its floor.

    python bench/run.py [--quick] [--json PATH]

Runs the component benches (``bench_server.py``, ``bench_sandbox.py``, ``bench_images.py``, imported by
path), each in a child process with a time limit so that one that crashes or hangs is reported as a
missing row instead of taking the rest down. The server bench is repeated (it is fast), so its figures
get a median and a spread over runs; the sandbox bench hands back its raw start samples and its own
floor (a bare ``docker run`` of the same image). The floors no component measures (a local 10 MB pipe,
memory copy bandwidth) are measured here, in the same run, so every figure sits next to what this
machine can do at best.

A budget is absolute (``<= 1 s``), a ratio to the row's floor measured in the same run (``<= 1.5x
floor``: the only honest yardstick on a shared, noisy machine), or both; a row passes when all of its
budgets hold. A cold start is also broken down phase by phase (engine calls, entrypoint, imports, ...) in
a second table, so the next person sees where its time goes.

Spread is stated per row: ``p5-p95`` of the samples when there are 20 or more, else ``min-max``.
Everything is written as JSON to ``bench/results/<UTC timestamp>.json``. The whole run stays well under
ten minutes; the exit code is 1 if any budgeted figure fails or is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
# The whole `make bench` must stay under 15 minutes; each component gets a slice of that.
TOTAL_BUDGET_S = 1800.0
SPREAD_MIN_SAMPLES = 20


@dataclass(frozen=True)
class Component:
    """One component bench: its file, keyword arguments for ``run``, how often and how long."""

    name: str
    filename: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    repeats: int = 1
    timeout_s: float = 120.0


# Repeats give each figure a spread; a repeat is skipped when the first run says it would not fit.
COMPONENTS = (
    Component("server", "bench_server.py", repeats=5, timeout_s=60),
    Component("sandbox", "bench_sandbox.py", {"starts": 10, "concurrent": [10, 50]}, repeats=2, timeout_s=360),
    Component("images", "bench_images.py", repeats=2, timeout_s=240),
    Component("netpolicy", "bench_netpolicy.py", repeats=1, timeout_s=150),
    Component("swarm", "bench_swarm.py", repeats=1, timeout_s=300),
    Component("service", "bench_service.py", repeats=1, timeout_s=300),
    Component("gvisor", "bench_gvisor.py", {"starts": 5, "echoes": 50}, repeats=1, timeout_s=180),
    Component("console", "bench_console.py", {"opens": 10}, repeats=1, timeout_s=300),
    Component("openhands", "bench_openhands.py", repeats=1, timeout_s=600),
)
# `make stress` (``--only stress``): not part of the default run, it loads the machine for minutes.
STRESS = Component("stress", "bench_stress.py", {"sandboxes": 20, "commands": 100}, repeats=1, timeout_s=500)


# --------------------------------------------------------------------------------------------- stats


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def spread(values: list[float]) -> tuple[float, float, str]:
    """(low, high, how): p5-p95 for 20 samples or more, min-max below that."""
    if len(values) >= SPREAD_MIN_SAMPLES:
        return percentile(values, 5), percentile(values, 95), f"p5-p95, n={len(values)}"
    return min(values), max(values), f"min-max, n={len(values)}"


# ---------------------------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One line of the table: a figure, its floor and budget, and whether it holds."""

    figure: str
    unit: str
    value: float | None = None
    low: float | None = None
    high: float | None = None
    spread_kind: str = ""
    floor: float | None = None
    floor_note: str = ""
    budget: str = "—"
    ratio: float | None = None
    """value / floor, when the row has a floor."""
    verdict: str = "—"
    """``pass``, ``FAIL``, ``missing``, or ``—`` when there is no budget."""
    note: str = ""


def _check(value: float, budget: tuple[str, float] | None) -> str:
    if budget is None:
        return "—"
    op, limit = budget
    return "pass" if (value <= limit if op == "<=" else value >= limit if op == ">=" else value < limit) else "FAIL"


def make_row(
    figure: str,
    unit: str,
    values: list[float] | None,
    *,
    stat: Callable[[list[float]], float] = statistics.median,
    budget: tuple[str, float] | None = None,
    ratio: float | None = None,
    floor: float | None = None,
    floor_note: str = "",
    missing: str = "",
) -> Row:
    """A row from repeated values (or raw samples); ``stat`` picks the figure (median, p95...).

    ``budget``: an absolute bound; ``ratio``: the most the figure may be, in multiples of ``floor``. A
    ratio budget without its floor is ``missing``: the figure alone cannot say whether it holds.
    """
    texts = ([f"{budget[0]} {budget[1]:g} {unit}"] if budget else []) + ([f"<= {ratio:g}x floor"] if ratio else [])
    budget_text = ", ".join(texts) or "—"
    if not values:
        return Row(figure, unit, floor=floor, floor_note=floor_note, budget=budget_text, verdict="missing",
                   note=missing or "not measured")
    low, high, how = spread(values)
    value = stat(values)
    times = value / floor if floor else None
    verdicts = [_check(value, budget)] if budget else []
    if ratio is not None:
        verdicts.append("missing" if times is None else _check(times, ("<=", ratio)))
    verdict = next((v for v in ("FAIL", "missing") if v in verdicts), "pass" if verdicts else "—")
    row = Row(figure, unit, value, low, high, how, floor, floor_note, budget_text, times, verdict)
    if ratio is not None and times is None:
        row.note = "no floor measured"
    return row


def dig(data: Mapping[str, Any] | None, *paths: str) -> Any:
    """The first of the dotted ``paths`` present in ``data`` (None if none is)."""
    for path in paths:
        node: Any = data
        for key in path.split("."):
            if not isinstance(node, Mapping) or key not in node:
                node = None
                break
            node = node[key]
        if node is not None:
            return node
    return None


def across(runs: list[dict[str, Any]], *paths: str, scale: float = 1.0) -> list[float]:
    """One number per run (the first path each run has), scaled."""
    values = []
    for run in runs:
        value = dig(run, *paths)
        if isinstance(value, (int, float)):
            values.append(float(value) * scale)
    return values


def samples(runs: list[dict[str, Any]], *paths: str, scale: float = 1.0) -> list[float]:
    """Raw samples (lists) from every run, concatenated and scaled."""
    out: list[float] = []
    for run in runs:
        value = dig(run, *paths)
        if isinstance(value, list):
            out += [float(v) * scale for v in value if isinstance(v, (int, float))]
    return out


def p95(values: list[float]) -> float:
    """95th percentile."""
    return percentile(values, 95)


# ------------------------------------------------------------------------------------ the components


def run_child(path: Path, kwargs: Mapping[str, Any], out: Path) -> None:
    """In a child process: import the bench at ``path``, call ``run(**kwargs)``, write its dict as JSON."""
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.run(**kwargs)
    out.write_text(json.dumps(result, default=str))


@dataclass
class ComponentResult:
    """What one component bench gave over its repeats."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0


def run_component(component: Component, deadline: float, progress: Callable[[str], None]) -> ComponentResult:
    """Run ``component`` up to ``repeats`` times within its time limit and the overall deadline."""
    result = ComponentResult()
    path = BENCH_DIR / component.filename
    if not path.is_file():
        result.error = f"{component.filename} does not exist"
        return result
    started = time.monotonic()
    for attempt in range(component.repeats):
        remaining = min(component.timeout_s - (time.monotonic() - started), deadline - time.monotonic())
        # A repeat is only worth starting if the first one suggests it will finish in time.
        per_run = (time.monotonic() - started) / attempt if attempt else 0.0
        if remaining <= 5 or (attempt and per_run * 1.2 > remaining):
            break
        progress(f"{component.name} bench, run {attempt + 1}/{component.repeats} ...")
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(path),
                   "--kwargs", json.dumps(dict(component.kwargs)), "--out", str(out)]
            try:
                child = subprocess.run(cmd, capture_output=True, text=True, timeout=remaining,
                                       stdin=subprocess.DEVNULL, cwd=BENCH_DIR.parent)
            except subprocess.TimeoutExpired:
                result.error = f"run {attempt + 1} timed out after {remaining:.0f} s"
                break
            if child.returncode != 0 or not out.exists():
                lines = [line for line in (child.stderr or child.stdout).strip().splitlines() if line.strip()]
                result.error = f"run {attempt + 1} failed (exit {child.returncode}): {lines[-1] if lines else '?'}"
                break
            result.runs.append(json.loads(out.read_text()))
    result.seconds = time.monotonic() - started
    return result


# ---------------------------------------------------------------------------------------- own floors


def floor_pipe_10mb() -> float:
    """Seconds to produce 10 MB in a shell pipeline and read it all here: the 10 MB output floor."""
    t = time.perf_counter()
    done = subprocess.run(["sh", "-c", "head -c 10000000 /dev/zero | tr '\\0' x"], capture_output=True)
    elapsed = time.perf_counter() - t
    assert len(done.stdout) == 10_000_000
    return elapsed


def floor_memcpy_mbps(size_mb: int = 50) -> float:
    """MB/s of copying ``size_mb`` in memory: what a streamed transfer cannot beat."""
    data = os.urandom(size_mb << 20)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        copy = bytearray(data)
        best = min(best, time.perf_counter() - t)
        del copy
    return size_mb / best


# -------------------------------------------------------------------------------------------- rows


def build_rows(results: Mapping[str, ComponentResult], floors: Mapping[str, Any]) -> list[Row]:
    """Every budget figure as a row, from the component results and the floors measured here."""
    why = {n: f"{n} bench {'missing' if results[n].error else 'gave no figure'}" for n in results}
    rows: list[Row] = []
    if "stress" in results:
        return stress_rows(results["stress"].runs, why["stress"])
    server, sandbox, images = (results[n].runs for n in ("server", "sandbox", "images"))

    starts = samples(sandbox, "create_to_first_output_s.samples")
    # The sandbox bench times `docker run --rm --entrypoint true` of the very image it starts.
    docker_run = samples(sandbox, "docker_run_floor_s.samples")
    docker_p50 = statistics.median(docker_run) if docker_run else None
    docker_p95 = p95(docker_run) if docker_run else None
    rows.append(make_row("create → first output, p50", "s", starts, budget=("<=", 1.0), ratio=1.5,
                         floor=docker_p50, floor_note="bare docker run", missing=why["sandbox"]))
    rows.append(make_row("create → first output, p95", "s", starts, stat=p95, floor=docker_p95,
                         floor_note="bare docker run", missing=why["sandbox"]))

    teardown = samples(sandbox, "teardown_s.samples")
    docker_rm = samples(sandbox, "docker_rm_floor_s.samples")
    rows.append(make_row("teardown, p50", "s", teardown, ratio=1.2,
                         floor=statistics.median(docker_rm) if docker_rm else None,
                         floor_note="docker rm -f", missing=why["sandbox"]))

    http_p50 = across(server, "floor_http_alive.p50_ms")
    pty_p50 = across(server, "floor_pty_builtin.p50_ms")
    http_p99 = across(server, "floor_http_alive.p99_ms")
    pty_p99 = across(server, "floor_pty_builtin.p99_ms")
    echo_floor_p50 = statistics.median(http_p50) + statistics.median(pty_p50) if http_p50 and pty_p50 else None
    echo_floor_p99 = statistics.median(http_p99) + statistics.median(pty_p99) if http_p99 and pty_p99 else None
    rows.append(make_row("echo hi round trip, p50", "ms", across(server, "echo_roundtrip.p50_ms"),
                         budget=("<=", 3.0), ratio=5.0, floor=echo_floor_p50, floor_note="bare HTTP + shell",
                         missing=why["server"]))
    # The same request without the SDK's client: what is left of the round trip on the server's side.
    rows.append(make_row("echo hi round trip, bare HTTP client (no SDK), p50", "ms",
                         across(server, "echo_bare_http.p50_ms"), floor=echo_floor_p50,
                         floor_note="bare HTTP + shell", missing=why["server"]))
    rows.append(make_row("echo hi round trip, p99", "ms", across(server, "echo_roundtrip.p99_ms"),
                         budget=("<=", 15.0), ratio=8.0, floor=echo_floor_p99, floor_note="bare HTTP + shell",
                         missing=why["server"]))
    rows.append(make_row("10 MB command output", "s", across(server, "output_10mb_s"),
                         floor=floors.get("pipe_10mb_s"), floor_note="local pipe", missing=why["server"]))
    exec_10mb = samples(sandbox, "docker_exec_10mb_floor_s.samples")
    rows.append(make_row("10 MB command output, whole, in a sandbox", "s",
                         samples(sandbox, "output_10mb_whole_s.samples"), ratio=2.0,
                         floor=statistics.median(exec_10mb) if exec_10mb else None,
                         floor_note="docker exec into a pipe", missing=why["sandbox"]))
    rows.append(make_row("first streamed chunk, new sandbox, p50", "ms",
                         samples(sandbox, "first_stream_chunk_s.samples", scale=1000), budget=("<=", 20.0),
                         missing=why["sandbox"]))
    rows.append(make_row("streamed chunk, later, p50", "ms",
                         samples(sandbox, "later_stream_chunk_s.samples", scale=1000), missing=why["sandbox"]))
    memcpy = floors.get("memcpy_MBps")
    for size in (1, 50):
        budget = (">=", 200.0) if size == 50 else None
        for direction in ("upload", "download"):
            rows.append(make_row(f"{size} MB {direction}", "MB/s", across(server, f"{direction}_{size}mb_MBps"),
                                 budget=budget, floor=memcpy, floor_note="memory copy", missing=why["server"]))

    for count in (10, 50):
        concurrent_floor = across(sandbox, f"concurrent_{count}.floor_docker_run_exec_s")
        if concurrent_floor:
            floor_args: dict[str, Any] = {"floor": statistics.median(concurrent_floor), "ratio": 1.2,
                                          "floor_note": f"{count} x (docker run -d + exec) at once"}
        else:
            floor_args = {"floor": docker_p50, "floor_note": "one bare docker run"}
        rows.append(make_row(
            f"{count} sandboxes started concurrently, total", "s",
            across(sandbox, f"concurrent_{count}.total_s"), missing=why["sandbox"], **floor_args))
        # Each sandbox's own start work (its server is Python) spread over the cores: the part of the total
        # no engine call can remove.
        cpu_share = []
        for r in sandbox:
            cpu, cores = dig(r, f"concurrent_{count}.cpu_per_sandbox_s"), dig(r, f"concurrent_{count}.cpus") or 1
            if isinstance(cpu, (int, float)):
                cpu_share.append(cpu * count / cores)
        rows.append(make_row(f"{count} sandboxes: their own CPU to first output / cores", "s", cpu_share,
                             missing=why["sandbox"]))
        rows.append(make_row(f"{count} sandboxes, memory per sandbox", "MB",
                             across(sandbox, f"concurrent_{count}.memory_per_sandbox_mb"), missing=why["sandbox"]))
    rows.append(make_row("idle sandbox CPU", "% core", across(sandbox, "idle_cpu_percent"),
                         budget=("<", 1.0), missing=why["sandbox"]))
    stack_floor = across(sandbox, "stack_floor_memory_mb")
    rows.append(make_row("idle sandbox memory", "MiB", across(sandbox, "sandbox_memory_mb"),
                         budget=("<=", 20.0), missing=why["sandbox"],
                         floor=statistics.median(stack_floor) if stack_floor else None,
                         floor_note="uvicorn + Starlette + pydantic app alone"))
    rows.append(make_row("idle sandbox memory after 50 MB up + down", "MiB",
                         across(sandbox, "sandbox_memory_after_transfers_mb"), missing=why["sandbox"]))
    # What the issue asks of large transfers: memory back to where it was (growth, not an absolute RSS,
    # ~15 MiB of which are the interpreter's shared libraries and bytecode mapped from files).
    pairs = [(dig(r, "server_rss_after_transfers_mb"), dig(r, "server_rss_mb")) for r in sandbox]
    growth = [float(a - b) for a, b in pairs if isinstance(a, (int, float)) and isinstance(b, (int, float))]
    rows.append(make_row("runtime server RSS growth after 50 MB up + down", "MiB", growth, budget=("<=", 2.0),
                         missing=why["sandbox"]))
    rows.append(make_row("runtime server RSS after 50 MB up + down", "MiB",
                         across(sandbox, "server_rss_after_transfers_mb"), budget=("<=", 25.0),
                         missing=why["sandbox"]))
    rss = across(sandbox, "server_rss_mb")
    rss_note = "in a sandbox"
    if not rss:
        rss, rss_note = across(server, "server_rss_mb"), "bare process"
    row = make_row("runtime server RSS", "MiB", rss, budget=("<=", 40.0), missing=why["sandbox"])
    row.note = rss_note if rss else row.note
    rows.append(row)

    rows.append(make_row("image build, cold (no cache)", "s", across(images, "cold_build_s"), missing=why["images"]))
    rows.append(make_row("image rebuild, one module changed", "s", across(images, "rebuild_one_module_s"),
                         missing=why["images"]))
    rows.append(make_row("image rebuild, nothing changed", "s", across(images, "ensure_no_change_new_process_s"),
                         missing=why["images"]))
    policy = results["netpolicy"].runs if "netpolicy" in results else []
    why_policy = why.get("netpolicy", "netpolicy bench missing")
    open_connect = across(policy, "connect_open_ms.p50")
    rows.append(make_row("connect to an allowed sidecar, egress policy, p50", "ms",
                         across(policy, "connect_policy_ms.p50"), floor=statistics.median(open_connect)
                         if open_connect else None, floor_note="no policy", missing=why_policy))
    open_echo = across(policy, "echo_open_ms.p50")
    rows.append(make_row("echo hi round trip, egress policy, p50", "ms", across(policy, "echo_policy_ms.p50"),
                         floor=statistics.median(open_echo) if open_echo else None, floor_note="no policy",
                         missing=why_policy))
    swarm = results["swarm"].runs if "swarm" in results else []
    why_swarm = why.get("swarm", "swarm bench missing")
    service_create = across(swarm, "service_create_to_answering_s")
    rows.append(make_row("swarm: create → first output", "s", across(swarm, "agentbox_create_to_first_output_s"),
                         floor=statistics.median(service_create) if service_create else None,
                         floor_note="docker service create", missing=why_swarm))
    rows.append(make_row("swarm: plain docker run on a node → answering", "s",
                         across(swarm, "docker_run_to_answering_s"), missing=why_swarm))

    def _median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    gvisor = results["gvisor"].runs if "gvisor" in results else []
    why_gvisor = why.get("gvisor", "gvisor bench missing")
    if gvisor and all(isinstance(dig(r, "runsc"), str) for r in gvisor):
        why_gvisor = f"runsc {dig(gvisor[0], 'runsc')}"
    rows.append(make_row("gVisor: create → first output, p50", "s",
                         across(gvisor, "runsc.create_to_first_output_s.p50"),
                         floor=_median(across(gvisor, "runc.create_to_first_output_s.p50")),
                         floor_note="runc, same run", missing=why_gvisor))
    rows.append(make_row("gVisor: echo hi round trip, p50", "ms", across(gvisor, "runsc.echo_s.p50", scale=1000),
                         floor=_median(across(gvisor, "runc.echo_s.p50", scale=1000)), floor_note="runc, same run",
                         missing=why_gvisor))
    rows.append(make_row("gVisor: sudo true (default mode), p50", "s", across(gvisor, "runsc.sudo_s.p50"),
                         floor=_median(across(gvisor, "runc.sudo_s.p50")), floor_note="runc's setuid sudo",
                         missing=why_gvisor))

    console = results["console"].runs if "console" in results else []
    rows.append(make_row("console: page open → terminal prompt, p50", "ms", across(console, "page_to_prompt_ms.p50"),
                         missing=why.get("console", "console bench missing")))

    openhands = results["openhands"].runs if "openhands" in results else []
    why_oh = why.get("openhands", "openhands bench missing")
    oh_docker = _median(across(openhands, "openhands_docker.connect_to_first_echo_s"))
    oh_note = "OpenHands' own DockerRuntime"
    if oh_docker is None and openhands and dig(openhands[0], "openhands_docker.error"):
        oh_note = f"DockerRuntime: {str(dig(openhands[0], 'openhands_docker.error'))[:60]}"
    rows.append(make_row("OpenHands: connect() → first echo, cold", "s", across(openhands, "connect_to_first_echo_s"),
                         floor=oh_docker, floor_note=oh_note, missing=why_oh))
    rows.append(make_row("OpenHands: connect() → first echo, from a pool", "s",
                         across(openhands, "pooled.connect_to_first_echo_s"), floor=oh_docker, floor_note=oh_note,
                         missing=why_oh))
    rows.append(make_row("OpenHands: echo through its client, p50", "ms", across(openhands, "echo_round_trip.p50_ms"),
                         floor=_median(across(openhands, "openhands_docker.echo_round_trip.p50_ms")),
                         floor_note="OpenHands' own DockerRuntime", missing=why_oh))

    service = results["service"].runs if "service" in results else []
    why_service = why.get("service", "service bench missing")
    local_cold = samples(service, "local_cold_create_to_first_output_s")
    local_p50 = statistics.median(local_cold) if local_cold else None
    rows.append(make_row("service: cold create → first output", "s",
                         samples(service, "service_cold_create_to_first_output_s"),
                         budget=("<=", local_p50 + 0.05) if local_p50 is not None else None, floor=local_p50,
                         floor_note="local cold create", missing=why_service))
    rows.append(make_row("service: pooled create → first output", "ms",
                         samples(service, "service_pooled_create_to_first_output_s", scale=1000),
                         budget=("<=", 50.0), missing=why_service))
    direct_echo = across(service, "echo_direct_ms.p50")
    direct_p50 = statistics.median(direct_echo) if direct_echo else None
    rows.append(make_row("service: proxied echo round trip, p50", "ms", across(service, "echo_proxied_ms.p50"),
                         budget=("<=", direct_p50 + 1.0) if direct_p50 is not None else None, floor=direct_p50,
                         floor_note="same sandbox, direct", missing=why_service))
    rows.append(make_row("service: 10 concurrent cold creates, all served", "s",
                         across(service, "concurrent_10_cold_s"), missing=why_service))
    rows.append(make_row("service: 10 concurrent pooled creates, all served", "s",
                         across(service, "concurrent_10_pooled_s"), budget=("<=", 0.5), missing=why_service))
    rows.append(make_row("service: GET /v1/sandboxes p99, 50 clients", "ms", across(service, "list_50_clients_ms.p99"),
                         budget=("<=", 50.0), missing=why_service))
    rows.append(make_row("service: CPU per GET /v1/sandboxes", "ms", across(service, "list_service_cpu_ms"),
                         missing=why_service))
    rows.append(make_row("service idle CPU", "% core", across(service, "idle_cpu_percent"), budget=("<", 1.0),
                         missing=why_service))
    rows.append(make_row("service idle RSS", "MB", across(service, "idle_rss_mb"), budget=("<=", 80.0),
                         missing=why_service))

    image_mb = across(images, "image_size_mb")
    over = across(images, "image_size_over_base_mb")
    base = statistics.median(image_mb) - statistics.median(over) if image_mb and over else None
    rows.append(make_row("runtime image size", "MB", image_mb, floor=base, floor_note="its base image",
                         missing=why["images"]))
    return rows


def stress_rows(stress: list[dict[str, Any]], why: str) -> list[Row]:
    """The rows of ``make stress``: errors and leftovers (budget 0), latency under load, start time."""
    first = stress[0] if stress else {}
    what = f"{dig(first, 'sandboxes')} sandboxes x {dig(first, 'commands_per_sandbox')} commands" if stress else ""
    return [
        make_row(f"stress {what}: errors", "", across(stress, "errors"), budget=("<=", 0.0), missing=why),
        make_row("stress: command round trip, p50", "ms", across(stress, "command_ms.p50"), missing=why),
        make_row("stress: command round trip, p99", "ms", across(stress, "command_ms.p99"), missing=why),
        make_row("stress: all sandboxes started", "s", across(stress, "start_all_s"), missing=why),
        make_row("stress: all commands done", "s", across(stress, "commands_all_s"), missing=why),
        make_row("stress: leftovers after removal", "", across(stress, "leftovers"), budget=("<=", 0.0),
                 missing=why),
    ]


# ------------------------------------------------------------------------------------------- output


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    digits = 3 if abs(value) < 10 else 1 if abs(value) < 1000 else 0
    text = f"{value:.{digits}f}"
    return f"{text} {unit}".strip()


def print_table(rows: list[Row], title: str) -> None:
    """The one table ``make bench`` prints."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("figure")
    table.add_column("median", justify="right")
    table.add_column("spread", justify="right")
    table.add_column("floor (this run)", justify="right")
    table.add_column("x floor", justify="right")
    table.add_column("budget", justify="right")
    table.add_column("", justify="center")
    styles = {"pass": "green", "FAIL": "bold red", "missing": "yellow"}
    for row in rows:
        if row.value is None:
            spread_text = row.note
        elif row.low == row.high:
            spread_text = f"single value ({row.spread_kind.split(', ')[-1]})"
        else:
            spread_text = f"{_fmt(row.low)}-{_fmt(row.high)} ({row.spread_kind})"
        floor_text = f"{_fmt(row.floor, row.unit)} {row.floor_note}" if row.floor is not None else "—"
        verdict = f"[{styles[row.verdict]}]{row.verdict}[/]" if row.verdict in styles else row.verdict
        figure = row.figure + (f" [dim]({row.note})[/]" if row.note and row.value is not None else "")
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "—"
        table.add_row(figure, _fmt(row.value, row.unit), spread_text, floor_text, ratio, row.budget, verdict)
    # Wide enough for the table even when piped, so a CI log shows it whole.
    Console(width=max(170, Console().width), highlight=False).print(table)


# A cold start in the order things happen: (key in the sandbox bench's breakdown, what it is).
COLD_START_PHASES = (
    ("create_container", "engine: create the container"),
    ("put_archive", "engine: copy the session key in"),
    ("hand_over", "session key written into its mounted directory"),
    ("disconnect_container_from_network", "engine: detach from its network until started"),
    ("start", "engine: start call"),
    ("connect_container_to_network", "engine: join its networks (while the server boots)"),
    ("server_to_entrypoint", "container started -> entrypoint forked"),
    ("server_entrypoint", "entrypoint + setpriv + interpreter start"),
    ("server_imports", "server imports"),
    ("server_app", "app built, uvicorn imported"),
    ("server_lifespan", "lifespan (pools, default shell) -> ready"),
    ("server_boot", "= container started -> ready line (log time)"),
    ("start_to_ready", "Sandbox.start() in all"),
    ("first_command", "first command (echo hi)"),
)


def phase_rows(sandbox: list[dict[str, Any]]) -> list[tuple[str, float, float, float]]:
    """(phase, median ms, min ms, max ms) of a cold start, over the sandbox bench's runs."""
    out = []
    for key, label in COLD_START_PHASES:
        values = across(sandbox, f"breakdown_p50_s.{key}", scale=1000)
        if values:
            out.append((label, statistics.median(values), min(values), max(values)))
    return out


def print_phases(phases: list[tuple[str, float, float, float]]) -> None:
    """The per-phase table of a cold start (medians of each run's p50)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="cold start, phase by phase (p50 of the sequential starts)", title_justify="left")
    table.add_column("phase")
    table.add_column("ms", justify="right")
    table.add_column("spread over runs", justify="right")
    for label, value, low, high in phases:
        table.add_row(label, f"{value:.1f}", f"{low:.1f}-{high:.1f}")
    Console(width=max(170, Console().width), highlight=False).print(table)


def main(argv: list[str] | None = None) -> int:
    """Run the benches, print the table, write the JSON; exit 1 if a budgeted figure fails or is missing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="where to write the results (default: bench/results/<UTC>.json)")
    parser.add_argument("--quick", action="store_true", help="run each component once")
    parser.add_argument("--only", action="append", choices=[c.name for c in (*COMPONENTS, STRESS)],
                        help="run only this component (repeatable)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kwargs", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child, json.loads(args.kwargs), args.out)
        return 0

    def progress(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    started = time.monotonic()
    deadline = started + TOTAL_BUDGET_S
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    progress("floors: 10 MB local pipe, memory copy ...")
    floors: dict[str, Any] = {
        "pipe_10mb_s": floor_pipe_10mb(),
        "memcpy_MBps": floor_memcpy_mbps(),
    }
    results: dict[str, ComponentResult] = {}
    components = (STRESS,) if args.only == ["stress"] else COMPONENTS
    for component in components:
        if args.only and component.name not in args.only:
            results[component.name] = ComponentResult(error="not run (--only)")
            continue
        if args.quick:
            component = Component(component.name, component.filename, component.kwargs, 1, component.timeout_s)
        results[component.name] = run_component(component, deadline, progress)
        if results[component.name].error:
            progress(f"{component.name} bench: {results[component.name].error}")

    rows = build_rows(results, floors)
    total = time.monotonic() - started
    print_table(rows, f"agentbox bench {stamp} — {os.cpu_count()} cores, {platform.python_version()}, "
                      f"{total:.0f} s")
    phases = phase_rows(results["sandbox"].runs) if "sandbox" in results else []
    if phases:
        print_phases(phases)
    for name, result in results.items():
        if result.error:
            # With earlier runs to show, a failed repeat only narrows the spread; without, rows are missing.
            print(f"{'incomplete' if result.runs else 'missing'}: {name} bench: {result.error}")
    path = args.json or RESULTS_DIR / f"{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "timestamp": stamp,
        "seconds": round(total, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "floors": floors,
        "components": {name: asdict(result) for name, result in results.items()},
        "rows": [asdict(row) for row in rows],
        "cold_start_phases_ms": {label: value for label, value, _low, _high in phases},
    }, indent=2) + "\n")
    print(f"results: {path}")
    failed = [row.figure for row in rows if row.verdict in ("FAIL", "missing") and row.budget != "—"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
