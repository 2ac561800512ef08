"""Issue 11 item 6: the server's memory is bounded whatever the client does (measured on a real process)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_process import API_KEY, ServerProcess, start_server, stop_server

_MB = 1024 * 1024


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of its own: its RSS measures this test alone."""
    srv = start_server(tmp_path)
    try:
        yield srv
    finally:
        stop_server(srv)


def _wait_idle(http: httpx.Client, session: str = "default") -> None:
    """Wait (bounded) until the session's command has ended: the whole output was produced."""
    for _ in range(3000):
        sessions = {s["name"]: s for s in http.get("/sessions").json()["sessions"]}
        if not sessions[session]["busy"]:
            return
        time.sleep(0.05)
    raise AssertionError("the command did not end")


def _stream_body(total: int) -> dict[str, str]:
    return {"command": f"head -c {total} /dev/zero | tr '\\0' x"}


def test_a_stalled_stream_consumer_does_not_grow_the_server(fresh_server: ServerProcess) -> None:
    """200 MB of output to a consumer that reads nothing until the command is over: RSS stays bounded."""
    total = 200 * _MB
    baseline = _rss(fresh_server.pid)
    headers = {"X-Session-API-Key": API_KEY}
    with (
        httpx.Client(base_url=fresh_server.url, headers=headers, timeout=300) as http,
        httpx.Client(base_url=fresh_server.url, headers=headers, timeout=300) as watcher,
        http.stream("POST", "/sessions/default/stream", json=_stream_body(total)) as resp,
    ):
        assert resp.status_code == 200
        lines = resp.iter_lines()
        next(lines)  # the stream began; now read nothing while the command produces everything
        _wait_idle(watcher)
        stalled = _rss(fresh_server.pid) - baseline
        received = 0
        end = None
        for line in lines:
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event["type"] == "output":
                    received += len(event["text"])
                else:
                    end = event["result"]
        assert end is not None and end["exit_code"] == 0
        # Nothing lost: the first event's text was not counted, so at least all but a little arrived.
        assert total - 2 * _MB <= received <= total
        assert stalled < 64 * _MB, f"the server grew by {stalled / _MB:.0f} MB while the consumer stalled"
        assert _rss(fresh_server.pid) - baseline < 96 * _MB


def test_a_huge_max_output_chars_does_not_hold_the_output(fresh_server: ServerProcess) -> None:
    headers = {"X-Session-API-Key": API_KEY}
    baseline = _rss(fresh_server.pid)
    with httpx.Client(base_url=fresh_server.url, headers=headers, timeout=300) as http:
        resp = http.post(
            "/sessions/default/run",
            json={"command": "head -c 100000000 /dev/zero | tr '\\0' y", "max_output_chars": 10**15},
        )
        result = resp.json()
        assert resp.status_code == 200 and result["exit_code"] == 0
        assert result["truncated"] and result["output_chars"] == 100_000_000
        assert len(result["output"]) < 10_000_000
        assert f"/commands/{result['command_id']}/output" in result["output"]  # where the rest is
        grown = _rss(fresh_server.pid) - baseline
        assert grown < 64 * _MB, f"the server grew by {grown / _MB:.0f} MB"
        # The full output stays retrievable, streamed from the spool.
        size = 0
        with http.stream("GET", f"/commands/{result['command_id']}/output") as full:
            for chunk in full.iter_bytes():
                size += len(chunk)
        assert size == 100_000_000
