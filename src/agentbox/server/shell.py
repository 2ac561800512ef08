"""Persistent bash sessions on a PTY, with completion read from the shell's own prompt.

How a command runs: its text is written to a private file and the session's bash is told, on its PTY,
``__agentbox_seq=N; . FILE``. Sourcing keeps everything in the one shell (cwd, exports, aliases,
functions, an activated venv persist), parses multi-line scripts and heredocs as a whole, and turns a
syntax error into an exit status instead of a shell waiting for more input. When bash is back at its
prompt, ``PROMPT_COMMAND`` rebuilds ``PS1`` as a sentinel::

    \\x1e\\x1e<nonce>: <seq> ; <exit code> ; <cwd> :<nonce>\\x1f\\x1f

The nonce is random per shell and only ever appears in ``PS1`` as octal escapes, so neither user output
nor ``echo $PS1`` can produce it; the sequence number makes a stray prompt (Ctrl-C at an idle shell)
impossible to mistake for the end of the next command. The PTY master is read with ``add_reader`` only:
no polling, no sleeps. Each bash is a session leader with the PTY as controlling terminal, so job control
puts every foreground job in its own process group that can be signalled without touching bash.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import errno
import fcntl
import os
import pty
import re
import secrets
import shlex
import shutil
import signal
import struct
import subprocess
import tempfile
import termios
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any

from agentbox.errors import BadRequestError, ConflictError, NotFoundError, RuntimeServerError
from agentbox.protocol import (
    CommandResult,
    OutputChunk,
    ReadOutput,
    RunCommand,
    SendInput,
    SendKeys,
    SessionCreate,
    SessionInfo,
    StreamEnd,
)
from agentbox.server.procs import ChildReaper, Lineage, check_directory, now, pids_limit, spawn
from agentbox.server.settings import ServerSettings
from agentbox.server.spool import RawSpool, TruncatingText

__all__ = ["KEYS", "ShellCommand", "ShellManager", "ShellSession"]

#: Key names accepted by send_keys, and the bytes a terminal sends for them.
KEYS: dict[str, bytes] = {
    "Enter": b"\r",
    "Tab": b"\t",
    "Escape": b"\x1b",
    "Backspace": b"\x7f",
    "Up": b"\x1b[A",
    "Down": b"\x1b[B",
    "Right": b"\x1b[C",
    "Left": b"\x1b[D",
    **{f"C-{c}": bytes([ord(c) & 0x1F]) for c in "abcdefghijklmnopqrstuvwxyz@[\\]^_"},
}

# Environment every session gets: no pagers or prompts that would wait for a human.
_SESSION_ENV = {
    "TERM": "dumb",
    "PAGER": "cat",
    "GIT_PAGER": "cat",
    "MANPAGER": "cat",
    "SYSTEMD_PAGER": "",
    "VIRTUAL_ENV_DISABLE_PROMPT": "1",
    "PYTHONUNBUFFERED": "1",
}

_READY_TIMEOUT_S = 15.0
# How long a torn-down session waits to reap its killed bash (it is dead already: bounds a sick kernel).
_REAP_WAIT_S = 2.0
# Largest piece of output one stream event carries.
_STREAM_CHUNK = 256 * 1024
# How long a command waits for the prompt bash prints after a SIGINT (it comes in milliseconds).
_REPROMPT_WAIT_S = 2.0


# Jobs a command leaves running (`server &`) are its business, but a fork bomb is one too: it returns at
# once and fills the process limit from the background. So each job a command left is watched for a while
# (the first look at once, then ever rarer) and killed, with everything it forked, if it grows past a
# share of the sandbox's process limit: no deliberate background job forks half of it, a bomb does within
# a second. After the watch a job is trusted; a session restart or close still ends it.
_RUNAWAY_SHARE = 2  # a job with more than 1/2 of the process limit is a runaway
_RUNAWAY_UNLIMITED = 1024  # the same without a process limit (the host's own limits are then at stake)
_RUNAWAY_MIN = 16
_WATCH_FIRST_S = 0.05
_WATCH_EVERY_MAX_S = 2.0
_WATCH_S = 60.0


def _runaway_size() -> int:
    limit = pids_limit()
    return max(_RUNAWAY_MIN, limit // _RUNAWAY_SHARE) if limit else _RUNAWAY_UNLIMITED


def _overwrite(path: str, data: bytes) -> None:
    """Make ``data`` the content of ``path``: written over the old content, then cut to its length.

    Not truncated first: ext4 (auto_da_alloc) flushes a file truncated to zero and rewritten when it is
    closed, which made writing a one-line command cost 0.15-0.2 ms instead of microseconds, on every
    command. bash read the previous command whole before running it, so nobody reads the file meanwhile.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def _octal(data: bytes) -> str:
    return "".join(f"\\{b:03o}" for b in data)


class ShellCommand:
    """One command in a session: its output (bounded in memory, spooled in full) and its outcome."""

    def __init__(self, session: str, seq: int, text: str, spool_path: str, limit: int) -> None:
        self.id = secrets.token_hex(6)
        self.session = session
        self.seq = seq
        self.text = text
        self.started = time.monotonic()
        self.start = now()
        self.last_output_at = self.started
        self.spool = RawSpool(spool_path.format(id=self.id))
        self.limit = limit
        self.pending = TruncatingText(limit)
        self.listeners: list[Callable[[], None]] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.exit_code: int | None = None
        self.cwd: str | None = None
        self.timed_out = False
        self.interrupted = False
        self.session_restarted = False
        self.deadline: asyncio.TimerHandle | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def running(self) -> bool:
        """True until the shell prompt (or the shell's death) ended the command."""
        return not self.done.done()

    def feed(self, data: bytes) -> None:
        """Take raw output bytes from the PTY."""
        self.spool.write(data)
        self._emit(self._decoder.decode(data))

    def _emit(self, text: str) -> None:
        if text:
            self.last_output_at = time.monotonic()
            self.pending.add(text)
            for listener in self.listeners:
                listener()

    def finish(self, exit_code: int | None, cwd: str) -> None:
        """Record the outcome and wake whoever waits for it."""
        if self.done.done():
            return
        self._emit(self._decoder.decode(b"", final=True))
        self.spool.finish()
        if self.deadline is not None:
            self.deadline.cancel()
        self.exit_code = exit_code
        self.cwd = cwd
        self.done.set_result(None)

    def take_result(self, cwd: str, limit: int | None = None, *, with_output: bool = True) -> CommandResult:
        """The result so far, with the output produced since the previous result of this command."""
        pending, self.pending = self.pending, TruncatingText(self.limit)
        output, truncated = pending.render(self.id, limit) if with_output else ("", False)
        running = self.running
        return CommandResult(
            command_id=self.id,
            session=self.session,
            output=output,
            exit_code=None if running else self.exit_code,
            cwd=cwd if running or self.cwd is None else self.cwd,
            still_running=running,
            timed_out=self.timed_out,
            interrupted=self.interrupted,
            session_restarted=self.session_restarted,
            truncated=truncated,
            output_chars=pending.total,
            duration_s=round(time.monotonic() - self.started, 6),
        )


class _Bash:
    """One bash process on one PTY (a session restarts by replacing it)."""

    def __init__(
        self, proc: subprocess.Popen[bytes], master: int, nonce: bytes, directory: str, lineage: Lineage
    ) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.lineage = lineage
        self.master = master
        self.directory = directory
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        start, end = b"\x1e\x1e" + nonce + b":", b":" + nonce + b"\x1f\x1f"
        self.start_marker = start
        self.sentinel = re.compile(re.escape(start) + rb"(\d*);(\d+);(.*?)" + re.escape(end), re.DOTALL)
        self.pending = b""
        self.closed = False


class ShellSession:
    """A named persistent bash session; at most one command runs in it at a time."""

    def __init__(
        self,
        name: str,
        settings: ServerSettings,
        reaper: ChildReaper,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        register: Callable[[ShellCommand], None] | None = None,
    ) -> None:
        self.name = name
        self._settings = settings
        self._reaper = reaper
        self._start_cwd = cwd or settings.work_dir
        self._env = {**os.environ, **_SESSION_ENV, **(env or {})}
        self._register = register or (lambda cmd: None)
        self._state_dir = settings.state_dir or tempfile.gettempdir()
        self._bash: _Bash | None = None
        self._command: ShellCommand | None = None
        self._seq = 0
        # Set while bash itself was sent SIGINT and has not printed its next prompt yet (see _begin).
        self._reprompt: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.cwd = self._start_cwd
        self.closed = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Spawn bash (returns at once; commands wait for its first prompt)."""
        check_directory(self._start_cwd, "cwd")
        self._bash = self._spawn(self._start_cwd)

    def _spawn(self, cwd: str) -> _Bash:
        loop = asyncio.get_running_loop()
        directory = tempfile.mkdtemp(prefix=f"sh-{self.name}-", dir=self._state_dir)
        nonce = secrets.token_hex(8).encode()
        rc = os.path.join(directory, "rc.sh")
        ps1 = _octal(b"\x1e\x1e" + nonce + b":") + "${__agentbox_seq};${__agentbox_rc};${PWD}"
        ps1 += _octal(b":" + nonce + b"\x1f\x1f")
        with open(rc, "w") as f:
            f.write(
                "set +H +o history\nunset HISTFILE\nPS0=''\nPS2=''\n__agentbox_seq=0\n"
                f"__agentbox_prompt() {{ __agentbox_rc=$?; PS1='{ps1}'; }}\n"
                "PROMPT_COMMAND=__agentbox_prompt\n"
            )
        master, slave = pty.openpty()
        try:
            attrs = termios.tcgetattr(slave)
            # No echo of what we type, no \n -> \r\n rewriting: output arrives as programs wrote it.
            attrs[3] &= ~(termios.ECHO | termios.ECHOE | termios.ECHOK | termios.ECHONL)
            attrs[1] &= ~termios.OPOST
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
            size = struct.pack("HHHH", self._settings.term_rows, self._settings.term_columns, 0, 0)
            fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
            lineage = Lineage()
            proc = spawn(
                [self._settings.shell, "--noprofile", "--rcfile", rc, "--noediting", "-i"],
                cwd=cwd,
                env=lineage.environment(self._env),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                controlling_tty=True,
            )
        except BaseException:
            os.close(master)
            shutil.rmtree(directory, ignore_errors=True)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        lineage.root = proc.pid
        bash = _Bash(proc, master, nonce, directory, lineage)
        loop.add_reader(master, self._on_readable, bash)
        self._reaper.watch(proc, lambda status: self._on_bash_exit(bash, status))
        self.cwd = cwd
        return bash

    def _teardown(self, bash: _Bash) -> None:
        if bash.closed:
            return
        bash.closed = True
        loop = asyncio.get_running_loop()
        loop.remove_reader(bash.master)
        os.close(bash.master)
        bash.lineage.kill()
        # Reaped here, not only by the reaper's callback: at shutdown the loop may close before it runs.
        with contextlib.suppress(subprocess.TimeoutExpired):
            bash.proc.wait(timeout=_REAP_WAIT_S)
        shutil.rmtree(bash.directory, ignore_errors=True)
        if not bash.ready.done():
            bash.ready.set_exception(RuntimeServerError(f"bash of session {self.name!r} ended during startup"))
            bash.ready.exception()  # retrieved: nobody may be waiting

    def close(self) -> None:
        """Kill the shell and every process of its session."""
        self.closed = True
        for task in self._tasks:
            task.cancel()
        cmd = self._command
        if self._bash is not None:
            self._teardown(self._bash)
            self._bash = None
        if cmd is not None:
            cmd.interrupted = True
            self._command = None
            cmd.finish(None, self.cwd)

    async def _ready_bash(self) -> _Bash:
        if self.closed:
            raise NotFoundError(f"session {self.name!r} is closed")
        if self._bash is None or self._bash.closed:
            self._bash = self._spawn(self._start_cwd)
        bash = self._bash
        if not bash.ready.done():
            try:
                await asyncio.wait_for(asyncio.shield(bash.ready), _READY_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise RuntimeServerError(
                    f"bash of session {self.name!r} showed no prompt within {_READY_TIMEOUT_S:.0f}s"
                ) from None
        bash.ready.result()
        return bash

    # ------------------------------------------------------------------ PTY reading

    def _on_readable(self, bash: _Bash) -> None:
        try:
            data = os.read(bash.master, 1 << 16)
        except BlockingIOError:
            return
        except OSError:  # EIO: every holder of the slave side is gone; the exit callback finishes up
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(bash.master)
            return
        self._feed(bash, data)

    def _feed(self, bash: _Bash, data: bytes) -> None:
        buf = bash.pending + data if bash.pending else data
        while True:
            m = bash.sentinel.search(buf)
            if m is None:
                break
            self._output(buf[: m.start()])
            buf = buf[m.end() :]
            self._on_prompt(bash, m.group(1), int(m.group(2)), m.group(3).decode(errors="replace"))
        start = buf.find(bash.start_marker)
        hold = len(buf) - start if start >= 0 else 0
        if start < 0 and b"\x1e" in buf[-len(bash.start_marker) :]:
            # Keep a possible first part of the marker until the next read completes or refutes it.
            for k in range(min(len(bash.start_marker) - 1, len(buf)), 0, -1):
                if bash.start_marker.startswith(buf[-k:]):
                    hold = k
                    break
        if hold:
            self._output(buf[:-hold])
            bash.pending = buf[-hold:]
        else:
            self._output(buf)
            bash.pending = b""

    def _output(self, data: bytes) -> None:
        # Output while no command runs (a background job's) has no command to belong to: dropped.
        if data and self._command is not None:
            self._command.feed(data)

    def _on_prompt(self, bash: _Bash, seq: bytes, exit_code: int, cwd: str) -> None:
        self.cwd = cwd
        if not bash.ready.done():
            bash.ready.set_result(None)
            return
        if self._reprompt is not None and not self._reprompt.done():
            self._reprompt.set_result(None)
        cmd = self._command
        if cmd is not None and seq == str(cmd.seq).encode():
            self._command = None
            if cmd.timed_out or cmd.interrupted:
                # Its foreground ended, but what it put in the background must not outlive it either;
                # done before the result is out, so the next command cannot be caught in the sweep.
                bash.lineage.kill(since=cmd.start)
            elif jobs := bash.lineage.groups(since=cmd.start):
                # Taken before the result is out, so the next command's jobs are not among them.
                self._spawn_task(self._watch_jobs(bash, jobs))
            cmd.finish(exit_code, cwd)

    async def _watch_jobs(self, bash: _Bash, jobs: set[int]) -> None:
        """Kill any of ``jobs`` (process groups a command left running) that grows into a runaway."""
        size = _runaway_size()
        delay = _WATCH_FIRST_S
        end = time.monotonic() + _WATCH_S
        while jobs and time.monotonic() < end:
            await asyncio.sleep(delay)
            if bash.closed:
                return
            sizes = bash.lineage.group_sizes(jobs)
            if runaways := {group for group, n in sizes.items() if n > size}:
                bash.lineage.kill(groups=runaways)
            jobs = set(sizes) - runaways
            delay = min(delay * 2, _WATCH_EVERY_MAX_S)

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_bash_exit(self, bash: _Bash, status: int) -> None:
        if bash.closed:
            return
        with contextlib.suppress(OSError):
            while data := os.read(bash.master, 1 << 16):  # what it printed last, e.g. "exit"
                self._feed(bash, data)
        if bash.pending:
            self._output(bash.pending)
        self._teardown(bash)
        if self.closed or bash is not self._bash:
            return
        cmd = self._command
        self._command = None
        self._bash = self._spawn(self._start_cwd)
        if cmd is not None:
            cmd.session_restarted = True
            cmd.finish(status if status >= 0 else 128 - status, self.cwd)

    # ------------------------------------------------------------------ commands

    @property
    def busy(self) -> bool:
        """True while a command runs."""
        return self._command is not None

    def info(self) -> SessionInfo:
        """Describe this session."""
        cmd = self._command
        return SessionInfo(
            name=self.name,
            pid=self._bash.pid if self._bash else 0,
            cwd=self.cwd,
            busy=cmd is not None,
            command_id=cmd.id if cmd else None,
            command=cmd.text if cmd else None,
        )

    async def _begin(self, req: RunCommand) -> ShellCommand:
        bash = await self._ready_bash()
        if self._reprompt is not None:
            # bash got SIGINT at its prompt (or as a command ended): readline throws away whatever line
            # it is reading when the signal is handled, so a command written before that would be lost.
            await asyncio.wait([self._reprompt], timeout=_REPROMPT_WAIT_S)
            self._reprompt = None
        if self._command is not None:
            cmd = self._command
            raise ConflictError(
                f"session {self.name!r} is still running command {cmd.id} ({cmd.text[:80]!r}, started "
                f"{time.monotonic() - cmd.started:.1f}s ago); read its output, send it input or keys, "
                "or interrupt it before running another command (or use another session)"
            )
        self._seq += 1
        # What a command holds in memory grows with its limit: the client may ask for less, or for more up
        # to the cap, never for unbounded (the full output is in the spool whatever the limit).
        settings = self._settings
        limit = min(max(req.max_output_chars or 0, settings.max_output_chars), settings.max_output_chars_cap)
        spool = os.path.join(self._state_dir, "cmd-{id}.out")
        cmd = ShellCommand(self.name, self._seq, req.command, spool, limit)
        script = os.path.join(bash.directory, "cmd.sh")
        text = req.command if req.command.endswith("\n") else req.command + "\n"
        _overwrite(script, text.encode("utf-8", "surrogateescape"))
        line = f"__agentbox_seq={cmd.seq}; . {shlex.quote(script)}\n".encode()
        self._write(bash, line)
        self._command = cmd
        self._register(cmd)
        if req.timeout is not None:
            cmd.deadline = asyncio.get_running_loop().call_later(req.timeout, self._on_deadline, cmd)
        return cmd

    async def run(self, req: RunCommand) -> CommandResult:
        """Run a command; return when it ends, at its no-output timeout, or after its hard timeout."""
        cmd = await self._begin(req)
        try:
            await self._wait(cmd, None, req.no_output_timeout)
        except asyncio.CancelledError:
            # The HTTP server cancels what still runs when its shutdown grace ends (SIGTERM: the sandbox is
            # being stopped or restarted, e.g. by an engine restart). Left alone that is a bare 500; the
            # caller is owed what happened. The command itself ends with the session at shutdown.
            raise ConflictError(
                f"the runtime server is stopping (its sandbox is being stopped or restarted): command {cmd.id} "
                f"({cmd.text[:80]!r}) in session {self.name!r} ends with it"
            ) from None
        return cmd.take_result(self.cwd, req.max_output_chars or self._settings.max_output_chars)

    async def stream(self, req: RunCommand) -> AsyncIterator[OutputChunk | StreamEnd]:
        """Start a command (errors such as a busy session raise here, before any event) and return
        an iterator of its output as produced, ending with its result (without output)."""
        cmd = await self._begin(req)
        return self._events(cmd, req.no_output_timeout)

    async def _events(
        self, cmd: ShellCommand, no_output_timeout: float | None
    ) -> AsyncIterator[OutputChunk | StreamEnd]:
        # Events are read from the command's spool at the consumer's pace, not queued as produced: a
        # consumer that stalls (its TCP window full, so the SSE writer waits in `send`) then costs no
        # memory at all, while the command runs on at full speed into the spool on disk, exactly as for
        # `run`. Stopping the PTY reads instead would also bound memory, but would stall the command on
        # a slow client and leave `run`, `output` and the timeouts of the same command blind meanwhile.
        wake = asyncio.Event()
        cmd.listeners.append(wake.set)
        cmd.done.add_done_callback(lambda _f: wake.set())
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        offset = 0
        try:
            while True:
                data = await cmd.spool.read_at(offset, _STREAM_CHUNK)
                if data:
                    offset += len(data)
                    if text := decoder.decode(data):
                        yield OutputChunk(text=text)
                    continue
                if not cmd.running:  # ended, and its spool is read to the end
                    if text := decoder.decode(b"", final=True):
                        yield OutputChunk(text=text)
                    break
                wake.clear()
                if cmd.spool.size > offset:
                    continue
                timeout = None
                if no_output_timeout is not None:
                    timeout = cmd.last_output_at + no_output_timeout - time.monotonic()
                    if timeout <= 0:
                        break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
            yield StreamEnd(result=cmd.take_result(self.cwd, with_output=False))
        finally:
            with contextlib.suppress(ValueError):
                cmd.listeners.remove(wake.set)

    async def _wait(self, cmd: ShellCommand, timeout: float | None, no_output_timeout: float | None) -> None:
        """Wait until ``cmd`` ends, ``timeout`` passes, or it printed nothing for ``no_output_timeout``."""
        start = time.monotonic()
        while cmd.running:
            limits = []
            if timeout is not None:
                limits.append(start + timeout)
            if no_output_timeout is not None:
                limits.append(max(cmd.last_output_at, start) + no_output_timeout)
            remaining = min(limits) - time.monotonic() if limits else None
            if remaining is not None and remaining <= 0:
                return
            await asyncio.wait([cmd.done], timeout=remaining)

    def _running(self) -> tuple[_Bash, ShellCommand]:
        if self._command is None or self._bash is None:
            raise ConflictError(f"no command is running in session {self.name!r}")
        return self._bash, self._command

    async def read_output(self, req: ReadOutput) -> CommandResult:
        """Wait for more output of the running command and return what arrived since the last result."""
        _bash, cmd = self._running()
        await self._wait(cmd, req.timeout, req.no_output_timeout)
        return cmd.take_result(self.cwd, req.max_output_chars)

    async def send_input(self, req: SendInput) -> CommandResult:
        """Type text into the running command's terminal, then wait like read_output."""
        bash, cmd = self._running()
        self._write(bash, req.text.encode())
        await self._wait(cmd, req.timeout, req.no_output_timeout)
        return cmd.take_result(self.cwd, req.max_output_chars)

    async def send_keys(self, req: SendKeys) -> CommandResult:
        """Press keys in the running command's terminal (Ctrl-C goes through the tty's own signals)."""
        bash, cmd = self._running()
        self._write(bash, b"".join(KEYS[k] for k in req.keys))
        await self._wait(cmd, req.timeout, req.no_output_timeout)
        return cmd.take_result(self.cwd, req.max_output_chars)

    async def interrupt(self) -> CommandResult:
        """Stop the running command: SIGINT, then SIGKILL, then a shell restart, each after a grace."""
        _bash, cmd = self._running()
        await self._stop(cmd, timed_out=False)
        return cmd.take_result(self.cwd)

    def _write(self, bash: _Bash, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(bash.master, view) :]
        except BlockingIOError:
            raise ConflictError(
                f"the terminal of session {self.name!r} is not reading input ({len(view)} bytes not sent)"
            ) from None
        except OSError as exc:
            raise ConflictError(f"the shell of session {self.name!r} is gone: {exc.strerror}") from None

    def _on_deadline(self, cmd: ShellCommand) -> None:
        self._spawn_task(self._stop(cmd, timed_out=True))

    async def _stop(self, cmd: ShellCommand, *, timed_out: bool) -> None:
        if not cmd.running:
            return
        if timed_out:
            cmd.timed_out = True
        else:
            cmd.interrupted = True
        grace = self._settings.kill_grace_s
        bash = self._bash
        # SIGINT first: the command may clean up (and bash prints its prompt when its job ends).
        self._signal_foreground(signal.SIGINT)
        await asyncio.wait([cmd.done], timeout=grace)
        if cmd.running and bash is not None and bash is self._bash:
            # Then everything the command started, whatever process group or session it moved to (the
            # foreground job, its background jobs, a fork bomb), frozen first so none can fork away.
            bash.lineage.kill(since=cmd.start)
            await asyncio.wait([cmd.done], timeout=grace)
        if cmd.running and self._bash is not None and self._command is cmd:
            # Bash itself runs the job (a builtin loop ignoring SIGINT): only a new shell helps.
            bash = self._bash
            self._teardown(bash)
            self._command = None
            self._bash = self._spawn(self._start_cwd)
            cmd.session_restarted = True
            cmd.finish(None, self.cwd)

    def _signal_foreground(self, sig: int) -> None:
        bash = self._bash
        if bash is None:
            return
        try:
            pgrp = os.tcgetpgrp(bash.master)
        except OSError:
            pgrp = bash.pid
        try:
            if pgrp > 0 and pgrp != bash.pid:
                os.killpg(pgrp, sig)
            elif sig == signal.SIGINT:
                # bash itself runs the job (a builtin, a loop) or sits at its prompt: SIGINT makes it
                # print a prompt, which the next command must wait for.
                if self._reprompt is None or self._reprompt.done():
                    self._reprompt = asyncio.get_running_loop().create_future()
                os.kill(bash.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:  # pragma: no cover - a setuid child
            if exc.errno != errno.EPERM:
                raise


class ShellManager:
    """All shell sessions of the server, and the recent commands whose full output is retrievable."""

    def __init__(self, settings: ServerSettings, reaper: ChildReaper) -> None:
        self._settings = settings
        self._reaper = reaper
        self._sessions: dict[str, ShellSession] = {}
        self._commands: OrderedDict[str, ShellCommand] = OrderedDict()

    def start(self) -> None:
        """Create the ``default`` session.

        Without the request and answer models of :meth:`create`: building a model's validator the first
        time (pydantic defers it) costs ~15 ms, which here would delay the ready line; the first command
        path's models are built right after it instead (``app.warm_up``).
        """
        self._open("default", None, {})

    def create(self, req: SessionCreate) -> SessionInfo:
        """Create and start a named session."""
        if req.name in self._sessions:
            raise ConflictError(f"session {req.name!r} already exists")
        cwd = None
        if req.cwd is not None:
            cwd = os.path.normpath(os.path.join(self.cwd_of("default"), os.path.expanduser(req.cwd)))
        return self._open(req.name, cwd, req.env).info()

    def _open(self, name: str, cwd: str | None, env: Mapping[str, str]) -> ShellSession:
        session = ShellSession(name, self._settings, self._reaper, cwd=cwd, env=env, register=self._register)
        session.start()
        self._sessions[name] = session
        return session

    def get(self, name: str) -> ShellSession:
        """The session called ``name``."""
        try:
            return self._sessions[name]
        except KeyError:
            raise NotFoundError(
                f"no shell session {name!r} (sessions: {', '.join(self._sessions) or 'none'})"
            ) from None

    def close(self, name: str) -> None:
        """Close a session, killing every process it started (``default`` cannot be closed)."""
        if name == "default":
            raise BadRequestError("the default session cannot be closed; run 'exit' in it to restart it")
        self.get(name).close()
        del self._sessions[name]

    def list(self) -> list[SessionInfo]:
        """Describe all sessions."""
        return [s.info() for s in self._sessions.values()]

    def cwd_of(self, name: str) -> str:
        """Current directory of a session (the work dir if it does not exist)."""
        session = self._sessions.get(name)
        return session.cwd if session is not None else self._settings.work_dir

    def command(self, command_id: str) -> ShellCommand:
        """A recent command by id."""
        try:
            return self._commands[command_id]
        except KeyError:
            raise NotFoundError(
                f"no command {command_id!r}: unknown, or older than the last {self._settings.keep_commands} commands"
            ) from None

    def _register(self, cmd: ShellCommand) -> None:
        self._commands[cmd.id] = cmd
        excess = len(self._commands) - self._settings.keep_commands
        for old_id in list(self._commands)[:excess] if excess > 0 else []:
            old = self._commands[old_id]
            if not old.running:
                old.spool.discard()
                del self._commands[old_id]

    def close_all(self) -> None:
        """Close every session (server shutdown)."""
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()
        for cmd in self._commands.values():
            cmd.spool.discard()
        self._commands.clear()
