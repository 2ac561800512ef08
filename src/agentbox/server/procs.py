"""Process plumbing shared by the capabilities: spawning sandbox processes, reaping them, killing sessions.

Every process the server starts for the sandbox runs in its own session (``setsid``), so one ``/proc``
scan by session id finds everything it ever forked, and it has ``oom_score_adj`` raised to 1000 so the
kernel's OOM killer picks sandbox work before the server. Exit of the server's direct children is noticed
through a pidfd on the event loop (no polling); orphans further down are reaped by the container's init.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import subprocess
import termios
from collections.abc import Callable, Mapping, Sequence

__all__ = ["ChildReaper", "kill_session", "session_pids", "spawn"]


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


def _child_setup_tty() -> None:
    _raise_oom_score()
    # start_new_session already called setsid(); make the PTY on stdin this session's controlling
    # terminal so bash gets job control (its own process group per job, Ctrl-C to the foreground job).
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


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
    """Start ``argv`` as a new session leader with a raised OOM score (and the PTY on stdin as ctty)."""
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        close_fds=True,
        preexec_fn=_child_setup_tty if controlling_tty else _raise_oom_score,
    )


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is ``sid``, found by scanning /proc."""
    found = []
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
        if len(fields) > 3 and fields[0] != b"Z" and int(fields[3]) == sid:
            found.append(int(name))
    return found


def kill_session(sid: int, *, rounds: int = 50) -> int:
    """SIGKILL every process of session ``sid``, rescanning until none is left; returns how many died.

    Rescanning matters for fork bombs: children forked between a scan and the kill show up next round.
    """
    killed = 0
    for _ in range(rounds):
        pids = session_pids(sid)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed


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
