"""Hardening on a real engine: pids limit vs fork bombs, hardened mode, default sudo, gVisor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agentbox.engine import docker_client

pytestmark = pytest.mark.docker


def test_a_fork_bomb_under_pids_limit_does_not_take_the_server_down(sandboxes: Callable[..., Any]) -> None:
    sb = sandboxes(pids_limit=128)
    # the limit is really in force (so the bomb hits it rather than the machine)
    limit = sb.run("cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max")
    assert limit.output.strip() == "128"
    # A classic bomb that stops forking by itself (bash's $EPOCHSECONDS needs no fork), so the test ends
    # whatever happens; its processes are recognisable by the script name.
    sb.write_file("/tmp/bomb.sh", "END=$((EPOCHSECONDS+6)); f(){ (( EPOCHSECONDS < END )) && { f | f & }; }; f\n")
    result = sb.run("bash /tmp/bomb.sh >/dev/null 2>&1; sleep 8", timeout=60)
    assert not result.timed_out, result.output  # the command came back by itself: the server kept answering
    assert sb.client.alive().status == "ok"
    assert sb.run("echo survived").output.strip().splitlines()[-1] == "survived"  # a builtin: no fork
    # once the bomb's stragglers are gone, forking works again
    sb.run("while pgrep -f /tmp/bomb.sh >/dev/null; do sleep 0.5; done", timeout=120)
    after = sb.run("/bin/echo forked")
    assert after.exit_code == 0 and after.output.strip() == "forked"


def test_hardened_mode_has_no_sudo_and_no_capabilities(sandboxes: Callable[..., Any]) -> None:
    sb = sandboxes(hardened=True, user_id=1234)
    caps = sb.run("grep -E '^Cap(Eff|Prm|Bnd|Amb)' /proc/self/status")
    values = dict(line.split(":\t") for line in caps.output.strip().splitlines())
    assert values["CapEff"].strip() == "0000000000000000", caps.output
    assert values["CapBnd"].strip() == "0000000000000000", caps.output
    assert sb.run("grep NoNewPrivs /proc/self/status").output.split()[-1] == "1"
    sudo = sb.run("sudo -n true")
    assert sudo.exit_code != 0
    server = sb.run("grep CapEff /proc/1/status; grep CapEff /proc/$PPID/status")
    assert "0000000000000000" in server.output


def test_default_mode_can_sudo_as_package_installs_need(sandboxes: Callable[..., Any]) -> None:
    # Offline on purpose: what `apt-get install` needs from sudo (root, chown, write to root's tree, dpkg's
    # lock), without the internet an `apt-get update` would need.
    sb = sandboxes(user_id=1234)
    assert sb.run("sudo -n id -u").output.strip() == "0"  # and no audit-message noise
    steps = (
        "sudo -n apt-get check -qq && sudo -n sh -c 'echo x > /etc/abx-test && chown 1234 /etc/abx-test' "
        "&& stat -c %u /etc/abx-test"
    )
    r = sb.run(steps, timeout=120)
    assert r.exit_code == 0, r.output[-2000:]
    assert r.output.split()[-1] == "1234"
    assert sb.run("touch /etc/abx-denied").exit_code != 0  # control: without sudo, root's tree is closed
    # trimmed capabilities: no raw sockets even as root
    raw = sb.run("sudo -n python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)'")
    assert raw.exit_code != 0 and "Operation not permitted" in raw.output


def test_runsc_runs_a_command(sandboxes: Callable[..., Any]) -> None:
    client = docker_client()
    try:
        if "runsc" not in (client.info().get("Runtimes") or {}):
            pytest.skip("runsc (gVisor) is not registered with dockerd: run `agentbox doctor --fix --runsc`")
    finally:
        client.close()
    sb = sandboxes(runtime="runsc")
    r = sb.run("uname -a; dmesg 2>/dev/null | head -1; echo ok")
    assert r.exit_code == 0 and r.output.strip().endswith("ok"), r.output
    assert "gVisor" in sb.run("dmesg 2>&1 | head -3 || true").output or "4.4.0" in r.output
