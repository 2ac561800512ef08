"""Benchmark of gVisor beside runc: create -> first output and the echo round trip, in the same run.

Run ``python bench/bench_gvisor.py [--starts N] [--echoes N] [--json OUT]``; ``make bench`` calls
:func:`run`. For each runtime (runc, and runsc when it is registered with the engine), against one
runtime image, it measures:

* create -> first output: ``Sandbox(runtime=...).start()`` then ``run("echo hi")``, over ``starts``
  sequential sandboxes (the first, warming caches, is not counted);
* the echo round trip: ``run("echo hi")`` ``echoes`` times in one started sandbox;
* ``sudo -n true`` in default mode (under runsc through agentbox's sudo broker, under runc the real
  sudo), so the broker's cost sits beside what it replaces.

Alternating runtimes per start keeps a machine-wide slowdown from landing on one of them. Without runsc
the result says so (``runsc: "not registered"``) rather than failing. Everything it creates is
labelled ``agentbox.test=1`` and removed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from agentbox.backends.docker import DockerBackend
from agentbox.config import SandboxConfig
from agentbox.sandbox import Sandbox

LABELS = {"agentbox.test": "1", "agentbox.bench": "1"}
RUNTIMES = ("runc", "runsc")


def _summary(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "p50": statistics.median(ordered),
        "p95": ordered[max(0, min(len(ordered) - 1, round(0.95 * (len(ordered) - 1))))],
        "min": ordered[0],
        "max": ordered[-1],
        "samples": values,
    }


def _start_once(image: str, runtime: str, backend: DockerBackend) -> float:
    sb = Sandbox(runtime_container_image=image, runtime=runtime, user_id=1000, labels=LABELS, backend=backend)
    try:
        t = time.perf_counter()
        sb.start()
        out = sb.run("echo hi").output
        elapsed = time.perf_counter() - t
        if out.strip() != "hi":
            raise RuntimeError(f"{runtime}: unexpected first output {out!r}")
        return elapsed
    finally:
        sb.remove()


def _round_trips(image: str, runtime: str, echoes: int, backend: DockerBackend) -> dict[str, Any]:
    sb = Sandbox(runtime_container_image=image, runtime=runtime, user_id=1000, labels=LABELS, backend=backend)
    try:
        sb.start()
        sb.run("echo warm")
        echo: list[float] = []
        for _ in range(echoes):
            t = time.perf_counter()
            sb.run("echo hi")
            echo.append(time.perf_counter() - t)
        sudo: list[float] = []
        for _ in range(max(3, echoes // 10)):
            t = time.perf_counter()
            r = sb.run("sudo -n true")
            sudo.append(time.perf_counter() - t)
            if r.exit_code != 0:
                raise RuntimeError(f"{runtime}: sudo -n true failed: {r.output[-300:]}")
        return {"echo_s": _summary(echo), "sudo_s": _summary(sudo)}
    finally:
        sb.remove()


def run(json_path: str | None = None, starts: int = 5, echoes: int = 50) -> dict[str, Any]:
    """Run every measurement; returns (and with ``json_path`` writes) the results as a dict."""
    backend = DockerBackend()
    try:
        image = os.environ.get("AGENTBOX_TEST_IMAGE") or backend.resolve_image(SandboxConfig())
        registered = backend.api.info().get("Runtimes") or {}
        runtimes = [r for r in RUNTIMES if r == "runc" or r in registered]
        result: dict[str, Any] = {"image": image, "starts": starts, "echoes": echoes}
        if "runsc" not in runtimes:
            result["runsc"] = "not registered"
        firsts: dict[str, list[float]] = {r: [] for r in runtimes}
        for i in range(starts + 1):
            for runtime in runtimes:
                elapsed = _start_once(image, runtime, backend)
                if i:  # the first start of each runtime pays for cold caches
                    firsts[runtime].append(elapsed)
        for runtime in runtimes:
            result[runtime] = {"create_to_first_output_s": _summary(firsts[runtime])}
            result[runtime].update(_round_trips(image, runtime, echoes, backend))
    finally:
        backend.close()
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: run and print the results as JSON (without the raw samples)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=5, help="sequential starts per runtime (default 5)")
    parser.add_argument("--echoes", type=int, default=50, help="echo round trips per runtime (default 50)")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    result = run(args.json, starts=args.starts, echoes=args.echoes)
    for entry in result.values():
        if isinstance(entry, dict):
            for sub in entry.values():
                if isinstance(sub, dict):
                    sub.pop("samples", None)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
