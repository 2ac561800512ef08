"""Stress: many sandboxes, many commands at once; errors, latency and leftovers (``make stress``).

Run ``python bench/bench_stress.py [--sandboxes 20] [--commands 100] [--json OUT]``; ``make stress`` calls
:func:`run` through ``bench/run.py --only stress``. It starts ``sandboxes`` sandboxes concurrently, then
every sandbox runs ``commands`` short commands (each one checks its own output, so a wrong answer counts
as an error, not only an exception), all sandboxes at once. Reports errors (goal 0), command latency
p50/p99 under that load, how long the starts took, and what was left on the engine afterwards (containers
carrying this run's label: goal 0).

Everything it creates is labelled ``agentbox.test=1`` plus a per-run label, and removed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agentbox.sandbox import Sandbox


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))]


def run(sandboxes: int = 20, commands: int = 100) -> dict[str, Any]:
    """Start ``sandboxes`` at once, run ``commands`` in each (all at once), remove them; the figures."""
    run_label = {"agentbox.test": "1", "agentbox.stress": uuid.uuid4().hex[:12]}
    errors: list[str] = []
    latencies: list[float] = []
    handles: list[Sandbox] = []

    def start(_: int) -> Sandbox:
        return Sandbox(labels=run_label, start_timeout=180).start()

    def drive(sb: Sandbox) -> tuple[list[float], list[str]]:
        mine: list[float] = []
        failed: list[str] = []
        for i in range(commands):
            t = time.perf_counter()
            try:
                result = sb.run(f"echo {i}-$((6*7))", timeout=60)
            except Exception as exc:  # every failure is a figure here, not a crash
                failed.append(f"{sb.id} command {i}: {type(exc).__name__}: {exc}")
                continue
            mine.append((time.perf_counter() - t) * 1000)
            if result.exit_code != 0 or result.output.strip() != f"{i}-42":
                failed.append(f"{sb.id} command {i}: exit {result.exit_code}, output {result.output[:80]!r}")
        return mine, failed

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=sandboxes) as pool:
        futures = [pool.submit(start, i) for i in range(sandboxes)]
        for future in futures:
            try:
                handles.append(future.result())
            except Exception as exc:
                errors.append(f"start: {type(exc).__name__}: {exc}")
    start_s = time.perf_counter() - started
    try:
        t = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, len(handles))) as pool:
            for mine, failed in pool.map(drive, handles):
                latencies += mine
                errors += failed
        commands_s = time.perf_counter() - t
    finally:
        for sb in handles:
            try:
                sb.close()
            except Exception as exc:
                errors.append(f"remove {sb.id}: {type(exc).__name__}: {exc}")
    backend = Sandbox(labels=run_label).backend
    left = [info.id for info in backend.list() if info.labels.get("agentbox.stress") == run_label["agentbox.stress"]]
    return {
        "sandboxes": sandboxes,
        "commands_per_sandbox": commands,
        "started": len(handles),
        "errors": len(errors),
        "error_samples": errors[:10],
        "start_all_s": start_s,
        "commands_all_s": commands_s if handles else None,
        "command_ms": {
            "p50": statistics.median(latencies) if latencies else None,
            "p99": _pct(latencies, 99) if latencies else None,
            "count": len(latencies),
        },
        "leftovers": len(left),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandboxes", type=int, default=20)
    parser.add_argument("--commands", type=int, default=100)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    result = run(args.sandboxes, args.commands)
    text = json.dumps(result, indent=2)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)
    return 0 if result["errors"] == 0 and result["leftovers"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
