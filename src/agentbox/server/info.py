"""Health and resource information: server uptime and idleness, server and sandbox CPU/memory.

Sandbox-wide numbers come from the cgroup v2 files of the container (cheap reads); where they are not
readable (no cgroup v2, a host process in tests) the fields are None rather than guesses.
"""

from __future__ import annotations

import os
import resource
import time

from agentbox.protocol import SandboxUsage, ServerUsage

__all__ = ["ActivityClock", "sandbox_usage", "server_usage"]

_CGROUP = "/sys/fs/cgroup"


class ActivityClock:
    """Server start time and the time of the last authenticated request."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last_activity = self.started

    def touch(self) -> None:
        """Record activity now."""
        self.last_activity = time.monotonic()

    @property
    def uptime_s(self) -> float:
        """Seconds since start."""
        return time.monotonic() - self.started

    @property
    def idle_s(self) -> float:
        """Seconds since the last activity."""
        return time.monotonic() - self.last_activity


def server_usage() -> ServerUsage:
    """CPU seconds and resident memory of this process."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    rss = None
    try:
        with open("/proc/self/statm", "rb") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    return ServerUsage(cpu_seconds=round(ru.ru_utime + ru.ru_stime, 3), rss_bytes=rss)


def _read(name: str) -> str | None:
    try:
        with open(os.path.join(_CGROUP, name)) as f:
            return f.read().strip()
    except OSError:
        return None


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def sandbox_usage() -> SandboxUsage:
    """CPU, memory and pids of the sandbox's cgroup (v2), when readable."""
    cpu = None
    stat = _read("cpu.stat")
    if stat:
        for line in stat.splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec" and value.isdigit():
                cpu = int(value) / 1e6
    return SandboxUsage(
        cpu_seconds=cpu,
        memory_bytes=_int(_read("memory.current")),
        memory_limit_bytes=_int(_read("memory.max")),  # "max" (unlimited) is not digits -> None
        pids=_int(_read("pids.current")),
    )
