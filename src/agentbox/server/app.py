"""The runtime server application: ``create_app(settings)`` wires thin routes to the capability services.

Routes only parse (see :mod:`agentbox.server.routing`), call one service method, and answer; the work
lives in ``shell``, ``files``, ``background``, ``ipython`` and ``info``, which are usable without HTTP.
Blocking file work goes to worker threads; the shell and kernel are event-driven on the loop.

Errors leave through one boundary: agentbox errors become ``{code, message}`` with their status, HTTP
errors of the router (404, 405) likewise, and anything else a 500 ``internal`` whose traceback goes to the
log once, without ever costing the client its keep-alive connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hmac
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from typing import IO, Any, TypeVar, cast

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from agentbox._streams import IterReader, iterate_from_thread, iterate_in_thread
from agentbox.errors import ERROR_CODES, RuntimeServerError
from agentbox.protocol import (
    API_KEY_HEADER,
    FORMAT_HEADER,
    Alive,
    BackgroundInfo,
    BackgroundList,
    BackgroundOutput,
    BackgroundOutputQuery,
    BackgroundStart,
    CommandResult,
    CreateOp,
    DirListing,
    EditOp,
    EditResult,
    ErrorBody,
    FileContent,
    FileWritten,
    InsertOp,
    KernelStatus,
    ListDir,
    OutputChunk,
    PythonResult,
    RawFileQuery,
    RawWriteQuery,
    ReadFile,
    ReadOutput,
    RunCommand,
    RunPython,
    SendInput,
    SendKeys,
    ServerInfo,
    SessionCreate,
    SessionInfo,
    SessionList,
    StreamEnd,
    StrReplaceOp,
    TransferQuery,
    UndoEditOp,
    UploadResult,
    ViewOp,
    WriteFile,
)
from agentbox.server import fsio, portfwd
from agentbox.server import info as info_mod
from agentbox.server.background import BackgroundManager
from agentbox.server.files import Editor, FileService, resolve
from agentbox.server.ipython import PythonKernel
from agentbox.server.procs import ChildReaper, check_directory
from agentbox.server.pty import PTY_PATH, PtyEndpoint
from agentbox.server.routing import DEFAULT_MAX_BODY_BYTES, TypedRouter, json_response
from agentbox.server.settings import ServerSettings
from agentbox.server.shell import ShellManager
from agentbox.server.streaming import StreamingResponse

__all__ = ["Runtime", "create_app", "warm_up"]

_OPEN_PATHS = frozenset({"/alive"})
_CHUNK = 1 << 20
T = TypeVar("T")
_log = logging.getLogger("agentbox.server")

# HTTP status of each wire code (agentbox.errors' one table).
_STATUS = {code: status for code, (_cls, status) in ERROR_CODES.items()}


class Runtime:
    """The services of one server; built without I/O, started and closed by the app's lifespan."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.clock = info_mod.ActivityClock()
        self.reaper = ChildReaper()
        self.files = FileService()
        self.editor = Editor()
        self.state_dir = ""
        self._own_state_dir = False
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._file_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.shells: ShellManager
        self.background: BackgroundManager
        self.kernel: PythonKernel

    def start(self) -> None:
        """Create the state directory, the child reaper and the default shell session."""
        settings = self.settings
        if settings.state_dir is None:
            self.state_dir = tempfile.mkdtemp(prefix="agentbox-server-")
            self._own_state_dir = True
        else:
            self.state_dir = settings.state_dir
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        settings = _replace_state_dir(settings, self.state_dir)
        loop = asyncio.get_running_loop()
        self._executor = _warm_executor(settings.worker_threads)
        loop.set_default_executor(self._executor)
        self._file_pool = _warm_executor(fsio.FILE_THREADS, prefix="agentbox-files")
        fsio.use_pool(self._file_pool)
        self.reaper.start(loop)
        self.shells = ShellManager(settings, self.reaper)
        self.background = BackgroundManager(settings.shell, self.state_dir, self.reaper, os.environ)
        self.kernel = PythonKernel(settings.work_dir, self.state_dir, os.environ)
        self.shells.start()

    async def close(self) -> None:
        """Stop every process the server started and remove its state."""
        with contextlib.suppress(AttributeError):  # start() may have failed half-way
            self.shells.close_all()
            self.background.close()
            await self.kernel.close()
        self.reaper.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        if self._file_pool is not None:
            fsio.release_pool(self._file_pool)
            self._file_pool.shutdown(wait=False)
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def path(self, path: str, session: str) -> str:
        """``path`` resolved against the cwd of ``session``."""
        return resolve(path, self.shells.get(session).cwd)

    def directory(self, path: str | None, session: str, field: str = "cwd") -> str:
        """``path`` (default: the session's cwd) resolved, checked to be a directory commands can enter."""
        resolved = self.path(path or ".", session)
        return check_directory(resolved, field)


def _warm_executor(workers: int, *, prefix: str = "agentbox-worker") -> concurrent.futures.ThreadPoolExecutor:
    """A thread pool whose threads all exist before the first request.

    A thread is a task like a process: when a runaway command fills the sandbox's pids limit, a pool that
    starts threads on demand cannot start one, and every file call fails. Started now, the threads are
    reused for the server's life (ThreadPoolExecutor never retires an idle thread), so the server keeps
    answering whatever the sandbox's processes do.
    """
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=prefix)
    barrier = threading.Barrier(workers + 1)
    for _ in range(workers):
        pool.submit(barrier.wait)  # each waits, so each submit finds no idle thread and starts one
    barrier.wait()
    return pool


def _replace_state_dir(settings: ServerSettings, state_dir: str) -> ServerSettings:
    return dataclasses.replace(settings, state_dir=state_dir)


class ApiKeyMiddleware:
    """Requires the session API key on every request but the liveness probe (constant-time compare)."""

    def __init__(self, app: ASGIApp, api_key: str, on_authenticated: Callable[[], None]) -> None:
        self.app = app
        self._key = api_key.encode()
        self._on_authenticated = on_authenticated
        self._header = API_KEY_HEADER.lower().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the key, answering 401 (missing) or 403 (wrong) without reaching the app."""
        if scope["type"] == "http" and scope["path"] not in _OPEN_PATHS:
            provided = next((v for k, v in scope["headers"] if k == self._header), None)
            if provided is None:
                response = _error_response(
                    "unauthorized", f"missing {API_KEY_HEADER} header: every endpoint but /alive needs it"
                )
                return await response(scope, receive, send)
            if not hmac.compare_digest(provided, self._key):
                response = _error_response("forbidden", f"wrong {API_KEY_HEADER}")
                return await response(scope, receive, send)
            self._on_authenticated()
        await self.app(scope, receive, send)


def _error_response(code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    response = json_response(ErrorBody(code=code, message=message), status_code=_STATUS.get(code, 500))
    response.headers.update(headers or {})
    return response


async def _on_server_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, RuntimeServerError):
        return _error_response(exc.code, exc.message)
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            return _error_response("not_found", f"no endpoint {request.method} {request.url.path}")
        if exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "")
            return _error_response(
                "method_not_allowed",
                f"{request.method} is not allowed on {request.url.path} (allowed: {allow})",
                headers={"Allow": allow},
            )
        return _error_response("bad_request", str(exc.detail))
    # Starlette re-raises after this answer, so the server log gets the traceback once.
    return _error_response(
        "internal", f"internal server error ({type(exc).__name__}); the server log has the traceback"
    )


def _edit_handlers(rt: Runtime) -> dict[type, Callable[[str, Any], EditResult]]:
    ed = rt.editor
    return {
        ViewOp: ed.view,
        CreateOp: ed.create,
        StrReplaceOp: ed.str_replace,
        InsertOp: ed.insert,
        UndoEditOp: ed.undo_edit,
    }


def build_router(rt: Runtime, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> TypedRouter:
    """Every endpoint of the API, bound to the services of ``rt``."""
    api = TypedRouter(max_body_bytes=max_body_bytes)
    route = api.route

    # ------------------------------------------------------------------ health

    @route("GET", "/alive", response=Alive)
    async def alive(request: Request) -> Alive:
        """Liveness probe (no key needed)."""
        return Alive()

    @route("GET", "/info", response=ServerInfo)
    async def server_info(request: Request) -> ServerInfo:
        """Uptime, idle time, sessions, and CPU/memory of the server and the sandbox."""
        sessions = rt.shells.list()
        return ServerInfo(
            version=_version(),
            pid=os.getpid(),
            uid=os.getuid(),
            work_dir=rt.settings.work_dir,
            uptime_s=round(rt.clock.uptime_s, 3),
            idle_s=round(rt.clock.idle_s, 3),
            sessions=len(sessions),
            busy_sessions=sum(s.busy for s in sessions),
            background_running=rt.background.running,
            kernel_running=rt.kernel.running,
            server=info_mod.server_usage(),
            sandbox=await asyncio.to_thread(info_mod.sandbox_usage),
        )

    # ------------------------------------------------------------------ shell sessions

    @route("GET", "/sessions", response=SessionList)
    async def list_sessions(request: Request) -> SessionList:
        """List shell sessions."""
        return SessionList(sessions=rt.shells.list())

    @route("POST", "/sessions", body=SessionCreate, response=SessionInfo)
    async def create_session(request: Request, body: SessionCreate) -> SessionInfo:
        """Create a named persistent bash session."""
        return rt.shells.create(body)

    @route("DELETE", "/sessions/{name}", response=SessionInfo)
    async def close_session(request: Request) -> SessionInfo:
        """Close a session, killing every process it started."""
        name = request.path_params["name"]
        info = rt.shells.get(name).info()
        rt.shells.close(name)
        return info

    @route("POST", "/sessions/{name}/run", body=RunCommand, response=CommandResult)
    async def run_command(request: Request, body: RunCommand) -> CommandResult:
        """Run a command in a session and return its result."""
        return await rt.shells.get(request.path_params["name"]).run(body)

    @route("POST", "/sessions/{name}/stream", body=RunCommand, content_type="text/event-stream")
    async def stream_command(request: Request, body: RunCommand) -> Response:
        """Run a command, streaming its output as server-sent events (OutputChunk..., then StreamEnd)."""
        events = await rt.shells.get(request.path_params["name"]).stream(body)

        async def sse() -> AsyncIterator[bytes]:
            async for event in events:
                yield b"data: " + event.model_dump_json().encode() + b"\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @route("POST", "/sessions/{name}/output", body=ReadOutput, response=CommandResult)
    async def read_output(request: Request, body: ReadOutput) -> CommandResult:
        """Wait for more output of the running command."""
        return await rt.shells.get(request.path_params["name"]).read_output(body)

    @route("POST", "/sessions/{name}/input", body=SendInput, response=CommandResult)
    async def send_input(request: Request, body: SendInput) -> CommandResult:
        """Type text into the running command's terminal."""
        return await rt.shells.get(request.path_params["name"]).send_input(body)

    @route("POST", "/sessions/{name}/keys", body=SendKeys, response=CommandResult)
    async def send_keys(request: Request, body: SendKeys) -> CommandResult:
        """Press keys (C-c, C-d, C-z, ...) in the running command's terminal."""
        return await rt.shells.get(request.path_params["name"]).send_keys(body)

    @route("POST", "/sessions/{name}/interrupt", response=CommandResult)
    async def interrupt(request: Request) -> CommandResult:
        """Stop the running command: SIGINT, then SIGKILL, then a shell restart."""
        return await rt.shells.get(request.path_params["name"]).interrupt()

    @route("GET", "/commands/{command_id}/output", content_type="application/octet-stream")
    async def command_output(request: Request) -> Response:
        """The full raw output of a recent command."""
        cmd = rt.shells.command(request.path_params["command_id"])
        chunks = cmd.spool.chunks(_CHUNK)
        if not cmd.spool.on_disk:
            return Response(b"".join(chunks), media_type="application/octet-stream")
        return StreamingResponse(iterate_in_thread(chunks), media_type="application/octet-stream")

    # ------------------------------------------------------------------ background commands

    @route("POST", "/background", body=BackgroundStart, response=BackgroundInfo)
    async def start_background(request: Request, body: BackgroundStart) -> BackgroundInfo:
        """Start a detached command."""
        cwd = await asyncio.to_thread(rt.directory, body.cwd, body.session)
        return rt.background.start(body.command, cwd, body.env)

    @route("GET", "/background", response=BackgroundList)
    async def list_background(request: Request) -> BackgroundList:
        """List background commands."""
        return BackgroundList(commands=rt.background.list())

    @route("GET", "/background/{bg_id}", response=BackgroundInfo)
    async def get_background(request: Request) -> BackgroundInfo:
        """Describe a background command."""
        return rt.background.get(request.path_params["bg_id"]).info()

    @route("GET", "/background/{bg_id}/output", query=BackgroundOutputQuery, response=BackgroundOutput)
    async def background_output(request: Request, query: BackgroundOutputQuery) -> BackgroundOutput:
        """Read a background command's output from a byte offset."""
        return await asyncio.to_thread(rt.background.read, request.path_params["bg_id"], query)

    @route("DELETE", "/background/{bg_id}", response=BackgroundInfo)
    async def kill_background(request: Request) -> BackgroundInfo:
        """Kill a background command and everything it started, and forget it (its output is deleted)."""
        return await rt.background.remove(request.path_params["bg_id"])

    # ------------------------------------------------------------------ files

    @route("POST", "/files/read", body=ReadFile, response=FileContent)
    async def read_file(request: Request, body: ReadFile) -> FileContent:
        """Read a file (text with optional line range, or base64)."""
        return await fsio.run(rt.files.read, rt.path(body.path, body.session), body)

    @route("POST", "/files/write", body=WriteFile, response=FileWritten)
    async def write_file(request: Request, body: WriteFile) -> FileWritten:
        """Write a file atomically, creating parent directories."""
        return await fsio.run(rt.files.write, rt.path(body.path, body.session), body)

    @route("POST", "/files/list", body=ListDir, response=DirListing)
    async def list_dir(request: Request, body: ListDir) -> DirListing:
        """List a directory."""
        return await fsio.run(rt.files.list_dir, rt.path(body.path, body.session), body.include_hidden)

    edit_handlers = _edit_handlers(rt)

    @route("POST", "/files/edit", body=EditOp, response=EditResult)
    async def edit_file(request: Request, body: Any) -> EditResult:
        """Editor operation: view, create, str_replace, insert or undo_edit."""
        handler = edit_handlers[type(body)]
        return await fsio.run(handler, rt.path(body.path, body.session), body)

    @route("GET", "/files/raw", query=RawFileQuery, content_type="application/octet-stream")
    async def read_raw(request: Request, query: RawFileQuery) -> Response:
        """The exact bytes of a regular file, streamed."""
        path = rt.path(query.path, query.session)
        fd = await fsio.run(rt.files.open_reader, path)
        return _stream_file(fd, path)

    @route("PUT", "/files/raw", query=RawWriteQuery, response=FileWritten, raw_body=True)
    async def write_raw(request: Request, query: RawWriteQuery) -> FileWritten:
        """Write the request body (raw bytes, streamed) as a file's content atomically, or append it."""
        path = rt.path(query.path, query.session)
        size = await _receive_file(rt, path, request, mode=query.mode, append=query.append)
        return FileWritten(path=path, size=size)

    @route("PUT", "/files/upload", query=TransferQuery, response=UploadResult, raw_body=True)
    async def upload(request: Request, query: TransferQuery) -> UploadResult:
        """Upload one file (raw bytes) or a tree (an uncompressed or gzipped tar stream)."""
        path = rt.path(query.path, query.session)
        if query.format != "tar":
            size = await _receive_file(rt, path, request, mode=None, append=False)
            return UploadResult(path=path, bytes=size, files=1)
        reader = cast(IO[bytes], IterReader(iterate_from_thread(request.stream(), asyncio.get_running_loop())))
        # Its own thread: it waits on the client between chunks and must not hold a pool worker meanwhile.
        return await _in_own_thread(rt.files.receive_tree, path, reader)

    @route("GET", "/files/download", query=TransferQuery, content_type="application/octet-stream")
    async def download(request: Request, query: TransferQuery) -> Response:
        """Download one file (raw bytes) or a tree (an uncompressed tar stream)."""
        path = rt.path(query.path, query.session)
        is_dir = await fsio.run(rt.files.is_dir, path)
        if query.format == "file" or (query.format == "auto" and not is_dir):
            fd = await fsio.run(rt.files.open_reader, path)
            return _stream_file(fd, path, headers={FORMAT_HEADER: "file"})
        return StreamingResponse(_tar_stream(rt, path), media_type="application/x-tar", headers={FORMAT_HEADER: "tar"})

    # ------------------------------------------------------------------ python

    @route("POST", "/python/run", body=RunPython, response=PythonResult)
    async def run_python(request: Request, body: RunPython) -> PythonResult:
        """Run code in the stateful Jupyter kernel (started on first use)."""
        return await rt.kernel.run(body.code, body.timeout)

    @route("POST", "/python/restart", response=KernelStatus)
    async def restart_python(request: Request) -> KernelStatus:
        """Restart the kernel, losing its state."""
        return await rt.kernel.restart()

    @route("GET", "/python", response=KernelStatus)
    async def python_status(request: Request) -> KernelStatus:
        """Whether the kernel runs."""
        return rt.kernel.status()

    return api


def _stream_file(fd: int, path: str, headers: dict[str, str] | None = None) -> Response:
    """Stream the open file ``fd`` chunk by chunk, without a Content-Length.

    No length is announced: ``st_size`` lies for ``/proc`` files (0) and changes under a growing file, and
    a wrong Content-Length breaks the response. Chunked transfer sends exactly the bytes read.
    """
    f = open(fd, "rb", buffering=0)  # noqa: SIM115 - closed by the stream (or its finaliser, on disconnect)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while chunk := await fsio.run(_read_chunk, f, path):
                yield chunk
        finally:
            await fsio.run(f.close)

    return StreamingResponse(chunks(), media_type="application/octet-stream", headers=headers)


def _read_chunk(f: IO[bytes], path: str) -> bytes:
    with fsio.translate(path):
        return f.read(_CHUNK) or b""


async def _receive_file(rt: Runtime, path: str, request: Request, *, mode: int | None, append: bool) -> int:
    """Stream the request body into a new version of ``path`` (atomic; see fsio); its size afterwards.

    The body is read on the event loop and written on the pool one batch (about a chunk) at a time, so a
    transfer holds about one chunk in memory and no thread waits on the client.
    """
    writer = await fsio.run(rt.files.open_writer, path, mode, append)
    try:
        batch: list[bytes] = []
        pending = 0
        async for chunk in request.stream():
            batch.append(chunk)
            pending += len(chunk)
            if pending >= _CHUNK:
                await fsio.run(writer.write, b"".join(batch))
                batch, pending = [], 0
        if batch:
            await fsio.run(writer.write, b"".join(batch))
        return await fsio.run(writer.commit)
    finally:
        await fsio.run(writer.abort)


async def _in_own_thread(fn: Callable[..., T], *args: object) -> T:
    """Run the blocking ``fn(*args)`` on a thread of its own (for work that waits on the client)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(cast(T, result))

    def target() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=target, name="agentbox-upload", daemon=True).start()
    return await future


async def _tar_stream(rt: Runtime, path: str) -> AsyncIterator[bytes]:
    """A tar of ``path`` made in a worker thread and handed over through a small bounded queue."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=4)
    cancelled = False

    def sink(data: bytes) -> None:
        if cancelled:
            raise BrokenPipeError("download cancelled")
        asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()

    def produce() -> None:
        try:
            rt.files.send_tree(path, sink)
        finally:
            if not cancelled:
                asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

    # Its own thread: it waits on the client (the queue) and must not hold a pool worker meanwhile.
    task = asyncio.ensure_future(_in_own_thread(produce))
    try:
        while (chunk := await queue.get()) is not None:
            yield chunk
        await task
    finally:
        cancelled = True
        while not queue.empty():  # unblock a producer waiting on a full queue
            queue.get_nowait()
        with contextlib.suppress(BrokenPipeError, RuntimeServerError):
            await task


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agentbox")
    except PackageNotFoundError:
        return "unknown"


# What the first command of a new sandbox would otherwise build for itself (~10 ms of pydantic schema
# building on an idle machine, several times that on a loaded one): ``run`` and ``stream`` bodies and
# answers, and the events a stream sends.
_FIRST_COMMAND_PATHS = ("/sessions/{name}/run", "/sessions/{name}/stream")
_FIRST_COMMAND_MODELS = (OutputChunk, StreamEnd, ErrorBody)


def warm_up(app: Starlette) -> None:
    """Pay now, while nobody waits, what the first command would pay once: call it once the server
    answers (it does not make the server ready sooner, only its first answers faster)."""
    router: TypedRouter = app.state.router
    router.warm_up(*_FIRST_COMMAND_PATHS)
    for model in _FIRST_COMMAND_MODELS:
        if not model.__pydantic_complete__:
            model.model_rebuild()


def create_app(settings: ServerSettings) -> Starlette:
    """The runtime server ASGI app for ``settings``; services start in its lifespan."""
    rt = Runtime(settings)
    api = build_router(rt, settings.max_body_bytes)
    openapi_cache: list[bytes] = []

    async def openapi(request: Request) -> Response:
        if not openapi_cache:
            doc = api.openapi(title="agentbox runtime server", version=_version(), error_model=ErrorBody)
            openapi_cache.append(json.dumps(doc).encode())
        return Response(openapi_cache[0], media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        rt.start()
        try:
            yield
        finally:
            await rt.close()

    openapi_route = Route("/openapi.json", openapi, methods=["GET"])
    openapi_route.methods = {"GET"}  # no implicit HEAD: the API declares none
    app = _BoundedApp(
        routes=[*api.routes(), *portfwd.routes(), openapi_route,
                WebSocketRoute(PTY_PATH, PtyEndpoint(settings, rt.reaper).serve)],
        exception_handlers={
            Exception: _on_server_error,
            HTTPException: _on_server_error,
            RuntimeServerError: _on_server_error,
        },
        lifespan=lifespan,
    )
    app.state.runtime = rt
    app.state.router = api
    app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key, on_authenticated=rt.clock.touch)
    return app


class _BoundedApp(Starlette):
    """Starlette whose ``__call__`` is the last error boundary: what escapes the app is logged, not raised.

    Starlette's ServerErrorMiddleware sends the 500 answer, then re-raises so the server can log it; but
    uvicorn, seeing an exception from an app whose response already started, closes the connection. The
    client's next request on that keep-alive connection, unrelated to the failure, then dies with "Server
    disconnected". Here the exception ends: logged with its traceback once, the connection kept. A
    response that did not complete is still cut by uvicorn, which is right (the client must not wait for
    the rest of a body that will never come).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI scope."""
        try:
            await super().__call__(scope, receive, send)
        except Exception:
            if scope["type"] != "http":
                raise
            _log.exception("error in %s %s", scope.get("method"), scope.get("path"))
