"""Typed HTTP client for one agentbox runtime server: :class:`RuntimeClient` (sync), :class:`AsyncRuntimeClient`.

One implementation, two thin I/O shells (httpx's own pattern): every action is described once by a pure
builder that returns a :class:`_Call` (method, path, body, expected wire type), and answers are parsed
once by :func:`_parse`. The sync and async classes only send calls; each public method is a one-line
delegation to the shared builder. Server errors raise the exceptions of :mod:`agentbox.errors` through
``error_from_wire``; httpx transport errors are translated in :func:`_translate_transport` only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import enum
import functools
import operator
import os
import queue
import socket
import tarfile
import threading
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import IO, Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from agentbox.errors import (
    BadRequestError,
    RuntimeServerError,
    SandboxError,
    ServerTimeoutError,
    error_from_wire,
)
from agentbox.protocol import (
    API_KEY_HEADER,
    FORMAT_HEADER,
    Alive,
    BackgroundInfo,
    BackgroundList,
    BackgroundOutput,
    BackgroundStart,
    CommandResult,
    CreateOp,
    DirListing,
    EditResult,
    ErrorBody,
    FileContent,
    FileWritten,
    InsertOp,
    KernelStatus,
    ListDir,
    OutputChunk,
    PythonResult,
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
    StreamEvent,
    StrReplaceOp,
    UndoEditOp,
    UploadResult,
    ViewOp,
    WriteFile,
)

__all__ = ["AsyncRuntimeClient", "ClientState", "RuntimeClient"]

T = TypeVar("T")
_CHUNK = 1 << 20
# Margin on top of a command's own time limits before the HTTP read gives up (the server needs up to
# two kill grace periods after a hard timeout, plus transfer time).
_LONG_CALL_MARGIN_S = 30.0


class ClientState(enum.Enum):
    """Lifecycle of a client: usable until closed."""

    OPEN = "open"
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True)
class _Call:
    """One API request, described without doing I/O."""

    method: str
    path: str
    result: Any = None  # wire type of the answer; None: raw bytes
    body: BaseModel | None = None
    params: Mapping[str, str] | None = None
    long: bool = False  # may legitimately run for long: no read timeout unless read_timeout says
    read_timeout: float | None = None
    finish: Callable[[Any], Any] | None = None  # turns the parsed answer into what the method returns

    def content(self) -> bytes | None:
        """The JSON body."""
        return None if self.body is None else self.body.model_dump_json(exclude_unset=True).encode()

    def timeout(self, default: float | None) -> httpx.Timeout:
        """The httpx timeout for this call."""
        if self.long:
            return httpx.Timeout(default, read=self.read_timeout)
        return httpx.Timeout(default)

    def httpx_args(self, default_timeout: float | None, content: Any = None) -> dict[str, Any]:
        """Keyword arguments of httpx's ``request``/``stream`` (``content``: a streamed body instead of JSON)."""
        return {
            "method": self.method,
            "url": self.path,
            "content": self.content() if content is None else content,
            "params": self.params,
            "timeout": self.timeout(default_timeout),
        }


@functools.cache
def _adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def _parse(call: _Call, status: int, content: bytes) -> Any:
    """The answer of ``call`` as the method returns it, or the server's error raised as an agentbox exception."""
    if status >= 400:
        raise _error_from_response(status, content)
    value = content if call.result is None else _validate(call, content)
    return value if call.finish is None else call.finish(value)


def _validate(call: _Call, content: bytes) -> Any:
    try:
        return _adapter(call.result).validate_json(content)
    except ValidationError as exc:
        raise RuntimeServerError(
            f"the runtime server answered {call.method} {call.path} with an unexpected body "
            f"(is it a different agentbox version?): {exc.error_count()} validation errors"
        ) from exc


def _error_from_response(status: int, content: bytes) -> RuntimeServerError:
    try:
        body = ErrorBody.model_validate_json(content)
    except ValidationError:
        text = content[:200].decode(errors="replace")
        return RuntimeServerError(f"HTTP {status} from the runtime server: {text}", code="internal")
    return error_from_wire(body.code, body.message)


def _translate_transport(exc: httpx.HTTPError, base_url: str) -> Exception:
    """The agentbox exception for an httpx error (the one place transport errors are translated)."""
    if isinstance(exc, httpx.TimeoutException):
        return ServerTimeoutError(
            f"no answer from the runtime server at {base_url} in time ({type(exc).__name__}); "
            "pass a larger timeout, or a command timeout so the server returns first"
        )
    if isinstance(exc, httpx.ConnectError):
        return SandboxError(f"cannot connect to the runtime server at {base_url}: {exc}; is the sandbox running?")
    return SandboxError(f"lost the connection to the runtime server at {base_url}: {type(exc).__name__}: {exc}")


class _SseParser:
    """Turns server-sent event lines into stream events."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> OutputChunk | StreamEnd | None:
        """Take one line; return an event when a blank line completes one."""
        if line.startswith("data:"):
            self._data.append(line[5:].lstrip(" "))
            return None
        if line == "" and self._data:
            data, self._data = "\n".join(self._data), []
            event: OutputChunk | StreamEnd = _adapter(StreamEvent).validate_json(data)
            return event
        return None


# ------------------------------------------------------------------------------ the shared builders


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _decode(raw: bytes) -> str:
    return raw.decode(errors="replace")


class _Calls:
    """The pure request builders of every action (shared by both clients)."""

    # ---------------------------------------------------------------- health
    @staticmethod
    def alive() -> _Call:
        return _Call("GET", "/alive", Alive)

    @staticmethod
    def info() -> _Call:
        return _Call("GET", "/info", ServerInfo)

    # ---------------------------------------------------------------- shell
    @staticmethod
    def run(
        command: str,
        session: str,
        timeout: float | None,
        no_output_timeout: float | None,
        max_output_chars: int | None,
        stream: bool = False,
    ) -> _Call:
        body = _body(
            RunCommand,
            command=command,
            **_optional(timeout=timeout, no_output_timeout=no_output_timeout, max_output_chars=max_output_chars),
        )
        # With a hard timeout the server answers within it (plus kill grace); without one a call may
        # legitimately last as long as the command does.
        read = None if timeout is None else timeout + _LONG_CALL_MARGIN_S
        action = "stream" if stream else "run"
        return _Call("POST", f"/sessions/{_q(session)}/{action}", CommandResult, body, long=True, read_timeout=read)

    @staticmethod
    def wait_call(action: str, session: str, body: ReadOutput) -> _Call:
        read = (body.timeout or 0) + _LONG_CALL_MARGIN_S if body.timeout is not None else None
        return _Call("POST", f"/sessions/{_q(session)}/{action}", CommandResult, body, long=True, read_timeout=read)

    @staticmethod
    def read_output(session: str, timeout: float | None, no_output_timeout: float | None) -> _Call:
        return _Calls.wait_call(
            "output", session, _body(ReadOutput, timeout=timeout, no_output_timeout=no_output_timeout)
        )

    @staticmethod
    def send_input(text: str, session: str, timeout: float | None, no_output_timeout: float | None) -> _Call:
        body = _body(SendInput, text=text, timeout=timeout, no_output_timeout=no_output_timeout)
        return _Calls.wait_call("input", session, body)

    @staticmethod
    def send_keys(keys: Iterable[str], session: str, timeout: float | None, no_output_timeout: float | None) -> _Call:
        body = _body(SendKeys, keys=list(keys), timeout=timeout, no_output_timeout=no_output_timeout)
        return _Calls.wait_call("keys", session, body)

    @staticmethod
    def interrupt(session: str) -> _Call:
        return _Call(
            "POST", f"/sessions/{_q(session)}/interrupt", CommandResult, long=True, read_timeout=_LONG_CALL_MARGIN_S * 2
        )

    @staticmethod
    def command_output(command_id: str) -> _Call:
        return _Call("GET", f"/commands/{_q(command_id)}/output", long=True, finish=_decode)

    @staticmethod
    def create_session(name: str, cwd: str | None, env: Mapping[str, str] | None) -> _Call:
        return _Call("POST", "/sessions", SessionInfo, _body(SessionCreate, name=name, **_cwd_env(cwd, env)))

    @staticmethod
    def close_session(name: str) -> _Call:
        return _Call("DELETE", f"/sessions/{_q(name)}", SessionInfo)

    @staticmethod
    def list_sessions() -> _Call:
        return _Call("GET", "/sessions", SessionList, finish=operator.attrgetter("sessions"))

    # ---------------------------------------------------------------- background
    @staticmethod
    def start_background(command: str, cwd: str | None, env: Mapping[str, str] | None, session: str) -> _Call:
        body = _body(BackgroundStart, command=command, session=session, **_cwd_env(cwd, env))
        return _Call("POST", "/background", BackgroundInfo, body)

    @staticmethod
    def list_background() -> _Call:
        return _Call("GET", "/background", BackgroundList, finish=operator.attrgetter("commands"))

    @staticmethod
    def background_info(bg_id: str) -> _Call:
        return _Call("GET", f"/background/{_q(bg_id)}", BackgroundInfo)

    @staticmethod
    def read_background(bg_id: str, offset: int, max_bytes: int) -> _Call:
        params = {"offset": str(offset), "max_bytes": str(max_bytes)}
        return _Call("GET", f"/background/{_q(bg_id)}/output", BackgroundOutput, params=params)

    @staticmethod
    def kill_background(bg_id: str) -> _Call:
        return _Call("DELETE", f"/background/{_q(bg_id)}", BackgroundInfo)

    # ---------------------------------------------------------------- files
    @staticmethod
    def read_file(path: str, start_line: int | None, end_line: int | None, binary: bool, session: str) -> _Call:
        body = _body(
            ReadFile,
            path=path,
            session=session,
            encoding="base64" if binary else "text",
            **_optional(start_line=start_line, end_line=end_line),
        )
        return _Call("POST", "/files/read", FileContent, body)

    @staticmethod
    def write_file(path: str, content: str | bytes, append: bool, mode: int | None, session: str) -> _Call:
        encoded: dict[str, Any] = (
            {"content": base64.b64encode(content).decode(), "encoding": "base64"}
            if isinstance(content, bytes)
            else {"content": content}
        )
        body = _body(WriteFile, path=path, **encoded, append=append, mode=mode, session=session)
        return _Call("POST", "/files/write", FileWritten, body)

    @staticmethod
    def list_dir(path: str, include_hidden: bool, session: str) -> _Call:
        body = _body(ListDir, path=path, include_hidden=include_hidden, session=session)
        return _Call("POST", "/files/list", DirListing, body)

    @staticmethod
    def edit(op: BaseModel) -> _Call:
        return _Call("POST", "/files/edit", EditResult, op, finish=operator.attrgetter("output"))

    @staticmethod
    def view(path: str, view_range: tuple[int, int] | None, session: str) -> _Call:
        return _Calls.edit(_body(ViewOp, command="view", path=path, view_range=view_range, session=session))

    @staticmethod
    def create(path: str, file_text: str, session: str) -> _Call:
        return _Calls.edit(_body(CreateOp, command="create", path=path, file_text=file_text, session=session))

    @staticmethod
    def str_replace(path: str, old_str: str, new_str: str, session: str) -> _Call:
        return _Calls.edit(
            _body(StrReplaceOp, command="str_replace", path=path, old_str=old_str, new_str=new_str, session=session)
        )

    @staticmethod
    def insert(path: str, insert_line: int, new_str: str, session: str) -> _Call:
        return _Calls.edit(
            _body(InsertOp, command="insert", path=path, insert_line=insert_line, new_str=new_str, session=session)
        )

    @staticmethod
    def undo_edit(path: str, session: str) -> _Call:
        return _Calls.edit(_body(UndoEditOp, command="undo_edit", path=path, session=session))

    @staticmethod
    def upload(remote_path: str, session: str, tree: bool) -> _Call:
        params = {"path": remote_path, "session": session, "format": "tar" if tree else "file"}
        return _Call("PUT", "/files/upload", UploadResult, params=params, long=True)

    @staticmethod
    def download(remote_path: str, session: str) -> _Call:
        params = {"path": remote_path, "session": session, "format": "auto"}
        return _Call("GET", "/files/download", params=params, long=True)  # no read timeout: any size

    # ---------------------------------------------------------------- python
    @staticmethod
    def run_python(code: str, timeout: float | None) -> _Call:
        return _Call(
            "POST",
            "/python/run",
            PythonResult,
            _body(RunPython, code=code, timeout=timeout),
            long=True,
            read_timeout=None if timeout is None else timeout + _LONG_CALL_MARGIN_S,
        )

    @staticmethod
    def restart_python() -> _Call:
        return _Call("POST", "/python/restart", KernelStatus, long=True, read_timeout=120.0)

    @staticmethod
    def python_status() -> _Call:
        return _Call("GET", "/python", KernelStatus)


M = TypeVar("M", bound=BaseModel)


def _body(model: type[M], **fields: Any) -> M:
    """A request body, with invalid arguments raised as BadRequestError before anything is sent."""
    try:
        return model(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise BadRequestError(f"invalid arguments for {model.__name__}: {problems}") from None


def _optional(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _cwd_env(cwd: str | None, env: Mapping[str, str] | None) -> dict[str, Any]:
    return _optional(cwd=cwd, env=dict(env) if env else None)


def _ensure_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


class _TarProducer:
    """Writes a tar of a local path in a thread into a small bounded queue (constant memory)."""

    def __init__(self, local_path: str) -> None:
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=4)
        self._thread = threading.Thread(target=self._produce, args=(local_path,), daemon=True)
        self._thread.start()

    def _produce(self, local_path: str) -> None:
        try:
            with tarfile.open(fileobj=self, mode="w|", bufsize=_CHUNK) as tar:  # type: ignore[call-overload]
                tar.add(local_path, arcname=".")
            self._queue.put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._queue.put(exc)

    def write(self, data: bytes) -> int:
        """tarfile's sink."""
        self._queue.put(bytes(data))
        return len(data)

    def next_chunk(self) -> bytes | None:
        """The next chunk, None at the end (blocking)."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def __iter__(self) -> Iterator[bytes]:
        while (chunk := self.next_chunk()) is not None:
            yield chunk


def _extract_tar(source: IO[bytes], dest: str) -> None:
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(fileobj=source, mode="r|*") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover - Python without the tarfile filters backport
            tar.extractall(dest)


class _IterReader:
    """A blocking file-like ``read`` over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = bytearray()

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes; b"" at the end."""
        while size < 0 or len(self._buf) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buf += chunk
        n = len(self._buf) if size < 0 else min(size, len(self._buf))
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data


def _async_chunks_in_thread(chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> Iterator[bytes]:
    """A blocking iterator (for a worker thread) over an async iterator running on ``loop``."""

    async def next_chunk() -> bytes | None:
        try:
            return await chunks.__anext__()
        except StopAsyncIteration:
            return None

    while (chunk := asyncio.run_coroutine_threadsafe(next_chunk(), loop).result()) is not None:
        yield chunk


class _BaseClient:
    """State and configuration shared by both clients (no I/O)."""

    def __init__(
        self, base_url: str, api_key: str, *, timeout: float | None = 60.0, uds: str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.uds = uds
        self.state = ClientState.OPEN
        self._headers = {API_KEY_HEADER: api_key}
        self._limits = httpx.Limits(max_keepalive_connections=8, keepalive_expiry=60.0)

    @property
    def _where(self) -> str:
        """The server's address for error messages (over a Unix socket the URL's host means nothing)."""
        return f"unix:{self.uds}" if self.uds is not None else self.base_url

    def _transport_args(self) -> dict[str, Any]:
        """Keyword arguments of the httpx transport: a Unix socket, or TCP without Nagle."""
        if self.uds is not None:
            # A Unix stream socket has no Nagle algorithm (and rejects TCP options): only the path.
            return {"limits": self._limits, "uds": self.uds}
        # httpcore writes a request's headers and body separately; with Nagle on, the body waits for the
        # server's delayed ACK (~40 ms per call). Every call is latency-bound, so send immediately.
        return {"limits": self._limits, "socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]}

    def _check_open(self) -> None:
        if self.state is ClientState.CLOSED:
            raise SandboxError("this runtime client is closed; create a new one")


class RuntimeClient(_BaseClient):
    """Synchronous client of one runtime server (keeps one keep-alive connection pool)."""

    def __init__(
        self, base_url: str, api_key: str, *, timeout: float | None = 60.0, uds: str | None = None
    ) -> None:
        """``base_url``: the server's URL (with ``uds``, any http URL: only its path part matters);
        ``uds``: the path of the Unix domain socket the server listens on, instead of TCP."""
        super().__init__(base_url, api_key, timeout=timeout, uds=uds)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=self._headers,
            timeout=timeout,
            transport=httpx.HTTPTransport(**self._transport_args()),
        )

    def __enter__(self) -> RuntimeClient:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.state = ClientState.CLOSED
        self._http.close()

    @contextlib.contextmanager
    def _transport(self) -> Iterator[None]:
        self._check_open()
        try:
            yield
        except httpx.HTTPError as exc:
            raise _translate_transport(exc, self._where) from exc

    def _send(self, call: _Call, content: Any = None) -> Any:
        with self._transport():
            resp = self._http.request(**call.httpx_args(self.timeout, content))
        return _parse(call, resp.status_code, resp.content)

    # ---------------------------------------------------------------- health
    def alive(self) -> Alive:
        """Liveness probe."""
        return self._send(_Calls.alive())

    def info(self) -> ServerInfo:
        """Uptime, idle time, sessions, resource use."""
        return self._send(_Calls.info())

    # ---------------------------------------------------------------- shell
    def run(
        self,
        command: str,
        *,
        session: str = "default",
        timeout: float | None = None,
        no_output_timeout: float | None = None,
        max_output_chars: int | None = None,
    ) -> CommandResult:
        """Run ``command`` in a shell session and return its result."""
        return self._send(_Calls.run(command, session, timeout, no_output_timeout, max_output_chars))

    def stream(
        self,
        command: str,
        *,
        session: str = "default",
        timeout: float | None = None,
        no_output_timeout: float | None = None,
    ) -> Iterator[OutputChunk | StreamEnd]:
        """Run ``command``, yielding output chunks as produced, then the result (a StreamEnd)."""
        call = _Calls.run(command, session, timeout, no_output_timeout, None, stream=True)
        with self._transport(), self._http.stream(**call.httpx_args(self.timeout)) as resp:
            if resp.status_code >= 400:
                raise _error_from_response(resp.status_code, resp.read())
            parser = _SseParser()
            for line in resp.iter_lines():
                event = parser.feed(line)
                if event is not None:
                    yield event

    def read_output(
        self, *, session: str = "default", timeout: float | None = 10.0, no_output_timeout: float | None = 1.0
    ) -> CommandResult:
        """Wait for more output of the running command (after a no-output timeout)."""
        return self._send(_Calls.read_output(session, timeout, no_output_timeout))

    def send_input(
        self,
        text: str,
        *,
        session: str = "default",
        timeout: float | None = 10.0,
        no_output_timeout: float | None = 1.0,
    ) -> CommandResult:
        """Type ``text`` into the running command's terminal, then wait like read_output."""
        return self._send(_Calls.send_input(text, session, timeout, no_output_timeout))

    def send_keys(
        self,
        keys: Iterable[str],
        *,
        session: str = "default",
        timeout: float | None = 10.0,
        no_output_timeout: float | None = 1.0,
    ) -> CommandResult:
        """Press keys ('C-c', 'C-d', 'C-z', 'Enter', ...) in the running command's terminal."""
        return self._send(_Calls.send_keys(keys, session, timeout, no_output_timeout))

    def interrupt(self, *, session: str = "default") -> CommandResult:
        """Stop the running command (SIGINT, then SIGKILL, then a shell restart)."""
        return self._send(_Calls.interrupt(session))

    def command_output(self, command_id: str) -> str:
        """The full output of a recent command (also when its result was truncated)."""
        return self._send(_Calls.command_output(command_id))

    def create_session(self, name: str, *, cwd: str | None = None, env: Mapping[str, str] | None = None) -> SessionInfo:
        """Create a named shell session."""
        return self._send(_Calls.create_session(name, cwd, env))

    def close_session(self, name: str) -> SessionInfo:
        """Close a session and kill its processes."""
        return self._send(_Calls.close_session(name))

    def list_sessions(self) -> list[SessionInfo]:
        """All shell sessions."""
        return self._send(_Calls.list_sessions())

    # ---------------------------------------------------------------- background
    def start_background(
        self, command: str, *, cwd: str | None = None, env: Mapping[str, str] | None = None, session: str = "default"
    ) -> BackgroundInfo:
        """Start a detached command."""
        return self._send(_Calls.start_background(command, cwd, env, session))

    def list_background(self) -> list[BackgroundInfo]:
        """All background commands."""
        return self._send(_Calls.list_background())

    def background_info(self, bg_id: str) -> BackgroundInfo:
        """One background command."""
        return self._send(_Calls.background_info(bg_id))

    def read_background(self, bg_id: str, *, offset: int = 0, max_bytes: int = 1_000_000) -> BackgroundOutput:
        """Output of a background command from byte ``offset``."""
        return self._send(_Calls.read_background(bg_id, offset, max_bytes))

    def kill_background(self, bg_id: str) -> BackgroundInfo:
        """Kill a background command and everything it started."""
        return self._send(_Calls.kill_background(bg_id))

    # ---------------------------------------------------------------- files
    def read_file(
        self,
        path: str,
        *,
        start_line: int | None = None,
        end_line: int | None = None,
        binary: bool = False,
        session: str = "default",
    ) -> FileContent:
        """Read a text file (optionally lines start..end) or, with binary=True, its bytes as base64."""
        return self._send(_Calls.read_file(path, start_line, end_line, binary, session))

    def write_file(
        self,
        path: str,
        content: str | bytes,
        *,
        append: bool = False,
        mode: int | None = None,
        session: str = "default",
    ) -> FileWritten:
        """Write text or bytes to a file, creating parent directories."""
        return self._send(_Calls.write_file(path, content, append, mode, session))

    def list_dir(self, path: str = ".", *, include_hidden: bool = True, session: str = "default") -> DirListing:
        """List a directory."""
        return self._send(_Calls.list_dir(path, include_hidden, session))

    def view(self, path: str, *, view_range: tuple[int, int] | None = None, session: str = "default") -> str:
        """A file with line numbers, or a directory two levels deep."""
        return self._send(_Calls.view(path, view_range, session))

    def create(self, path: str, file_text: str, *, session: str = "default") -> str:
        """Create a new file (refuses to overwrite)."""
        return self._send(_Calls.create(path, file_text, session))

    def str_replace(self, path: str, old_str: str, new_str: str = "", *, session: str = "default") -> str:
        """Replace ``old_str`` (which must occur exactly once) by ``new_str``."""
        return self._send(_Calls.str_replace(path, old_str, new_str, session))

    def insert(self, path: str, insert_line: int, new_str: str, *, session: str = "default") -> str:
        """Insert ``new_str`` after line ``insert_line`` (0: at the top)."""
        return self._send(_Calls.insert(path, insert_line, new_str, session))

    def undo_edit(self, path: str, *, session: str = "default") -> str:
        """Undo the last edit of ``path``."""
        return self._send(_Calls.undo_edit(path, session))

    def upload(self, local_path: str | os.PathLike[str], remote_path: str, *, session: str = "default") -> UploadResult:
        """Upload a local file, or a local directory tree, to ``remote_path`` (streamed)."""
        local = os.fspath(local_path)
        tree = os.path.isdir(local)
        call = _Calls.upload(remote_path, session, tree)
        self._check_open()  # before opening the source (a closed client fails first)
        if tree:
            return self._send(call, _TarProducer(local))
        with open(local, "rb") as f:
            return self._send(call, _file_chunks(f))

    def download(self, remote_path: str, local_path: str | os.PathLike[str], *, session: str = "default") -> str:
        """Download a remote file to ``local_path``, or a remote directory into directory ``local_path``."""
        local = os.fspath(local_path)
        call = _Calls.download(remote_path, session)
        with self._transport(), self._http.stream(**call.httpx_args(self.timeout)) as resp:
            if resp.status_code >= 400:
                raise _error_from_response(resp.status_code, resp.read())
            chunks = resp.iter_bytes(_CHUNK)
            if resp.headers.get(FORMAT_HEADER) == "tar":
                _extract_tar(_IterReader(chunks), local)  # type: ignore[arg-type]
            else:
                _write_chunks(local, chunks)
        return local

    # ---------------------------------------------------------------- python
    def run_python(self, code: str, timeout: float | None = None) -> PythonResult:
        """Run code in the stateful Jupyter kernel."""
        return self._send(_Calls.run_python(code, timeout))

    def restart_python(self) -> KernelStatus:
        """Restart the kernel (its state is lost)."""
        return self._send(_Calls.restart_python())

    def python_status(self) -> KernelStatus:
        """Whether the kernel runs."""
        return self._send(_Calls.python_status())


class AsyncRuntimeClient(_BaseClient):
    """Asynchronous client of one runtime server; the same methods as RuntimeClient, awaitable."""

    def __init__(
        self, base_url: str, api_key: str, *, timeout: float | None = 60.0, uds: str | None = None
    ) -> None:
        """``base_url``: the server's URL (with ``uds``, any http URL: only its path part matters);
        ``uds``: the path of the Unix domain socket the server listens on, instead of TCP."""
        super().__init__(base_url, api_key, timeout=timeout, uds=uds)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            timeout=timeout,
            transport=httpx.AsyncHTTPTransport(**self._transport_args()),
        )

    async def __aenter__(self) -> AsyncRuntimeClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        self.state = ClientState.CLOSED
        await self._http.aclose()

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[None]:
        self._check_open()
        try:
            yield
        except httpx.HTTPError as exc:
            raise _translate_transport(exc, self._where) from exc

    async def _send(self, call: _Call, content: Any = None) -> Any:
        async with self._transport():
            resp = await self._http.request(**call.httpx_args(self.timeout, content))
        return _parse(call, resp.status_code, resp.content)

    # ---------------------------------------------------------------- health
    async def alive(self) -> Alive:
        """Liveness probe."""
        return await self._send(_Calls.alive())

    async def info(self) -> ServerInfo:
        """Uptime, idle time, sessions, resource use."""
        return await self._send(_Calls.info())

    # ---------------------------------------------------------------- shell
    async def run(
        self,
        command: str,
        *,
        session: str = "default",
        timeout: float | None = None,
        no_output_timeout: float | None = None,
        max_output_chars: int | None = None,
    ) -> CommandResult:
        """Run ``command`` in a shell session and return its result."""
        return await self._send(_Calls.run(command, session, timeout, no_output_timeout, max_output_chars))

    async def stream(
        self,
        command: str,
        *,
        session: str = "default",
        timeout: float | None = None,
        no_output_timeout: float | None = None,
    ) -> AsyncIterator[OutputChunk | StreamEnd]:
        """Run ``command``, yielding output chunks as produced, then the result (a StreamEnd)."""
        call = _Calls.run(command, session, timeout, no_output_timeout, None, stream=True)
        async with self._transport(), self._http.stream(**call.httpx_args(self.timeout)) as resp:
            if resp.status_code >= 400:
                raise _error_from_response(resp.status_code, await resp.aread())
            parser = _SseParser()
            async for line in resp.aiter_lines():
                event = parser.feed(line)
                if event is not None:
                    yield event

    async def read_output(
        self, *, session: str = "default", timeout: float | None = 10.0, no_output_timeout: float | None = 1.0
    ) -> CommandResult:
        """Wait for more output of the running command (after a no-output timeout)."""
        return await self._send(_Calls.read_output(session, timeout, no_output_timeout))

    async def send_input(
        self,
        text: str,
        *,
        session: str = "default",
        timeout: float | None = 10.0,
        no_output_timeout: float | None = 1.0,
    ) -> CommandResult:
        """Type ``text`` into the running command's terminal, then wait like read_output."""
        return await self._send(_Calls.send_input(text, session, timeout, no_output_timeout))

    async def send_keys(
        self,
        keys: Iterable[str],
        *,
        session: str = "default",
        timeout: float | None = 10.0,
        no_output_timeout: float | None = 1.0,
    ) -> CommandResult:
        """Press keys ('C-c', 'C-d', 'C-z', 'Enter', ...) in the running command's terminal."""
        return await self._send(_Calls.send_keys(keys, session, timeout, no_output_timeout))

    async def interrupt(self, *, session: str = "default") -> CommandResult:
        """Stop the running command (SIGINT, then SIGKILL, then a shell restart)."""
        return await self._send(_Calls.interrupt(session))

    async def command_output(self, command_id: str) -> str:
        """The full output of a recent command (also when its result was truncated)."""
        return await self._send(_Calls.command_output(command_id))

    async def create_session(
        self, name: str, *, cwd: str | None = None, env: Mapping[str, str] | None = None
    ) -> SessionInfo:
        """Create a named shell session."""
        return await self._send(_Calls.create_session(name, cwd, env))

    async def close_session(self, name: str) -> SessionInfo:
        """Close a session and kill its processes."""
        return await self._send(_Calls.close_session(name))

    async def list_sessions(self) -> list[SessionInfo]:
        """All shell sessions."""
        return await self._send(_Calls.list_sessions())

    # ---------------------------------------------------------------- background
    async def start_background(
        self, command: str, *, cwd: str | None = None, env: Mapping[str, str] | None = None, session: str = "default"
    ) -> BackgroundInfo:
        """Start a detached command."""
        return await self._send(_Calls.start_background(command, cwd, env, session))

    async def list_background(self) -> list[BackgroundInfo]:
        """All background commands."""
        return await self._send(_Calls.list_background())

    async def background_info(self, bg_id: str) -> BackgroundInfo:
        """One background command."""
        return await self._send(_Calls.background_info(bg_id))

    async def read_background(self, bg_id: str, *, offset: int = 0, max_bytes: int = 1_000_000) -> BackgroundOutput:
        """Output of a background command from byte ``offset``."""
        return await self._send(_Calls.read_background(bg_id, offset, max_bytes))

    async def kill_background(self, bg_id: str) -> BackgroundInfo:
        """Kill a background command and everything it started."""
        return await self._send(_Calls.kill_background(bg_id))

    # ---------------------------------------------------------------- files
    async def read_file(
        self,
        path: str,
        *,
        start_line: int | None = None,
        end_line: int | None = None,
        binary: bool = False,
        session: str = "default",
    ) -> FileContent:
        """Read a text file (optionally lines start..end) or, with binary=True, its bytes as base64."""
        return await self._send(_Calls.read_file(path, start_line, end_line, binary, session))

    async def write_file(
        self,
        path: str,
        content: str | bytes,
        *,
        append: bool = False,
        mode: int | None = None,
        session: str = "default",
    ) -> FileWritten:
        """Write text or bytes to a file, creating parent directories."""
        return await self._send(_Calls.write_file(path, content, append, mode, session))

    async def list_dir(self, path: str = ".", *, include_hidden: bool = True, session: str = "default") -> DirListing:
        """List a directory."""
        return await self._send(_Calls.list_dir(path, include_hidden, session))

    async def view(self, path: str, *, view_range: tuple[int, int] | None = None, session: str = "default") -> str:
        """A file with line numbers, or a directory two levels deep."""
        return await self._send(_Calls.view(path, view_range, session))

    async def create(self, path: str, file_text: str, *, session: str = "default") -> str:
        """Create a new file (refuses to overwrite)."""
        return await self._send(_Calls.create(path, file_text, session))

    async def str_replace(self, path: str, old_str: str, new_str: str = "", *, session: str = "default") -> str:
        """Replace ``old_str`` (which must occur exactly once) by ``new_str``."""
        return await self._send(_Calls.str_replace(path, old_str, new_str, session))

    async def insert(self, path: str, insert_line: int, new_str: str, *, session: str = "default") -> str:
        """Insert ``new_str`` after line ``insert_line`` (0: at the top)."""
        return await self._send(_Calls.insert(path, insert_line, new_str, session))

    async def undo_edit(self, path: str, *, session: str = "default") -> str:
        """Undo the last edit of ``path``."""
        return await self._send(_Calls.undo_edit(path, session))

    async def upload(
        self, local_path: str | os.PathLike[str], remote_path: str, *, session: str = "default"
    ) -> UploadResult:
        """Upload a local file, or a local directory tree, to ``remote_path`` (streamed)."""
        local = os.fspath(local_path)
        tree = os.path.isdir(local)
        call = _Calls.upload(remote_path, session, tree)
        if tree:
            producer = _TarProducer(local)
            source: Iterator[bytes] = iter(producer)
        else:
            source = _file_chunks(open(local, "rb"))  # noqa: SIM115 - closed by the generator

        async def chunks() -> AsyncIterator[bytes]:
            while (chunk := await asyncio.to_thread(next, source, None)) is not None:
                yield chunk

        return await self._send(call, chunks())

    async def download(self, remote_path: str, local_path: str | os.PathLike[str], *, session: str = "default") -> str:
        """Download a remote file to ``local_path``, or a remote directory into directory ``local_path``."""
        local = os.fspath(local_path)
        call = _Calls.download(remote_path, session)
        loop = asyncio.get_running_loop()
        async with self._transport(), self._http.stream(**call.httpx_args(self.timeout)) as resp:
            if resp.status_code >= 400:
                raise _error_from_response(resp.status_code, await resp.aread())
            chunks = _async_chunks_in_thread(resp.aiter_bytes(_CHUNK), loop)
            if resp.headers.get(FORMAT_HEADER) == "tar":
                await asyncio.to_thread(_extract_tar, _IterReader(chunks), local)  # type: ignore[arg-type]
            else:
                await asyncio.to_thread(_write_chunks, local, chunks)
        return local

    # ---------------------------------------------------------------- python
    async def run_python(self, code: str, timeout: float | None = None) -> PythonResult:
        """Run code in the stateful Jupyter kernel."""
        return await self._send(_Calls.run_python(code, timeout))

    async def restart_python(self) -> KernelStatus:
        """Restart the kernel (its state is lost)."""
        return await self._send(_Calls.restart_python())

    async def python_status(self) -> KernelStatus:
        """Whether the kernel runs."""
        return await self._send(_Calls.python_status())


def _file_chunks(f: IO[bytes]) -> Iterator[bytes]:
    with f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _write_chunks(local: str, chunks: Iterator[bytes]) -> None:
    _ensure_parent(local)
    tmp = f"{local}.part"
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, local)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
