"""An interactive terminal over a WebSocket: ``/pty`` gives the client a login-less bash on a fresh PTY.

Unlike the shell sessions (:mod:`agentbox.server.shell`), which run one command at a time and read its
end from a sentinel prompt, this PTY is raw: what the client types goes to the terminal as bytes, what
the terminal prints goes back as bytes, echo and line editing are bash's own. It is what a person at a
browser terminal (xterm.js) needs, not what an agent needs.

Wire protocol, one WebSocket per terminal:

- client -> server, **binary** frame: keystrokes (bytes written to the PTY as they are);
- client -> server, **text** frame: a JSON control message, ``{"type": "resize", "cols": C, "rows": R}``;
- server -> client, **binary** frame: terminal output;
- the server closes with 1000 when bash exits; a closed socket kills bash and everything it started.

The query may give the first size (``?cols=80&rows=24``). The terminal runs as the server's own user (the
sandbox user) in the work directory, like every other process the server starts. The session API key is
required as on every endpoint: :class:`~agentbox.server.app.ApiKeyMiddleware` checks HTTP requests only,
so the handshake is checked here before anything is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hmac
import json
import os
import pty
import select
import struct
import termios

from starlette.websockets import WebSocket, WebSocketDisconnect

from agentbox.protocol import API_KEY_HEADER
from agentbox.server.procs import ChildReaper, Lineage, check_directory, spawn
from agentbox.server.settings import ServerSettings

__all__ = ["PTY_PATH", "PtyEndpoint"]

PTY_PATH = "/pty"
#: Bounds on a terminal's size (a bigger one is a client bug; the kernel takes up to 65535).
MAX_CELLS = 1000
_DEFAULT_SIZE = (80, 24)
# Policy violation: the WebSocket close code for a missing or wrong key.
_CLOSE_POLICY = 1008
# Output read per wake-up; more waits for the next one (the loop stays fair to other clients).
_READ = 1 << 16


def _size(cols: object, rows: object) -> tuple[int, int] | None:
    """``(cols, rows)`` when both are integers in range, else None."""
    try:
        c, r = int(str(cols)), int(str(rows))
    except ValueError:
        return None
    if not (1 <= c <= MAX_CELLS and 1 <= r <= MAX_CELLS):
        return None
    return c, r


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class PtyEndpoint:
    """The ``/pty`` WebSocket handler (:meth:`serve`): one bash on one PTY per connection."""

    def __init__(self, settings: ServerSettings, reaper: ChildReaper) -> None:
        self._settings = settings
        self._reaper = reaper
        self._key = settings.api_key.encode()

    async def serve(self, websocket: WebSocket) -> None:
        """Serve one terminal until either side ends it."""
        provided = websocket.headers.get(API_KEY_HEADER, "").encode()
        if not hmac.compare_digest(provided, self._key):
            await websocket.close(code=_CLOSE_POLICY, reason=f"missing or wrong {API_KEY_HEADER}")
            return
        size = _size(websocket.query_params.get("cols", _DEFAULT_SIZE[0]),
                     websocket.query_params.get("rows", _DEFAULT_SIZE[1]))
        if size is None:
            await websocket.close(code=_CLOSE_POLICY, reason=f"cols and rows must be integers 1-{MAX_CELLS}")
            return
        await websocket.accept()
        await _Terminal(self._settings, self._reaper, websocket, size).run()


class _Terminal:
    """One bash on one PTY, relayed to one WebSocket."""

    def __init__(self, settings: ServerSettings, reaper: ChildReaper, websocket: WebSocket,
                 size: tuple[int, int]) -> None:
        self._settings = settings
        self._reaper = reaper
        self._ws = websocket
        self._size = size
        self._output: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._lineage = Lineage()

    def _spawn(self) -> int:
        work_dir = check_directory(self._settings.work_dir, "work_dir")
        env = {**os.environ, "TERM": "xterm-256color", "COLORTERM": "truecolor", "PWD": work_dir}
        master, slave = pty.openpty()
        try:
            _set_size(slave, *self._size)
            proc = spawn([self._settings.shell, "-i"], cwd=work_dir, env=self._lineage.environment(env),
                         stdin=slave, stdout=slave, stderr=slave, controlling_tty=True)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self._lineage.root = proc.pid
        # bash's exit ends the output; the reaper reaps it (no zombie while the socket lingers).
        self._reaper.watch(proc, lambda _status: None)
        os.set_blocking(master, False)
        return master

    def _on_readable(self, master: int) -> None:
        try:
            data = os.read(master, _READ)
        except BlockingIOError:
            return
        except OSError:  # EIO: every process holding the terminal is gone
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(master)
            self._output.put_nowait(None)
            return
        self._output.put_nowait(data)

    async def _send_output(self) -> None:
        while (data := await self._output.get()) is not None:
            # Coalesce what is queued already: one frame per burst, not one per read.
            while not self._output.empty():
                more = self._output.get_nowait()
                if more is None:
                    self._output.put_nowait(None)
                    break
                data += more
            await self._ws.send_bytes(data)

    async def _receive_input(self, master: int) -> None:
        while True:
            message = await self._ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                _write_all(master, message["bytes"])
            elif message.get("text") is not None:
                self._control(master, message["text"])

    def _control(self, master: int, text: str) -> None:
        # A malformed control message is ignored: the terminal is more useful alive than strict.
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            msg = json.loads(text)
            if msg.get("type") == "resize":
                size = _size(msg.get("cols"), msg.get("rows"))
                if size is not None:
                    _set_size(master, *size)

    async def run(self) -> None:
        """Relay until bash ends (close 1000) or the client goes (bash and its children are killed)."""
        loop = asyncio.get_running_loop()
        try:
            master = self._spawn()
        except Exception as exc:  # reported to the client, which has nothing else to see
            await self._ws.close(code=1011, reason=str(exc)[:120])
            return
        loop.add_reader(master, self._on_readable, master)
        tasks = [loop.create_task(self._send_output()), loop.create_task(self._receive_input(master))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.remove_reader(master)
            await loop.run_in_executor(None, self._lineage.kill)
            os.close(master)
        if tasks[0] in done:  # bash ended: say so (the client may already be gone)
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await self._ws.close(code=1000, reason="the shell exited")


def _write_all(fd: int, data: bytes) -> None:
    """Write keystrokes to the non-blocking master; a full PTY buffer (a paste into a stuck program) waits."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            # The slave side does not read (a paste into a stuck program): wait a little, drop nothing.
            select.select([], [fd], [], 1.0)
            continue
        view = view[n:]
