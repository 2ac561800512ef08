"""The server's phases line: where its start went, printed on stderr just before the ready line."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from agentbox.server.__main__ import PHASES_PREFIX, phases_line, process_start


def _parse(line: str) -> dict[str, float]:
    assert line.startswith(PHASES_PREFIX), line
    return {k: float(v) for k, v in (part.split("=") for part in line[len(PHASES_PREFIX) :].split())}


def test_phases_line_counts_milliseconds_from_the_start() -> None:
    line = phases_line(100.0, {"main": 100.05, "imports": 100.25, "ready": 100.5})
    assert _parse(line) == {"start": 100.0, "main": 50.0, "imports": 250.0, "ready": 500.0}


def test_phases_line_without_a_process_start_counts_from_main() -> None:
    assert _parse(phases_line(None, {"main": 7.0, "ready": 7.125})) == {"start": 7.0, "main": 0.0, "ready": 125.0}


def test_process_start_is_this_process_start() -> None:
    started = process_start()
    assert started is not None
    # A tick is 10 ms: the start is in the past, and after the moment this test process was forked.
    assert started <= time.time()
    child = subprocess.run(
        [sys.executable, "-c", "import time; from agentbox.server.__main__ import process_start as p; "
         "print(time.time() - p())"],
        capture_output=True, text=True, check=True,
    )
    assert 0.0 <= float(child.stdout) < 60.0


def test_server_prints_its_phases_before_the_ready_line(tmp_path: Path) -> None:
    before = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentbox.server", "--port", "0", "--work-dir", str(tmp_path), "--api-key-stdin"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write("k\n")
        proc.stdin.close()
        ready = proc.stdout.readline()
        phases = _parse(proc.stderr.readline().strip())
        after = time.time()
    finally:
        proc.terminate()
        proc.wait(10)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert ready.startswith("agentbox-server ready on http://127.0.0.1:")
    assert list(phases) == ["start", "main", "imports", "app", "ready"]
    # The process started after this test began (10 ms tick) and every phase follows the one before.
    assert before - 0.02 <= phases["start"] <= after
    offsets = [phases[k] for k in ("main", "imports", "app", "ready")]
    assert offsets == sorted(offsets) and offsets[0] >= 0
    # start is printed to the millisecond and the offsets from the unrounded start: their sum may pass the
    # real ready instant by up to 0.55 ms.
    assert phases["start"] + offsets[-1] / 1000 <= after + 0.001
