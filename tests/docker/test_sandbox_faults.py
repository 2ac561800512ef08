"""Faults on real sandboxes (issue 11): huge output, a stalled stream, a fork bomb, OOM.

The runtime keeps working, its memory stays bounded, and it says what happened. Process counts come from
the engine (``docker top``), which needs no process inside the sandbox.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from agentbox.protocol import OutputChunk, StreamEnd

pytestmark = pytest.mark.docker

_MB = 1024 * 1024


def _processes(sb: Any, docker_client: Any) -> list[str]:
    """Command lines of every process in the sandbox, from the engine."""
    top = docker_client.api.top(sb.container_id, ps_args="-eo pid,args")
    return [p[-1] for p in top["Processes"]]


def _until(predicate: Callable[[], bool], what: str, limit_s: float = 120) -> None:
    """Wait, bounded, for ``predicate``; fail saying ``what`` did not happen."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {limit_s:.0f}s")
        time.sleep(0.2)


def _server_rss(sb: Any) -> int:
    rss = sb.client.info().server.rss_bytes
    assert rss is not None
    return int(rss)


def test_one_gib_of_output_in_bounded_memory(sandboxes: Callable[..., Any]) -> None:
    sb = sandboxes()
    before = _server_rss(sb)
    result = sb.run("head -c 1073741824 /dev/zero | tr '\\0' x", timeout=900)
    assert result.exit_code == 0 and result.truncated and result.output_chars == 1 << 30
    grown = _server_rss(sb) - before
    assert grown < 100 * _MB, f"the server grew by {grown / _MB:.0f} MB for 1 GiB of output"
    assert sb.run("echo still here").output == "still here\n"


def test_a_stalled_stream_consumer_costs_the_server_nothing(sandboxes: Callable[..., Any]) -> None:
    sb = sandboxes()
    before = _server_rss(sb)
    total = 300 * _MB
    events = sb.stream(f"head -c {total} /dev/zero | tr '\\0' s")
    first = next(events)  # the stream began; read nothing more until the command is over
    _until(lambda: not sb.client.list_sessions()[0].busy, "the command's end")
    stalled = _server_rss(sb) - before
    received = len(first.text) if isinstance(first, OutputChunk) else 0
    end = None
    for event in events:
        if isinstance(event, OutputChunk):
            received += len(event.text)
        else:
            end = event
    assert isinstance(end, StreamEnd) and end.result.exit_code == 0
    assert received == total  # nothing lost while stalled
    assert stalled < 64 * _MB, f"the server grew by {stalled / _MB:.0f} MB while its consumer stalled"
    assert sb.run("echo after").output == "after\n"


def test_a_timed_out_fork_bomb_leaves_nothing(sandboxes: Callable[..., Any], docker_client: Any) -> None:
    sb = sandboxes(pids_limit=128)
    # The bomb returns at once (its forks run as background jobs); the sleep keeps the command running
    # while they fill the pids limit, so the timeout ends it.
    result = sb.run(":(){ :|:& };:; sleep 600", timeout=5)
    assert result.timed_out and not result.still_running
    # Everything the bomb forked was killed with the timeout: only the session's bash is left of it
    # (the bomb's processes are forks of bash, with its command line).
    bashes = [args for args in _processes(sb, docker_client) if "--rcfile" in args]
    assert len(bashes) == 1, bashes
    after = sb.run("/bin/echo forked", timeout=30)  # a real fork: pids are free again
    # bash may report the bomb's background job as done after it ("[1]+ Done ..."): look for the line.
    assert after.exit_code == 0 and "forked" in after.output.splitlines(), after.output


def test_a_bare_fork_bomb_that_returns_at_once_is_ended(sandboxes: Callable[..., Any], docker_client: Any) -> None:
    sb = sandboxes(pids_limit=128)
    sb.run("sleep 600 &")  # a background job started on purpose: it must survive the bomb's end
    result = sb.run(":(){ :|:& };:", timeout=30)
    assert result.exit_code == 0 and not result.timed_out  # the shell is back at once; the bomb lives on
    # The session watches the jobs a command left: the bomb's job outgrows half the pids limit and is
    # killed with everything it forked, with no call from the client.
    # (the bomb's processes are forks of the session's bash, with its command line)
    _until(lambda: sum("--rcfile" in args for args in _processes(sb, docker_client)) == 1, "the bomb's end")
    for i in range(3):
        sb.write_file(f"/tmp/after-{i}.txt", "written after the bomb")
        assert sb.read_file(f"/tmp/after-{i}.txt").content == "written after the bomb"
    after = sb.run("/bin/echo forked; jobs -r", timeout=30)  # a real fork: pids are free again
    assert after.exit_code == 0 and "forked" in after.output.splitlines(), after.output
    assert "sleep 600" in after.output  # the deliberate job is still running
    assert [args for args in _processes(sb, docker_client) if args == "sleep 600"]


def test_the_server_answers_while_a_bomb_fills_the_pids_limit(
    sandboxes: Callable[..., Any], docker_client: Any
) -> None:
    sb = sandboxes(pids_limit=128)
    bomb = sb.client.start_background(":(){ :|:& };:; sleep 600")
    # The server's own threads count against the limit too (~10), so ~110 processes is a full limit.
    _until(lambda: len(_processes(sb, docker_client)) >= 100, "pids exhaustion")
    # File calls and info need no new process or thread: they work with no pid to spare.
    for i in range(10):
        sb.write_file(f"/tmp/during-{i}.txt", "written while the bomb runs")
        read = sb.read_file(f"/tmp/during-{i}.txt")
        assert getattr(read, "content", read) == "written while the bomb runs"
    assert sb.client.info().pid > 0
    sb.client.kill_background(bomb.id)
    bashes = [args for args in _processes(sb, docker_client) if "-c :(){" in args or "--rcfile" in args]
    assert len(bashes) == 1, bashes  # the session's bash; nothing of the bomb
    assert sb.run("/bin/echo forked", timeout=30).output.splitlines()[-1] == "forked"


def test_an_oom_killed_command_is_reported_and_the_server_survives(sandboxes: Callable[..., Any]) -> None:
    sb = sandboxes(memory="256m")
    result = sb.run("python3 -c \"x = b'x' * (1 << 30)\"", timeout=120)
    assert result.exit_code == 137 and "Killed" in result.output  # SIGKILL by the kernel's OOM killer
    assert sb.client.alive().status == "ok"
    assert sb.run("echo alive").output == "alive\n"
