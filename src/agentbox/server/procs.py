"""Process plumbing shared by the capabilities: spawning sandbox processes, reaping them, killing their trees.

Every process the server starts for the sandbox (a session's bash, a background command) is the root of a
:class:`Lineage`: it runs in its own session (``setsid``) and carries a random marker in its environment,
``AGENTBOX_LINEAGE=<nonce>``, that everything it starts inherits. A lineage's members are found by one
``/proc`` scan, three ways, so that a process escaping one is still caught by another:

- by session id: what stayed in the root's session (job-control process groups included);
- by ancestry: every descendant of a member, whatever session or process group it moved to (``setsid``);
- by the marker: a member whose parent already died (a double-forked daemon, reparented to init).

Only a process that both left the session, lost its ancestry *and* scrubbed its environment escapes; a
cgroup per lineage would close that hole but is rarely writable inside a container (cgroup v1, or a
read-only v2 mount), so it is not relied on.

Each job of an interactive shell is its own process group, and what a job forks stays in it (subshells
have no job control), so a job a command left running can be watched, and killed, by its group alone.

Killing freezes first: every member found is sent SIGSTOP and the scan repeats until it finds no new one,
so a fork bomb cannot fork faster than it is killed (a stopped process cannot fork); then all get SIGKILL.
Processes get ``oom_score_adj`` 1000 so the kernel's OOM killer picks sandbox work before the server.
Exit of the server's direct children is noticed through a pidfd on the event loop (no polling); orphans
further down are reaped by the container's init.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import os
import secrets
import signal
import subprocess
import termios
import time
from collections.abc import Callable, Collection, Mapping, Sequence

from agentbox.errors import BadRequestError, ConflictError, NotFoundError

__all__ = ["LINEAGE_VAR", "ChildReaper", "Instant", "Lineage", "check_directory", "now", "pids_limit", "spawn"]

#: The environment variable that marks every process of one lineage.
LINEAGE_VAR = "AGENTBOX_LINEAGE"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
# Longest a kill waits for the killed to be gone (they die in milliseconds; this bounds a sick kernel).
_KILL_WAIT_S = 2.0


# Where the container's process limit is read: cgroup v2 (the container's own root), then v1.
_PIDS_MAX_FILES = ("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max")


def pids_limit() -> int | None:
    """The sandbox's process limit (its pids cgroup's ``pids.max``), or None when unlimited or unreadable."""
    for path in _PIDS_MAX_FILES:
        try:
            with open(path, "rb") as f:
                value = f.read().strip()
        except OSError:
            continue
        return int(value) if value.isdigit() else None
    return None


def _raise_oom_score() -> None:
    # Raising the score needs no privilege; failure (e.g. a read-only /proc) must not stop the child.
    try:
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
        try:
            os.write(fd, b"1000")
        finally:
            os.close(fd)
    except OSError:
        pass


def _child_setup() -> None:
    _raise_oom_score()
    # Signals ignored at exec stay ignored, and bash cannot trap or reset them: a server started with
    # SIGINT ignored (a background job of a non-interactive shell, nohup) would hand that on, and no
    # timeout or Ctrl-C could interrupt a command. The sandbox's processes start with the defaults.
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


def _child_setup_tty() -> None:
    _child_setup()
    # start_new_session already called setsid(); make the PTY on stdin this session's controlling
    # terminal so bash gets job control (its own process group per job, Ctrl-C to the foreground job).
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def check_directory(path: str, field: str) -> str:
    """``path`` if it is a directory the server's user can start a process in, else a 4xx naming ``field``."""
    if not os.path.lexists(path):
        raise NotFoundError(f"{field}: {path} does not exist")
    if not os.path.isdir(path):
        raise BadRequestError(f"{field}: {path} is not a directory")
    if not os.access(path, os.X_OK):
        raise BadRequestError(f"{field}: permission denied to enter {path} (the server runs as uid {os.getuid()})")
    return path


def spawn(
    argv: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    stdin: int,
    stdout: int,
    stderr: int,
    controlling_tty: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a new session leader with a raised OOM score (and the PTY on stdin as ctty).

    OS errors become agentbox errors: a bad ``cwd`` is a 400 naming it, no free process slot a 409.
    """
    try:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            close_fds=True,
            preexec_fn=_child_setup_tty if controlling_tty else _child_setup,
        )
    except BlockingIOError:  # EAGAIN from fork: the pids limit is reached
        raise ConflictError(
            "cannot start a process: the sandbox's process limit is reached (a runaway command? interrupt it "
            "or restart its session)"
        ) from None
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        if exc.filename == cwd or not os.path.isdir(cwd):
            check_directory(cwd, "cwd")
        raise BadRequestError(f"cannot start {argv[0]}: {exc.strerror}") from None
    except OSError as exc:
        if exc.errno in (errno.ENOMEM, errno.EAGAIN):
            raise ConflictError(f"cannot start a process: {exc.strerror} (the sandbox is out of resources)") from None
        raise


@dataclasses.dataclass(frozen=True)
class Instant:
    """A moment processes can be compared with: was a process started after it?

    ``/proc/PID/stat`` gives start times in clock ticks (10 ms): too coarse alone, as a job started by one
    command and the next command may share a tick. Within a tick, PIDs break the tie: they are handed
    out in increasing order (a wrap-around of the PID space within one tick is not a practical concern).
    """

    ticks: int
    last_pid: int

    def nothing_started_since(self) -> bool:
        """True when no process at all was started after this instant (no PID was handed out since).

        Exact, and one small read instead of a /proc scan: a command made of builtins (``cd``, ``echo``,
        an assignment) forks nothing, and it is the commonest kind.
        """
        return self.last_pid != 0 and now().last_pid == self.last_pid

    def precedes(self, start_ticks: int, pid: int) -> bool:
        """True if a process with this start time and pid was started after this instant."""
        return start_ticks > self.ticks or (start_ticks == self.ticks and pid > self.last_pid)


def now() -> Instant:
    """The current :class:`Instant`."""
    try:
        with open("/proc/loadavg", "rb") as f:
            last_pid = int(f.read().split()[4])  # the most recently allocated PID (of this PID namespace)
    except (OSError, ValueError, IndexError):
        last_pid = 0
    return Instant(int(time.clock_gettime(time.CLOCK_BOOTTIME) * _CLK_TCK), last_pid)


@dataclasses.dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    pgrp: int
    sid: int
    start: int


def _scan() -> list[_Proc]:
    """Every live (not zombie) process visible in /proc."""
    procs = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited while we looked
        # The command name may contain spaces and parentheses: fields start after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 19 and fields[0] not in (b"Z", b"X"):
            procs.append(_Proc(int(name), int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19])))
    return procs


def _environ_has(pid: int, entry: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return entry in f.read().split(b"\0")
    except OSError:  # gone, or another user's
        return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


def _wait_dead(pids: set[int], limit_s: float) -> None:
    # SIGKILL is delivered asynchronously: a killed process runs on for a moment (longer on a busy
    # machine). Callers promise "nothing left" when they return, so wait (briefly, bounded) until it is so.
    deadline = time.monotonic() + limit_s
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        pending = {pid for pid in pending if _alive(pid)}
        if pending:
            time.sleep(0.001)


class Lineage:
    """Everything one spawned process (the root) started, found by session id, ancestry and env marker."""

    def __init__(self) -> None:
        self.marker = secrets.token_hex(8)
        self.root: int | None = None
        self._entry = f"{LINEAGE_VAR}={self.marker}".encode()

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` plus this lineage's marker, for the root's spawn."""
        return {**env, LINEAGE_VAR: self.marker}

    def members(self, since: Instant | None = None, groups: Collection[int] | None = None) -> set[int]:
        """Live processes of this lineage (the root included), or only those started after ``since``, or
        only those in the process groups ``groups``."""
        return set(self._members(since, groups))

    def group_sizes(self, groups: Collection[int]) -> dict[int, int]:
        """How many live members each of ``groups`` has (groups with none are left out)."""
        sizes: dict[int, int] = {}
        for p in self._members(None, groups).values():
            sizes[p.pgrp] = sizes.get(p.pgrp, 0) + 1
        return sizes

    def groups(self, since: Instant) -> set[int]:
        """Process groups (jobs) of the members started after ``since``, the root's own group excluded."""
        if since.nothing_started_since():
            return set()
        return {p.pgrp for p in self._members(since, None).values() if p.pgrp != self.root}

    def _members(self, since: Instant | None, groups: Collection[int] | None = None) -> dict[int, _Proc]:
        if self.root is None:
            return {}
        procs = _scan()
        me = os.getpid()
        children: dict[int, list[_Proc]] = {}
        for p in procs:
            children.setdefault(p.ppid, []).append(p)
        found: dict[int, _Proc] = {}
        todo = [p for p in procs if p.sid == self.root or p.pid == self.root]
        todo += [p for p in procs if p.sid != self.root and _environ_has(p.pid, self._entry)]
        while todo:
            p = todo.pop()
            if p.pid in found or p.pid == me:
                continue
            found[p.pid] = p
            todo.extend(children.get(p.pid, ()))
        if since is not None:
            found = {pid: p for pid, p in found.items() if since.precedes(p.start, pid) and pid != self.root}
        if groups is not None:
            found = {pid: p for pid, p in found.items() if p.pgrp in groups and pid != self.root}
        return found

    def kill(self, since: Instant | None = None, *, groups: Collection[int] | None = None, rounds: int = 1000) -> int:
        """Freeze (SIGSTOP) every member, rescanning until no new one appears, then SIGKILL them all.

        ``since``: only members started after it, the root excepted (a timed-out command's processes, not
        the shell or what earlier commands left running); ``groups``: only members in these process groups
        (one runaway job, not the rest). Returns how many processes were killed.
        """
        frozen: set[int] = set()
        for _ in range(rounds):
            new = {pid: p for pid, p in self._members(since, groups).items() if pid not in frozen}
            if not new:
                break
            for pid, p in new.items():
                # The root's own children die at once: the root (bash) would report a stopped job as
                # "Stopped" (exit 147) instead of killed. A dead process forks no more, so nothing escapes.
                sig = signal.SIGKILL if p.ppid == self.root else signal.SIGSTOP
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            frozen |= set(new)
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        _wait_dead(frozen, _KILL_WAIT_S)
        return len(frozen)


class ChildReaper:
    """Reaps the server's direct children as they exit, and calls their exit callback on the loop.

    Each child gets a pidfd watched by the event loop (Linux 5.3+): readable exactly when the child exits,
    so nothing polls and no process-wide SIGCHLD handler is needed (uvloop would reserve SIGCHLD). Where
    pidfds are unavailable a thread blocks in ``waitpid`` for that one child instead. ``Popen.poll``
    reaps exactly that pid, so children started by other code (jupyter_client's kernel) are untouched.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pidfds: dict[int, int] = {}

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the event loop that runs the callbacks."""
        self._loop = loop

    def close(self) -> None:
        """Stop watching every child."""
        if self._loop is not None and not self._loop.is_closed():
            for fd in self._pidfds.values():
                self._loop.remove_reader(fd)
                os.close(fd)
        self._pidfds.clear()
        self._loop = None

    def watch(self, proc: subprocess.Popen[bytes], on_exit: Callable[[int], None]) -> None:
        """Call ``on_exit(returncode)`` on the loop once ``proc`` exits (it is reaped first)."""
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        try:
            fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            loop.run_in_executor(None, proc.wait).add_done_callback(lambda _f: on_exit(proc.returncode))
            return
        self._pidfds[proc.pid] = fd

        def exited() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            self._pidfds.pop(proc.pid, None)
            on_exit(proc.wait())

        loop.add_reader(fd, exited)
