"""make bench's budgets (bench/run.py): absolute bounds, ratios to a floor measured in the same run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "run.py"
    spec = importlib.util.spec_from_file_location("agentbox_bench_run", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_ratio_budget_passes_within_and_fails_beyond(bench: ModuleType) -> None:
    within = bench.make_row("teardown", "s", [0.11, 0.12, 0.13], ratio=1.2, floor=0.1)
    beyond = bench.make_row("teardown", "s", [0.13, 0.14, 0.15], ratio=1.2, floor=0.1)
    assert (within.verdict, round(within.ratio, 2)) == ("pass", 1.2)
    assert (beyond.verdict, round(beyond.ratio, 2)) == ("FAIL", 1.4)
    assert within.budget == "<= 1.2x floor"


def test_ratio_budget_without_its_floor_is_missing(bench: ModuleType) -> None:
    row = bench.make_row("teardown", "s", [0.1], ratio=1.2, floor=None)
    assert row.verdict == "missing" and row.ratio is None and "floor" in row.note


def test_both_budgets_must_hold(bench: ModuleType) -> None:
    # Within 1.5x of a slow floor, but over the absolute second: still a failure.
    row = bench.make_row("create", "s", [1.2], budget=("<=", 1.0), ratio=1.5, floor=1.0)
    assert row.verdict == "FAIL" and row.budget == "<= 1 s, <= 1.5x floor"
    assert bench.make_row("create", "s", [0.6], budget=("<=", 1.0), ratio=1.5, floor=0.5).verdict == "pass"


def test_rows_get_their_floors_from_the_same_run(bench: ModuleType) -> None:
    sandbox = {
        "create_to_first_output_s": {"samples": [0.4, 0.4]},  # 1.33x its floor
        "docker_run_floor_s": {"samples": [0.3, 0.3]},
        "teardown_s": {"samples": [0.5]},
        "docker_rm_floor_s": {"samples": [0.1]},  # teardown at 5x its floor: over 1.2x
        "breakdown_p50_s": {"server_imports": 0.2, "start": 0.05},
    }
    results = {name: bench.ComponentResult(error="not run") for name in ("server", "images", "netpolicy", "swarm")}
    results["sandbox"] = bench.ComponentResult(runs=[sandbox])
    rows = bench.build_rows(results, {})
    teardown = next(r for r in rows if r.figure.startswith("teardown"))
    start = next(r for r in rows if r.figure == "create → first output, p50")
    assert teardown.verdict == "FAIL" and start.verdict == "pass"
    phases = dict((label, value) for label, value, _lo, _hi in bench.phase_rows([sandbox]))
    assert phases == {"engine: start call": 50.0, "server imports": 200.0}


def test_gvisor_console_and_openhands_rows_sit_beside_their_floors(bench: ModuleType) -> None:
    results = {name: bench.ComponentResult(error="not run") for name in ("server", "images", "sandbox")}
    results["gvisor"] = bench.ComponentResult(runs=[{
        "runc": {"create_to_first_output_s": {"p50": 0.8}, "echo_s": {"p50": 0.002}, "sudo_s": {"p50": 0.02}},
        "runsc": {"create_to_first_output_s": {"p50": 1.6}, "echo_s": {"p50": 0.004}, "sudo_s": {"p50": 0.3}},
    }])
    results["console"] = bench.ComponentResult(runs=[{"page_to_prompt_ms": {"p50": 250.0}}])
    results["openhands"] = bench.ComponentResult(runs=[{
        "connect_to_first_echo_s": 12.0, "echo_round_trip": {"p50_ms": 600.0},
        "pooled": {"connect_to_first_echo_s": 1.0},
        "openhands_docker": {"error": "no socket"},
    }])
    rows = {r.figure: r for r in bench.build_rows(results, {})}
    echo = rows["gVisor: echo hi round trip, p50"]
    assert (echo.value, echo.floor, round(echo.ratio, 1)) == (4.0, 2.0, 2.0)
    assert rows["console: page open → terminal prompt, p50"].value == 250.0
    pooled = rows["OpenHands: connect() → first echo, from a pool"]
    assert pooled.value == 1.0 and pooled.floor is None and "no socket" in pooled.floor_note
