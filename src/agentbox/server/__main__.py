"""``python -m agentbox.server`` / ``agentbox-server``: run the runtime server of one sandbox.

The session API key comes from a file (``--api-key-file``, optionally deleted after reading, which is how
the Docker backend hands it over after the container starts) or from the first line of stdin; never from
the environment or the command line, where ``docker inspect`` and ``ps`` would show it. Once the socket
accepts connections the server prints exactly one line, ``agentbox-server ready on http://HOST:PORT`` (or
``agentbox-server ready on unix:PATH`` with ``--uds PATH``). Just before it, on stderr, it prints where its
start went (``agentbox-server phases: start=EPOCH main=MS imports=MS app=MS ready=MS``, offsets from the process
start; see :func:`phases_line`), which ``make bench`` reads to break a cold start down.
"""

from __future__ import annotations

# ruff: noqa: E402 - the clock is read before the other imports: they are the phases line's "imports"
import time

_MAIN_AT = time.time()

import gc

# The start allocates a great many objects and frees almost none (modules, classes, the app): the cyclic
# collector's passes over them meanwhile find nothing and cost ~10 % of the imports. Run as a program, it
# is off until the server is ready, when everything made so far is frozen out of its way for good.
if __name__ == "__main__":
    gc.disable()

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import stat
import sys
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    import uvicorn
    from starlette.types import ASGIApp

__all__ = ["PHASES_PREFIX", "main", "phases_line", "process_start"]

PHASES_PREFIX = "agentbox-server phases: "


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="agentbox-server", description="The agentbox runtime server.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one")
    parser.add_argument(
        "--uds", metavar="PATH", help="listen on this Unix domain socket instead of --host/--port (replaced if present)"
    )
    parser.add_argument("--work-dir", default="/workspace", help="default working directory (created)")
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--api-key-file", metavar="PATH", help="read the session API key from this file")
    key.add_argument("--api-key-stdin", action="store_true", help="read the session API key from stdin")
    parser.add_argument("--delete-key-file", action="store_true", help="unlink the --api-key-file after reading it")
    parser.add_argument("--max-output-chars", type=int, default=30_000, help="default result output cap")
    parser.add_argument("--log-level", default="warning", help="server log level (stderr)")
    return parser.parse_args(argv)


def _read_api_key(args: argparse.Namespace) -> str:
    if args.api_key_stdin:
        key = sys.stdin.readline().strip()
        source = "stdin"
    else:
        with open(args.api_key_file) as f:
            key = f.read().strip()
        source = args.api_key_file
        if args.delete_key_file:
            os.unlink(args.api_key_file)
    if not key:
        raise ValueError(f"the session API key read from {source} is empty")
    return key


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this: answers go out at once instead of waiting on Nagle's algorithm.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _listen_unix(path: str) -> socket.socket:
    # A socket file left by an earlier run of a restarted container would make bind fail: replace it.
    # Only a socket is removed, never a file someone put there under that name.
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Created 0600 (umask during bind) so there is no moment at which others may connect; the host
    # connects as root or as this uid, and every request needs the session key anyway.
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def process_start() -> float | None:
    """This process's start (the Unix time of its fork, 10 ms resolution), or None where /proc cannot say.

    In a sandbox the server is exec'ed by the entrypoint (tini forks it; sh, then setpriv, exec in turn),
    so this is when the entrypoint began. /proc/stat's btime is whole seconds, too coarse: the age is
    taken against CLOCK_BOOTTIME instead, the clock the start tick counts on.
    """
    try:
        with open("/proc/self/stat") as f:
            # Field 22 is starttime; counted after the ")" closing the command name (which may hold blanks).
            ticks = int(f.read().rpartition(")")[2].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.time() - age


def phases_line(start: float | None, marks: dict[str, float]) -> str:
    """``agentbox-server phases: start=EPOCH main=MS ...``: each mark as milliseconds after ``start``.

    Without a process start (no /proc), the offsets count from the main module's first line instead
    (``main=0``).
    """
    origin = start if start is not None else marks.get("main", 0.0)
    parts = [f"start={origin:.3f}"] + [f"{name}={(at - origin) * 1000:.1f}" for name, at in marks.items()]
    return PHASES_PREFIX + " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, start the server, and serve until SIGTERM/SIGINT."""
    args = _parse_args(argv)
    if args.delete_key_file and not args.api_key_file:
        print("agentbox-server: --delete-key-file needs --api-key-file", file=sys.stderr)
        return 2
    try:
        api_key = _read_api_key(args)
    except (OSError, ValueError) as exc:
        print(f"agentbox-server: cannot read the session API key: {exc}", file=sys.stderr)
        return 2
    work_dir = os.path.abspath(args.work_dir)
    try:
        os.makedirs(work_dir, exist_ok=True)
    except OSError as exc:
        print(f"agentbox-server: work dir {work_dir} is missing and cannot be created: {exc}", file=sys.stderr)
        return 2
    where = args.uds or f"{args.host}:{args.port}"
    try:
        sock = _listen_unix(args.uds) if args.uds else _listen(args.host, args.port)
    except OSError as exc:
        print(f"agentbox-server: cannot listen on {where}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="agentbox-server %(levelname)s %(name)s: %(message)s")

    # pydantic scans every installed distribution's entry points for plugins when the first model is
    # built: tens of milliseconds of startup (more in a big image) for plugins the server never uses.
    plugins_env = os.environ.get("PYDANTIC_DISABLE_PLUGINS")
    os.environ["PYDANTIC_DISABLE_PLUGINS"] = "__all__"
    from agentbox.protocol import READY_LINE_PREFIX
    from agentbox.server.app import create_app
    from agentbox.server.settings import ServerSettings

    marks = {"main": _MAIN_AT, "imports": time.time()}

    def phases() -> str:
        return phases_line(process_start(), {**marks, "ready": time.time()})

    settings = ServerSettings(
        api_key=api_key,
        work_dir=work_dir,
        host=args.host,
        port=0 if args.uds else sock.getsockname()[1],
        max_output_chars=args.max_output_chars,
    )
    if args.uds:
        ready = f"{READY_LINE_PREFIX}unix:{args.uds}"
    else:
        host = f"[{args.host}]" if ":" in args.host else args.host
        ready = f"{READY_LINE_PREFIX}http://{host}:{settings.port}"
    # "app": the app built and uvicorn imported; "ready": its lifespan ran (pools, the default shell).
    app = create_app(settings)

    def after_ready() -> None:
        from agentbox.server.app import warm_up
        from agentbox.server.memory import tune_malloc

        tune_malloc()
        warm_up(app)
        if not gc.isenabled():
            gc.freeze()  # the first command's models too: long-lived like the rest
            gc.enable()

    server = _make_server(app, ready, phases, after_ready)
    marks["app"] = time.time()
    if plugins_env is None:  # sandbox processes inherit this environment: leave it as it was
        del os.environ["PYDANTIC_DISABLE_PLUGINS"]
    else:
        os.environ["PYDANTIC_DISABLE_PLUGINS"] = plugins_env
    server.run(sockets=[sock])
    return 0


def _make_server(
    app: ASGIApp, ready_line: str, phases: Callable[[], str], after_ready: Callable[[], None]
) -> uvicorn.Server:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, announcing readiness and sleeping (not ticking) while idle."""

        _exit_event: asyncio.Event | None = None
        _loop: asyncio.AbstractEventLoop | None = None

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                print(phases(), file=sys.stderr, flush=True)
                # Only now do the listeners run; the Docker backend waits for this exact line.
                print(ready_line, flush=True)
                # Next on the loop, while the ready line travels to the host and its first request
                # comes back: no request can be read before it runs, and none waits longer for it.
                asyncio.get_running_loop().call_soon(after_ready)

        async def main_loop(self) -> None:
            # uvicorn wakes every 0.1 s to refresh the Date header and look at should_exit; an idle
            # sandbox must not wake at all, so wait for the exit signal instead (no Date header).
            self._loop = asyncio.get_running_loop()
            self._exit_event = asyncio.Event()
            await self.on_tick(0)
            if not self.should_exit:
                await self._exit_event.wait()

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            if self._loop is not None and self._exit_event is not None:
                self._loop.call_soon_threadsafe(self._exit_event.set)

    config = uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,
        access_log=False,
        date_header=False,
        server_header=False,
        # Nothing here reads the client address: rewriting it from X-Forwarded-* is work per request for nothing.
        proxy_headers=False,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=5,
        ws=_LazyWebSocketProtocol,
    )
    return Server(config)


class _LazyWebSocketProtocol(asyncio.Protocol):
    """uvicorn's WebSocket protocol, imported by the first WebSocket rather than at start.

    Only the console's terminal (/pty) and proxied app ports use WebSockets; most sandboxes never see one.
    Importing the protocol (and the websockets library) at start cost 16 ms of every start and 1.6 MiB of
    every idle server. uvicorn instantiates ``config.ws`` once per upgrade request, so ``__new__`` hands
    back an instance of the real protocol: the sans-I/O one where uvicorn has it (the legacy one warns on
    stderr), else the legacy one.
    """

    _real: type | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls._real is None:
            from uvicorn.config import WS_PROTOCOLS
            from uvicorn.importer import import_from_string

            name = "websockets-sansio" if "websockets-sansio" in WS_PROTOCOLS else "websockets"
            cls._real = import_from_string(WS_PROTOCOLS[name])
        return cls._real(*args, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
