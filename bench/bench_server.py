"""Benchmark of the runtime server as a real process: startup, command round trip vs its floor, bulk I/O.

Run ``python bench/bench_server.py [--json OUT]``; ``make bench`` calls :func:`run`. Measures:

* startup: exec of ``python -m agentbox.server`` until its ready line (several starts);
* ``echo hi`` round trip through the sync client (p50/p99), next to its floor measured in the same run:
  a bare keep-alive HTTP round trip to ``/alive`` and a bare bash builtin round trip on a PTY; and the same
  ``echo hi`` sent with http.client, which splits the round trip into the server's share and the SDK's;
* 10 MB of command output; 1 MB and 50 MB upload and download throughput.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pty
import select
import statistics
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path
from typing import Any

from agentbox.client import RuntimeClient
from agentbox.protocol import API_KEY_HEADER
from agentbox.server.local import start_local_server

ITERATIONS = 500
STARTS = 5


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
        "n": len(ordered),
    }


def _http_floor(url: str, n: int) -> list[float]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port))
    samples = []
    for i in range(n + 20):
        t = time.perf_counter()
        conn.request("GET", "/alive")
        conn.getresponse().read()
        if i >= 20:
            samples.append(time.perf_counter() - t)
    conn.close()
    return samples


def _bare_echo(url: str, key: str, n: int) -> list[float]:
    """The same ``echo hi`` as the SDK sends, through http.client as the HTTP floor is: the server's share of
    the round trip, without the SDK's client (httpx, models) on top."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port))
    headers = {API_KEY_HEADER: key, "Content-Type": "application/json"}
    body = json.dumps({"command": "echo hi"}).encode()
    samples = []
    for i in range(n + 20):
        t = time.perf_counter()
        conn.request("POST", "/sessions/default/run", body=body, headers=headers)
        response = conn.getresponse()
        answer = response.read()
        if i >= 20:
            samples.append(time.perf_counter() - t)
        assert response.status == 200 and json.loads(answer)["output"] == "hi\n", answer[:300]
    conn.close()
    return samples


def _pty_floor(n: int) -> list[float]:
    """A bash builtin on a PTY, completion seen from a prompt marker: the shell part of the floor."""
    master, slave = pty.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    env = {**os.environ, "PS1": "#>", "PS2": ""}
    proc = subprocess.Popen(
        ["bash", "--noprofile", "--norc", "--noediting", "-i"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)

    def until_prompt() -> None:
        buf = b""
        while not buf.endswith(b"#>"):
            select.select([master], [], [])
            buf += os.read(master, 65536)

    until_prompt()
    samples = []
    for i in range(n + 20):
        t = time.perf_counter()
        os.write(master, b"echo hi\n")
        until_prompt()
        if i >= 20:
            samples.append(time.perf_counter() - t)
    proc.kill()
    proc.wait()
    os.close(master)
    return samples


def run(json_path: str | None = None) -> dict[str, Any]:
    """Run every measurement, print a table, write JSON to ``json_path`` if given; return the results."""
    key = os.urandom(16).hex()
    results: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = os.path.join(tmp, "work")
        startups = []
        for _ in range(STARTS):
            t0 = time.perf_counter()
            started = start_local_server(work, key)
            startups.append(time.perf_counter() - t0)
            started.stop()
        results["startup_to_ready_ms"] = {
            "p50": round(statistics.median(startups) * 1000, 1),
            "min": round(min(startups) * 1000, 1),
            "max": round(max(startups) * 1000, 1),
        }
        server = start_local_server(work, key)
        url = server.url
        with open(f"/proc/{server.pid}/statm") as f:
            results["server_rss_start_mb"] = round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)
        try:
            with RuntimeClient(url, key) as client:
                for _ in range(50):
                    client.run("echo hi")
                samples = []
                for _ in range(ITERATIONS):
                    t = time.perf_counter()
                    res = client.run("echo hi")
                    samples.append(time.perf_counter() - t)
                    assert res.output == "hi\n"
                results["echo_roundtrip"] = _percentiles(samples)
                results["floor_http_alive"] = _percentiles(_http_floor(url, ITERATIONS))
                results["floor_pty_builtin"] = _percentiles(_pty_floor(ITERATIONS))
                results["echo_bare_http"] = _percentiles(_bare_echo(url, key, ITERATIONS))

                t = time.perf_counter()
                res = client.run("head -c 10000000 /dev/zero | tr '\\0' x")
                results["output_10mb_s"] = round(time.perf_counter() - t, 3)
                assert res.output_chars == 10_000_000

                for size_mb in (1, 50):
                    src = Path(tmp) / f"up-{size_mb}.bin"
                    src.write_bytes(os.urandom(size_mb << 20))
                    ups, downs = [], []
                    for _ in range(3):  # median of three: the first transfer also warms thread pools
                        t = time.perf_counter()
                        client.upload(src, f"bench/{src.name}")
                        ups.append(time.perf_counter() - t)
                        t = time.perf_counter()
                        client.download(f"bench/{src.name}", Path(tmp) / f"down-{size_mb}.bin")
                        downs.append(time.perf_counter() - t)
                    up, down = statistics.median(ups), statistics.median(downs)
                    results[f"upload_{size_mb}mb_MBps"] = round(size_mb / up, 1)
                    results[f"download_{size_mb}mb_MBps"] = round(size_mb / down, 1)
                results["server_rss_mb"] = round((client.info().server.rss_bytes or 0) / 1e6, 1)
        finally:
            server.stop()

    _print_table(results)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    return results


def _print_table(r: dict[str, Any]) -> None:
    rows = [
        ("startup exec -> ready line (p50)", f"{r['startup_to_ready_ms']['p50']} ms", "<= 300 ms"),
        ("echo hi round trip p50", f"{r['echo_roundtrip']['p50_ms']} ms", "<= 3 ms"),
        ("echo hi round trip p99", f"{r['echo_roundtrip']['p99_ms']} ms", "<= 15 ms"),
        ("echo hi, bare HTTP client (no SDK) p50", f"{r['echo_bare_http']['p50_ms']} ms", ""),
        ("floor: HTTP /alive p50", f"{r['floor_http_alive']['p50_ms']} ms", ""),
        ("floor: PTY builtin p50", f"{r['floor_pty_builtin']['p50_ms']} ms", ""),
        ("10 MB output", f"{r['output_10mb_s']} s", ""),
        ("upload 1 MB", f"{r['upload_1mb_MBps']} MB/s", ""),
        ("download 1 MB", f"{r['download_1mb_MBps']} MB/s", ""),
        ("upload 50 MB", f"{r['upload_50mb_MBps']} MB/s", ">= 200 MB/s"),
        ("download 50 MB", f"{r['download_50mb_MBps']} MB/s", ">= 200 MB/s"),
        ("server RSS at start", f"{r['server_rss_start_mb']} MB", "<= 40 MB"),
        ("server RSS after the bench", f"{r['server_rss_mb']} MB", ""),
    ]
    width = max(len(name) for name, _, _ in rows)
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>12}  {target}")


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    run(parser.parse_args().json)


if __name__ == "__main__":
    main()
