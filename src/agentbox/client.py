"""Typed HTTP client for one agentbox runtime server: :class:`RuntimeClient` (sync), :class:`AsyncRuntimeClient`.

One implementation, two thin I/O shells (httpx's own pattern): every action is described once by a pure
builder that returns a :class:`_Call` ``[T]`` (method, path, body, and how to parse a 2xx answer into the
``T`` the method returns), so mypy checks every public return type against its builder. The sync and async
classes only send calls; each public method is a one-line delegation to the shared builder. Server errors
raise the exceptions of :mod:`agentbox.errors` through ``error_from_wire``; httpx transport errors are
translated in :func:`_translate_transport` only, chained to their cause.

File contents travel as raw HTTP bodies (``GET``/``PUT /files/raw``, ``/files/upload``, ``/files/download``),
never as base64 inside JSON (except through the JSON routes of an older server, which has no
``/files/raw``). Idempotent calls are sent again once when a kept-alive connection turns out to have been
closed by the server while idle (:class:`_ConnectionTrace`); strings that cannot be sent (lone surrogates)
are refused as ``BadRequestError`` before anything is sent. Streams are bridged by :mod:`agentbox._streams`.

A downloaded tree is extracted by :class:`_TreeExtractor`, which trusts nothing in the archive (the server
runs inside the sandbox, next to the agent): it is refused as :class:`UnsafeDownloadError` if any member
would land outside the destination, and only a fully checked tree is moved into place.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import enum
import functools
import os
import posixpath
import secrets
import shutil
import socket
import stat
import sys
import tarfile
import urllib.parse
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import IO, Any, Generic, Literal, TypeVar, cast

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from agentbox._streams import (
    CHUNK,
    FileChunks,
    IterReader,
    Sink,
    ThreadProducer,
    iterate_from_thread,
    iterate_in_thread,
)
from agentbox.errors import (
    AgentboxError,
    BadRequestError,
    FileOperationError,
    NotFoundError,
    RuntimeServerError,
    SandboxError,
    SandboxTimeoutError,
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

__all__ = ["AsyncRuntimeClient", "ClientState", "RuntimeClient", "UnsafeDownloadError"]

T = TypeVar("T")
S = TypeVar("S")
M = TypeVar("M", bound=BaseModel)
#: How a client authenticates: the runtime server's session key, or a control plane token (its proxy).
Auth = Literal["session-key", "bearer"]
# Margin on top of a command's own time limits before the HTTP read gives up (the server needs up to
# two kill grace periods after a hard timeout, plus transfer time).
_LONG_CALL_MARGIN_S = 30.0
#: A request body: JSON bytes, raw bytes, or chunks streamed from a file or a producer thread.
_Content = bytes | Iterable[bytes] | AsyncIterable[bytes] | None


class ClientState(enum.Enum):
    """Lifecycle of a client: usable until closed."""

    OPEN = "open"
    CLOSED = "closed"


class UnsafeDownloadError(FileOperationError):
    """A downloaded tree was refused: a member would land outside the destination (absolute or ``..`` names,
    symlinks or hard links pointing out, writing through a symlink) or is something agentbox never writes
    on the host (a device, a FIFO, a setuid or setgid file). Nothing of it is left on disk."""


# ------------------------------------------------------------------------------ one call, typed


@dataclasses.dataclass(frozen=True)
class _Call(Generic[T]):
    """One API request, described without doing I/O, and how its 2xx answer becomes a ``T``."""

    method: str
    path: str
    parse: Callable[[bytes], T]  # the 2xx body -> what the public method returns
    content: bytes | None = None  # the JSON body, serialized (and checked) when the call is built
    params: Mapping[str, str] | None = None
    long: bool = False  # may legitimately run for long: no read timeout unless read_timeout says
    read_timeout: float | None = None
    # Safe to send twice: retried once when a kept-alive connection turns out closed before any answer.
    idempotent: bool = False

    def result(self, status: int, content: bytes) -> T:
        """The answer as the method returns it, or the server's error raised as an agentbox exception."""
        if status >= 400:
            raise _error_from_response(status, content)
        return self.parse(content)

    def then(self, finish: Callable[[T], S]) -> _Call[S]:
        """This call, with ``finish`` applied to its parsed answer."""
        parse = self.parse

        def chained(raw: bytes) -> S:
            return finish(parse(raw))

        return _Call(
            self.method, self.path, chained, self.content, self.params, self.long, self.read_timeout, self.idempotent
        )

    def timeout(self, default: float | None) -> httpx.Timeout:
        """The httpx timeout for this call."""
        if self.long:
            return httpx.Timeout(default, read=self.read_timeout)
        return httpx.Timeout(default)


def _json_call(
    method: str,
    path: str,
    answer: type[M],
    body: BaseModel | None = None,
    *,
    params: Mapping[str, str] | None = None,
    long: bool = False,
    read_timeout: float | None = None,
    idempotent: bool | None = None,
) -> _Call[M]:
    """A call whose answer is the JSON wire model ``answer`` (GETs are idempotent unless told otherwise)."""
    return _Call(
        method,
        path,
        functools.partial(_validate, answer, f"{method} {path}"),
        content=None if body is None else _serialize(body),
        params=params,
        long=long,
        read_timeout=read_timeout,
        idempotent=method == "GET" if idempotent is None else idempotent,
    )


def _raw(content: bytes) -> bytes:
    return content


def _decode(raw: bytes) -> str:
    return raw.decode(errors="replace")


def _validate(model: type[M], what: str, content: bytes) -> M:
    try:
        return model.model_validate_json(content)
    except ValidationError as exc:
        raise RuntimeServerError(
            f"the runtime server answered {what} with an unexpected body "
            f"(is it a different agentbox version?): {exc.error_count()} validation errors"
        ) from exc


def _error_from_response(status: int, content: bytes) -> RuntimeServerError:
    try:
        body = ErrorBody.model_validate_json(content)
    except ValidationError as exc:
        text = content[:200].decode(errors="replace")
        error = RuntimeServerError(f"HTTP {status} from the runtime server: {text}", code="internal")
        error.__cause__ = exc
        return error
    return error_from_wire(body.code, body.message)


def _translate_transport(exc: httpx.HTTPError, where: str) -> AgentboxError:
    """The agentbox exception for an httpx error (the one place transport errors are translated)."""
    if isinstance(exc, httpx.TimeoutException):
        # The host gave up waiting: not the server's own time budget (that one is ServerTimeoutError).
        return SandboxTimeoutError(
            f"no answer from the runtime server at {where} in time ({type(exc).__name__}); "
            "pass a larger timeout, or a command timeout so the server returns first"
        )
    if isinstance(exc, httpx.ConnectError):
        return SandboxError(f"cannot connect to the runtime server at {where}: {exc}; is the sandbox running?")
    return SandboxError(f"lost the connection to the runtime server at {where}: {type(exc).__name__}: {exc}")


class _ConnectionTrace:
    """httpcore's trace events of one request: did it open a connection, did an answer start arriving?

    An idempotent request is retried only when it went out on a kept-alive connection (none was opened for
    it) and failed before the response head arrived: the server closed that idle connection meanwhile.
    """

    _STALE = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)

    def __init__(self) -> None:
        self.connected = False
        self.answered = False

    def record(self, name: str) -> None:
        """One trace event."""
        if name.startswith("connection.connect_") and name.endswith(".started"):
            self.connected = True
        elif name == "http11.receive_response_headers.complete":
            self.answered = True

    def __call__(self, name: str, info: Mapping[str, Any]) -> None:
        self.record(name)

    async def async_trace(self, name: str, info: Mapping[str, Any]) -> None:
        """The async client's trace callback."""
        self.record(name)

    def closed_while_idle(self, exc: httpx.HTTPError) -> bool:
        """Whether ``exc`` means a reused connection was closed by the server before this request."""
        return isinstance(exc, self._STALE) and not self.connected and not self.answered


@functools.cache
def _stream_events() -> TypeAdapter[Any]:
    events: Any = StreamEvent  # an Annotated union, which TypeAdapter's signature does not spell
    return TypeAdapter(events)  # built on first use: import time is on the clock of every CLI call


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
            event: OutputChunk | StreamEnd = _stream_events().validate_json(data)
            return event
        return None


# ------------------------------------------------------------------------------ checking what is sent


def _bad_text(value: object) -> str | None:
    """Where in ``value`` a string cannot be encoded as UTF-8 (a lone surrogate), or None."""
    if isinstance(value, str):
        if value.isascii():  # the usual case, checked without making an encoded copy
            return None
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            return f"a lone surrogate {value[exc.start]!r} at index {exc.start}"
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            problem = _bad_text(key) or _bad_text(item)
            if problem:
                return f"{problem} (key {key!r})"
        return None
    if isinstance(value, (list, tuple)):
        for item in value:
            if problem := _bad_text(item):
                return problem
    return None


def _check_text(what: str, value: object) -> None:
    """Refuse a string the wire cannot carry (it would fail while being sent, outside the error tree)."""
    problem = _bad_text(value)
    if problem:
        raise BadRequestError(f"{what} cannot be sent: it contains {problem} (not valid UTF-8)")


def _q(field: str, value: str) -> str:
    """``value`` as one URL path segment."""
    _check_text(field, value)
    return urllib.parse.quote(value, safe="")


def _params(**values: str | None) -> dict[str, str]:
    """Query parameters (None values left out), checked like bodies are."""
    for name, value in values.items():
        _check_text(name, value)
    return {name: value for name, value in values.items() if value is not None}


def _body(model: type[M], **fields: Any) -> M:
    """A request body, with invalid arguments raised as BadRequestError before anything is sent."""
    for name, value in fields.items():
        _check_text(f"{model.__name__}.{name}", value)
    try:
        return model(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise BadRequestError(f"invalid arguments for {model.__name__}: {problems}") from exc


def _serialize(body: BaseModel) -> bytes:
    try:
        return body.model_dump_json(exclude_unset=True).encode()
    except PydanticSerializationError as exc:  # anything _check_text missed: still inside the error tree
        raise BadRequestError(f"{type(body).__name__} cannot be sent: {exc}") from exc


def _optional(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _cwd_env(cwd: str | None, env: Mapping[str, str] | None) -> dict[str, Any]:
    return _optional(cwd=cwd, env=dict(env) if env else None)


def _file_bytes(content: str | bytes) -> bytes:
    """What ``write_file`` puts in the file: bytes as they are, text as UTF-8."""
    if isinstance(content, str):
        try:
            return content.encode()
        except UnicodeEncodeError as exc:
            problem = f"a lone surrogate {content[exc.start]!r} at index {exc.start}"
            raise BadRequestError(f"content cannot be sent: it contains {problem} (not valid UTF-8)") from exc
    return bytes(content)


def _base64_content(path: str, data: bytes) -> FileContent:
    return FileContent(path=path, content=base64.b64encode(data).decode(), encoding="base64", size=len(data))


def _warn_binary_read() -> None:
    # Point at the user's line, not at the forwarding layers inside agentbox.
    level, frame = 2, sys._getframe(1)  # stacklevel 2: our caller
    while frame is not None and frame.f_globals.get("__name__", "").startswith("agentbox."):
        level, frame = level + 1, frame.f_back  # type: ignore[assignment]
    warnings.warn(
        "read_file(binary=True) is deprecated and returns base64 text; use read_bytes(path), which returns bytes",
        DeprecationWarning,
        stacklevel=level,
    )


# ------------------------------------------------------------------------------ the shared builders


class _Calls:
    """The pure request builders of every action (shared by both clients)."""

    # ---------------------------------------------------------------- health
    @staticmethod
    def alive() -> _Call[Alive]:
        return _json_call("GET", "/alive", Alive)

    @staticmethod
    def info() -> _Call[ServerInfo]:
        return _json_call("GET", "/info", ServerInfo)

    # ---------------------------------------------------------------- shell
    @staticmethod
    def run(
        command: str,
        session: str,
        timeout: float | None,
        no_output_timeout: float | None,
        max_output_chars: int | None,
        stream: bool = False,
    ) -> _Call[CommandResult]:
        body = _body(
            RunCommand,
            command=command,
            **_optional(timeout=timeout, no_output_timeout=no_output_timeout, max_output_chars=max_output_chars),
        )
        # With a hard timeout the server answers within it (plus kill grace); without one a call may
        # legitimately last as long as the command does.
        read = None if timeout is None else timeout + _LONG_CALL_MARGIN_S
        action = "stream" if stream else "run"
        path = f"/sessions/{_q('session', session)}/{action}"
        return _json_call("POST", path, CommandResult, body, long=True, read_timeout=read)

    @staticmethod
    def wait_call(action: str, session: str, body: ReadOutput) -> _Call[CommandResult]:
        read = (body.timeout or 0) + _LONG_CALL_MARGIN_S if body.timeout is not None else None
        path = f"/sessions/{_q('session', session)}/{action}"
        return _json_call("POST", path, CommandResult, body, long=True, read_timeout=read)

    @staticmethod
    def read_output(session: str, timeout: float | None, no_output_timeout: float | None) -> _Call[CommandResult]:
        return _Calls.wait_call(
            "output", session, _body(ReadOutput, timeout=timeout, no_output_timeout=no_output_timeout)
        )

    @staticmethod
    def send_input(
        text: str, session: str, timeout: float | None, no_output_timeout: float | None
    ) -> _Call[CommandResult]:
        body = _body(SendInput, text=text, timeout=timeout, no_output_timeout=no_output_timeout)
        return _Calls.wait_call("input", session, body)

    @staticmethod
    def send_keys(
        keys: Iterable[str], session: str, timeout: float | None, no_output_timeout: float | None
    ) -> _Call[CommandResult]:
        body = _body(SendKeys, keys=list(keys), timeout=timeout, no_output_timeout=no_output_timeout)
        return _Calls.wait_call("keys", session, body)

    @staticmethod
    def interrupt(session: str) -> _Call[CommandResult]:
        path = f"/sessions/{_q('session', session)}/interrupt"
        return _json_call("POST", path, CommandResult, long=True, read_timeout=_LONG_CALL_MARGIN_S * 2)

    @staticmethod
    def command_output(command_id: str) -> _Call[str]:
        path = f"/commands/{_q('command_id', command_id)}/output"
        return _Call("GET", path, _decode, long=True, idempotent=True)

    @staticmethod
    def create_session(name: str, cwd: str | None, env: Mapping[str, str] | None) -> _Call[SessionInfo]:
        return _json_call("POST", "/sessions", SessionInfo, _body(SessionCreate, name=name, **_cwd_env(cwd, env)))

    @staticmethod
    def close_session(name: str) -> _Call[SessionInfo]:
        return _json_call("DELETE", f"/sessions/{_q('name', name)}", SessionInfo)

    @staticmethod
    def list_sessions() -> _Call[list[SessionInfo]]:
        return _json_call("GET", "/sessions", SessionList).then(lambda answer: answer.sessions)

    # ---------------------------------------------------------------- background
    @staticmethod
    def start_background(
        command: str, cwd: str | None, env: Mapping[str, str] | None, session: str
    ) -> _Call[BackgroundInfo]:
        body = _body(BackgroundStart, command=command, session=session, **_cwd_env(cwd, env))
        return _json_call("POST", "/background", BackgroundInfo, body)

    @staticmethod
    def list_background() -> _Call[list[BackgroundInfo]]:
        return _json_call("GET", "/background", BackgroundList).then(lambda answer: answer.commands)

    @staticmethod
    def background_info(bg_id: str) -> _Call[BackgroundInfo]:
        return _json_call("GET", f"/background/{_q('bg_id', bg_id)}", BackgroundInfo)

    @staticmethod
    def read_background(bg_id: str, offset: int, max_bytes: int) -> _Call[BackgroundOutput]:
        params = {"offset": str(offset), "max_bytes": str(max_bytes)}
        return _json_call("GET", f"/background/{_q('bg_id', bg_id)}/output", BackgroundOutput, params=params)

    @staticmethod
    def kill_background(bg_id: str) -> _Call[BackgroundInfo]:
        return _json_call("DELETE", f"/background/{_q('bg_id', bg_id)}", BackgroundInfo)

    # ---------------------------------------------------------------- files
    @staticmethod
    def read_file(path: str, start_line: int | None, end_line: int | None, session: str) -> _Call[FileContent]:
        body = _body(ReadFile, path=path, session=session, **_optional(start_line=start_line, end_line=end_line))
        return _json_call("POST", "/files/read", FileContent, body, idempotent=True)

    @staticmethod
    def read_bytes(path: str, session: str) -> _Call[bytes]:
        params = _params(path=path, session=session)
        return _Call("GET", "/files/raw", _raw, params=params, long=True, idempotent=True)

    @staticmethod
    def read_bytes_json(path: str, session: str) -> _Call[bytes]:
        """``read_bytes`` through an older server's JSON route (base64: slower, kept for version skew)."""
        body = _body(ReadFile, path=path, session=session, encoding="base64")
        call = _json_call("POST", "/files/read", FileContent, body, idempotent=True)
        return call.then(lambda answer: base64.b64decode(answer.content))

    @staticmethod
    def write_bytes_json(path: str, data: bytes, append: bool, mode: int | None, session: str) -> _Call[FileWritten]:
        """``write_file(bytes)`` through an older server's JSON route (base64: slower, kept for version skew)."""
        content = base64.b64encode(data).decode()
        fields = {"content": content, "encoding": "base64", "append": append, "mode": mode, "session": session}
        body = _body(WriteFile, path=path, **fields)
        return _json_call("POST", "/files/write", FileWritten, body)

    @staticmethod
    def write_bytes(path: str, append: bool, mode: int | None, session: str) -> _Call[FileWritten]:
        if mode is not None and not 0 <= mode <= 0o7777:
            raise BadRequestError(f"invalid mode {mode!r}: permission bits are 0..0o7777")
        params = _params(
            path=path, session=session, mode=None if mode is None else str(mode), append="true" if append else "false"
        )
        # Replacing a file with the same bytes twice is the same as once; appending twice is not.
        return _json_call("PUT", "/files/raw", FileWritten, params=params, long=True, idempotent=not append)

    @staticmethod
    def list_dir(path: str, include_hidden: bool, session: str) -> _Call[DirListing]:
        body = _body(ListDir, path=path, include_hidden=include_hidden, session=session)
        return _json_call("POST", "/files/list", DirListing, body, idempotent=True)

    @staticmethod
    def edit(op: BaseModel, idempotent: bool = False) -> _Call[str]:
        call = _json_call("POST", "/files/edit", EditResult, op, idempotent=idempotent)
        return call.then(lambda answer: answer.output)

    @staticmethod
    def view(path: str, view_range: tuple[int, int] | None, session: str) -> _Call[str]:
        op = _body(ViewOp, command="view", path=path, view_range=view_range, session=session)
        return _Calls.edit(op, idempotent=True)

    @staticmethod
    def create(path: str, file_text: str, session: str) -> _Call[str]:
        return _Calls.edit(_body(CreateOp, command="create", path=path, file_text=file_text, session=session))

    @staticmethod
    def str_replace(path: str, old_str: str, new_str: str, session: str) -> _Call[str]:
        return _Calls.edit(
            _body(StrReplaceOp, command="str_replace", path=path, old_str=old_str, new_str=new_str, session=session)
        )

    @staticmethod
    def insert(path: str, insert_line: int, new_str: str, session: str) -> _Call[str]:
        return _Calls.edit(
            _body(InsertOp, command="insert", path=path, insert_line=insert_line, new_str=new_str, session=session)
        )

    @staticmethod
    def undo_edit(path: str, session: str) -> _Call[str]:
        return _Calls.edit(_body(UndoEditOp, command="undo_edit", path=path, session=session))

    @staticmethod
    def upload(remote_path: str, session: str, tree: bool) -> _Call[UploadResult]:
        params = _params(path=remote_path, session=session, format="tar" if tree else "file")
        return _json_call("PUT", "/files/upload", UploadResult, params=params, long=True)

    @staticmethod
    def download(remote_path: str, session: str) -> _Call[bytes]:
        params = _params(path=remote_path, session=session, format="auto")
        return _Call("GET", "/files/download", _raw, params=params, long=True, idempotent=True)  # streamed

    # ---------------------------------------------------------------- python
    @staticmethod
    def run_python(code: str, timeout: float | None) -> _Call[PythonResult]:
        return _json_call(
            "POST",
            "/python/run",
            PythonResult,
            _body(RunPython, code=code, timeout=timeout),
            long=True,
            read_timeout=None if timeout is None else timeout + _LONG_CALL_MARGIN_S,
        )

    @staticmethod
    def restart_python() -> _Call[KernelStatus]:
        return _json_call("POST", "/python/restart", KernelStatus, long=True, read_timeout=120.0)

    @staticmethod
    def python_status() -> _Call[KernelStatus]:
        return _json_call("GET", "/python", KernelStatus)


# ------------------------------------------------------------------------------ local files


def _tar_producer(local: str) -> ThreadProducer:
    """A tar stream of ``local`` written in a thread (constant memory; closed by the caller)."""

    def produce(sink: Sink) -> None:
        with tarfile.open(fileobj=cast(IO[bytes], sink), mode="w|", bufsize=CHUNK) as tar:
            tar.add(local, arcname=".")

    return ThreadProducer(produce, name="upload")


def _upload_source(local: str, tree: bool) -> FileChunks | ThreadProducer:
    return _tar_producer(local) if tree else FileChunks(local)


def _sibling(path: str, suffix: str) -> str:
    """A fresh hidden name next to ``path`` (same directory, so the final rename stays on one file system)."""
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{secrets.token_hex(6)}{suffix}")


def _write_file(local: str, chunks: Iterator[bytes]) -> None:
    """Write a downloaded file next to ``local`` and rename it into place once complete."""
    local = os.path.abspath(local)
    os.makedirs(os.path.dirname(local), exist_ok=True)
    tmp = _sibling(local, ".part")
    # 0o666: the user's umask decides, as for any file they create.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, local)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _member_parts(name: str, what: str) -> tuple[str, ...]:
    """The path components of an archive member name, refused if it is absolute or climbs out."""
    if "\x00" in name:
        raise UnsafeDownloadError(f"{what} {name!r} contains a NUL byte")
    if name.startswith("/"):
        raise UnsafeDownloadError(f"{what} {name!r} is an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeDownloadError(f"{what} {name!r} contains '..'")
    return parts


class _TreeExtractor:
    """Extracts an untrusted tar stream into a fresh private directory, member by member.

    It does not rely on ``tarfile``'s extraction filters (absent or different on older Pythons) nor on
    ``tarfile``'s own extraction: directories are created one component at a time and must not be
    symlinks, files are created with ``O_EXCL | O_NOFOLLOW`` (never written through a link, never twice),
    links must stay inside the tree, and anything else (devices, FIFOs, setuid/setgid bits) is refused.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self._files: dict[tuple[str, ...], str] = {}  # regular files written: member parts -> local path
        self._links: list[str] = []
        self._dir_modes: dict[str, int] = {}

    def extract(self, source: IO[bytes]) -> None:
        """Extract every member of the tar stream ``source``, or raise leaving the caller to discard root."""
        try:
            with tarfile.open(fileobj=source, mode="r|*") as tar:
                for member in tar:
                    self._member(tar, member)
        except (tarfile.TarError, EOFError) as exc:
            raise FileOperationError(f"the downloaded tree is not a valid tar stream: {exc}") from exc
        self._check_links()
        # Last, deepest first: a read-only directory would have refused the files written into it.
        for path in sorted(self._dir_modes, key=len, reverse=True):
            os.chmod(path, self._dir_modes[path])

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = _member_parts(member.name, "archive member")
        if member.mode & (stat.S_ISUID | stat.S_ISGID):
            raise UnsafeDownloadError(f"archive member {member.name!r} has the setuid or setgid bit")
        if member.isdir():
            self._dir_modes[self._directory(parts)] = member.mode & 0o777
            return
        if not parts:
            raise UnsafeDownloadError("the archive's root member is not a directory")
        target = os.path.join(self._directory(parts[:-1]), parts[-1])
        if os.path.lexists(target):
            raise UnsafeDownloadError(f"archive member {member.name!r} appears twice")
        if member.isreg():
            self._file(tar, member, target)
            self._files[parts] = target
        elif member.issym():
            self._symlink(member, parts, target)
        elif member.islnk():
            source = self._files.get(_member_parts(member.linkname, "hard link target"))
            if source is None:
                raise UnsafeDownloadError(
                    f"hard link {member.name!r} points to {member.linkname!r}, not a file earlier in the tree"
                )
            os.link(source, target, follow_symlinks=False)
        else:
            raise UnsafeDownloadError(f"archive member {member.name!r} is a device, FIFO or other special file")

    def _directory(self, parts: tuple[str, ...]) -> str:
        """The local directory for ``parts``, created one component at a time; never through a symlink."""
        path = self.root
        for part in parts:
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o700)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeDownloadError(f"archive writes through the symlink {os.path.relpath(path, self.root)!r}")
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafeDownloadError(f"archive uses the file {os.path.relpath(path, self.root)!r} as a directory")
        return path

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, target: str) -> None:
        data = tar.extractfile(member)
        assert data is not None  # a regular file always has content, maybe empty
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(data, f, CHUNK)
            os.fchmod(f.fileno(), member.mode & 0o777)
        os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)

    def _symlink(self, member: tarfile.TarInfo, parts: tuple[str, ...], target: str) -> None:
        link = member.linkname
        if not link or link.startswith("/") or "\x00" in link:
            raise UnsafeDownloadError(f"symlink {member.name!r} -> {link!r} is absolute or empty")
        resolved = posixpath.normpath(posixpath.join("/".join(parts[:-1]), link))
        if resolved == ".." or resolved.startswith("../"):
            raise UnsafeDownloadError(f"symlink {member.name!r} -> {link!r} points outside the tree")
        os.symlink(link, target)
        self._links.append(target)

    def _check_links(self) -> None:
        # Names alone do not tell where a chain of links ends (a -> b/.., b -> .): resolve them for real,
        # in the private directory, before anything is moved into place.
        root = os.path.realpath(self.root)
        for link in self._links:
            real = os.path.realpath(link)
            if real != root and not real.startswith(root + os.sep):
                name = os.path.relpath(link, self.root)
                raise UnsafeDownloadError(f"symlink {name!r} resolves outside the tree (to {real})")


def _extract_tree(source: IO[bytes], dest: str) -> None:
    """Extract a downloaded tar stream into directory ``dest``: checked completely, then moved into place.

    The tree is first extracted into a private directory next to ``dest`` (same file system, so the final
    step is renames); a refused or broken archive leaves nothing behind.
    """
    dest = os.path.abspath(dest)
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise FileOperationError(f"cannot download a directory to {dest}: it exists and is not a directory")
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = _sibling(dest, ".agentbox-download")
    os.mkdir(tmp, 0o777)  # the user's umask decides its mode, unless the archive gives its root's
    try:
        extractor = _TreeExtractor(tmp)
        extractor.extract(source)
        if not os.path.lexists(dest):
            os.rename(tmp, dest)
        else:
            _move_into(tmp, dest)
    finally:
        _remove_tree(tmp)


def _remove_tree(path: str) -> None:
    """Remove what is left of a private extraction directory, read-only directories inside it included."""

    def retry(func: Callable[..., Any], failed: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed), 0o700)
            func(failed)

    if not os.path.lexists(path):
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)  # deprecated from 3.12 on


def _move_into(src: str, dest: str) -> None:
    """Move the entries of directory ``src`` into the existing directory ``dest`` (merging directories)."""
    for name in os.listdir(src):
        s, d = os.path.join(src, name), os.path.join(dest, name)
        if os.path.isdir(s) and not os.path.islink(s) and os.path.isdir(d) and not os.path.islink(d):
            _move_into(s, d)
            continue
        try:
            os.replace(s, d)
        except OSError as exc:
            raise FileOperationError(f"cannot put the downloaded {name!r} at {d}: {exc.strerror}") from exc


# ------------------------------------------------------------------------------ the clients


class _BaseClient:
    """State and configuration shared by both clients (no I/O)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | None = 60.0,
        uds: str | None = None,
        sandbox_id: str | None = None,
        auth: Auth = "session-key",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.uds = uds
        self.sandbox_id = sandbox_id
        self.state = ClientState.OPEN
        self.auth: Auth = auth
        self._api_key = api_key
        # Through the control plane's proxy the caller holds a service token, never the sandbox's key:
        # the proxy swaps the one for the other (and drops a session key header if one were sent).
        self._headers = {"Authorization": f"Bearer {api_key}"} if auth == "bearer" else {API_KEY_HEADER: api_key}
        self._limits = httpx.Limits(max_keepalive_connections=8, keepalive_expiry=60.0)
        # Whether the server has /files/raw (None: not known yet). A server from an older agentbox (a
        # keep-alive sandbox reattached with connect()) has only the JSON routes, which still work.
        self._raw_files: bool | None = None

    @property
    def _where(self) -> str:
        """The server's address for error messages (over a Unix socket the URL's host means nothing)."""
        return f"unix:{self.uds}" if self.uds is not None else self.base_url

    def _transport_args(self) -> dict[str, Any]:
        """Keyword arguments of the httpx transport: a Unix socket, or TCP without Nagle."""
        # A transport builds its TLS context at once, loading the whole CA bundle: 20 ms on an idle machine,
        # paid by the first call of every new sandbox (and serialised by the GIL when many start at once).
        # A runtime server speaks plain HTTP, so only an https URL (a control plane behind TLS) needs one.
        tls: dict[str, Any] = {} if self.uds is None and self.base_url.startswith("https:") else {"verify": False}
        if self.uds is not None:
            # A Unix stream socket has no Nagle algorithm (and rejects TCP options): only the path.
            return {"limits": self._limits, "uds": self.uds, **tls}
        # httpcore writes a request's headers and body separately; with Nagle on, the body waits for the
        # server's delayed ACK (~40 ms per call). Every call is latency-bound, so send immediately.
        return {"limits": self._limits, "socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)], **tls}

    def _request_args(self, call: _Call[Any], content: _Content, trace: Callable[..., Any]) -> dict[str, Any]:
        return {
            "method": call.method,
            "url": call.path,
            "content": call.content if content is None else content,
            "params": call.params,
            "timeout": call.timeout(self.timeout),
            "extensions": {"trace": trace},
        }

    def _check_open(self) -> None:
        if self.state is ClientState.CLOSED:
            raise SandboxError("this runtime client is closed; create a new one", sandbox_id=self.sandbox_id)

    def _translated(self, exc: BaseException) -> BaseException | None:
        """What to raise instead of ``exc`` (None: ``exc`` itself, marked with the sandbox id)."""
        if isinstance(exc, httpx.HTTPError):
            return _translate_transport(exc, self._where).with_sandbox(self.sandbox_id)
        if isinstance(exc, AgentboxError):
            exc.with_sandbox(self.sandbox_id)
        return None


class RuntimeClient(_BaseClient):
    """Synchronous client of one runtime server (keeps one keep-alive connection pool).

    ``sandbox_id``, when given, is put on every error the client raises (``exc.sandbox_id``).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | None = 60.0,
        uds: str | None = None,
        sandbox_id: str | None = None,
        auth: Auth = "session-key",
    ) -> None:
        """``base_url``: the server's URL (with ``uds``, any http URL: only its path part matters);
        ``uds``: the path of the Unix domain socket the server listens on, instead of TCP. ``auth``:
        ``"session-key"`` sends ``api_key`` as the runtime server's session key; ``"bearer"`` sends it as
        ``Authorization: Bearer`` (a control plane token, with ``base_url`` its runtime proxy
        ``<service>/v1/sandboxes/<id>/runtime``)."""
        super().__init__(base_url, api_key, timeout=timeout, uds=uds, sandbox_id=sandbox_id, auth=auth)
        self._pool: httpx.BaseTransport = httpx.HTTPTransport(**self._transport_args())
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=timeout, transport=self._pool)

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
        """Translate what goes wrong inside into agentbox errors (chained to the cause)."""
        self._check_open()
        try:
            yield
        except (httpx.HTTPError, AgentboxError) as exc:
            translated = self._translated(exc)
            if translated is None:
                raise
            raise translated from exc

    def _request(self, call: _Call[Any], content: _Content = None, *, stream: bool = False) -> httpx.Response:
        """Send ``call``; an idempotent one goes again once if its kept-alive connection was found closed."""
        for attempt in (1, 2):
            trace = _ConnectionTrace()
            request = self._http.build_request(**self._request_args(call, content, trace))
            try:
                if stream:
                    return self._http.send(request, stream=True)
                # Straight to the connection pool: Client.send adds cookies, auth, redirects and event hooks,
                # none of which a runtime server uses, for ~0.2 ms a call (a fifth of an echo round trip).
                response = self._pool.handle_request(request)
                try:
                    response.read()
                finally:
                    response.close()
                return response
            except httpx.HTTPError as exc:
                if attempt == 2 or not call.idempotent or not trace.closed_while_idle(exc):
                    raise
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _stream(self, call: _Call[Any]) -> Iterator[httpx.Response]:
        """The streamed answer of ``call`` (a 2xx one; errors raised), closed on exit."""
        resp = self._request(call, stream=True)
        try:
            if resp.status_code >= 400:
                raise _error_from_response(resp.status_code, resp.read())
            yield resp
        finally:
            resp.close()

    def _send(self, call: _Call[T], content: _Content = None) -> T:
        with self._transport():
            resp = self._request(call, content)
            return call.result(resp.status_code, resp.content)

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
        with self._transport(), self._stream(call) as resp:
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

    def create_session(
        self, name: str, *, cwd: str | None = None, env: Mapping[str, str] | None = None
    ) -> SessionInfo:
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
        """Read a text file (optionally lines start..end); relative paths start at the session's cwd.

        ``binary=True`` is deprecated (it returns the bytes as base64 text, ``encoding="base64"``, and ``path``
        as given): use :meth:`read_bytes`.
        """
        if binary:
            _warn_binary_read()
            return _base64_content(path, self.read_bytes(path, session=session))
        return self._send(_Calls.read_file(path, start_line, end_line, session))

    def read_bytes(self, path: str, *, session: str = "default") -> bytes:
        """The exact bytes of a file (sent as a raw HTTP body, not base64)."""
        if self._raw_files is not False:
            try:
                data = self._send(_Calls.read_bytes(path, session))
            except NotFoundError:
                if self._raw_files:
                    raise
                # No such file, or an older server without the route: its JSON route tells which.
            else:
                self._raw_files = True
                return data
        data = self._send(_Calls.read_bytes_json(path, session))
        self._raw_files = False
        return data

    def write_file(
        self,
        path: str,
        content: str | bytes,
        *,
        append: bool = False,
        mode: int | None = None,
        session: str = "default",
    ) -> FileWritten:
        """Write text (as UTF-8) or bytes to a file, creating parent directories (sent raw, not inside JSON)."""
        data = _file_bytes(content)
        if self._raw_files is not False:
            try:
                written = self._send(_Calls.write_bytes(path, append, mode, session), data)
            except NotFoundError:
                if self._raw_files:
                    raise
                # No such session, or an older server without the route: its JSON route tells which.
            else:
                self._raw_files = True
                return written
        written = self._send(_Calls.write_bytes_json(path, data, append, mode, session))
        self._raw_files = False
        return written

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
        # Closed whatever happens: a request that fails before the body is drained stops the tar thread.
        with _upload_source(local, tree) as source:
            return self._send(call, source)

    def download(self, remote_path: str, local_path: str | os.PathLike[str], *, session: str = "default") -> str:
        """Download a remote file to ``local_path``, or a remote directory into directory ``local_path``.

        A directory arrives as a tar stream that is checked completely before anything is moved into place:
        members that would land outside ``local_path`` (absolute or ``..`` names, links pointing out) or
        special files raise :class:`UnsafeDownloadError` and leave nothing behind.
        """
        local = os.fspath(local_path)
        call = _Calls.download(remote_path, session)
        with self._transport(), self._stream(call) as resp:
            chunks = resp.iter_bytes(CHUNK)
            if resp.headers.get(FORMAT_HEADER) == "tar":
                _extract_tree(cast(IO[bytes], IterReader(chunks)), local)
            else:
                _write_file(local, chunks)
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
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | None = 60.0,
        uds: str | None = None,
        sandbox_id: str | None = None,
        auth: Auth = "session-key",
    ) -> None:
        """``base_url``: the server's URL (with ``uds``, any http URL: only its path part matters);
        ``uds``: the path of the Unix domain socket the server listens on, instead of TCP. ``auth``:
        ``"session-key"`` sends ``api_key`` as the runtime server's session key; ``"bearer"`` sends it as
        ``Authorization: Bearer`` (a control plane token, with ``base_url`` its runtime proxy
        ``<service>/v1/sandboxes/<id>/runtime``)."""
        super().__init__(base_url, api_key, timeout=timeout, uds=uds, sandbox_id=sandbox_id, auth=auth)
        self._pool: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport(**self._transport_args())
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=timeout, transport=self._pool
        )

    @classmethod
    def like(cls, client: RuntimeClient) -> AsyncRuntimeClient:
        """An async client of the same server, with the same key, timeout and sandbox id as ``client``."""
        return cls(
            client.base_url, client._api_key, timeout=client.timeout, uds=client.uds, sandbox_id=client.sandbox_id,
            auth=client.auth,
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
        """Translate what goes wrong inside into agentbox errors (chained to the cause)."""
        self._check_open()
        try:
            yield
        except (httpx.HTTPError, AgentboxError) as exc:
            translated = self._translated(exc)
            if translated is None:
                raise
            raise translated from exc

    async def _request(self, call: _Call[Any], content: _Content = None, *, stream: bool = False) -> httpx.Response:
        """Send ``call``; an idempotent one goes again once if its kept-alive connection was found closed."""
        for attempt in (1, 2):
            trace = _ConnectionTrace()
            request = self._http.build_request(**self._request_args(call, content, trace.async_trace))
            try:
                if stream:
                    return await self._http.send(request, stream=True)
                response = await self._pool.handle_async_request(request)  # as in the sync client
                try:
                    await response.aread()
                finally:
                    await response.aclose()
                return response
            except httpx.HTTPError as exc:
                if attempt == 2 or not call.idempotent or not trace.closed_while_idle(exc):
                    raise
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def _stream(self, call: _Call[Any]) -> AsyncIterator[httpx.Response]:
        """The streamed answer of ``call`` (a 2xx one; errors raised), closed on exit."""
        resp = await self._request(call, stream=True)
        try:
            if resp.status_code >= 400:
                raise _error_from_response(resp.status_code, await resp.aread())
            yield resp
        finally:
            await resp.aclose()

    async def _send(self, call: _Call[T], content: _Content = None) -> T:
        async with self._transport():
            resp = await self._request(call, content)
            return call.result(resp.status_code, resp.content)

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
        async with self._transport(), self._stream(call) as resp:
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
        """Read a text file (optionally lines start..end); relative paths start at the session's cwd.

        ``binary=True`` is deprecated (it returns the bytes as base64 text, ``encoding="base64"``, and ``path``
        as given): use :meth:`read_bytes`.
        """
        if binary:
            _warn_binary_read()
            return _base64_content(path, await self.read_bytes(path, session=session))
        return await self._send(_Calls.read_file(path, start_line, end_line, session))

    async def read_bytes(self, path: str, *, session: str = "default") -> bytes:
        """The exact bytes of a file (sent as a raw HTTP body, not base64)."""
        if self._raw_files is not False:
            try:
                data = await self._send(_Calls.read_bytes(path, session))
            except NotFoundError:
                if self._raw_files:
                    raise
                # No such file, or an older server without the route: its JSON route tells which.
            else:
                self._raw_files = True
                return data
        data = await self._send(_Calls.read_bytes_json(path, session))
        self._raw_files = False
        return data

    async def write_file(
        self,
        path: str,
        content: str | bytes,
        *,
        append: bool = False,
        mode: int | None = None,
        session: str = "default",
    ) -> FileWritten:
        """Write text (as UTF-8) or bytes to a file, creating parent directories (sent raw, not inside JSON)."""
        data = _file_bytes(content)
        if self._raw_files is not False:
            try:
                written = await self._send(_Calls.write_bytes(path, append, mode, session), data)
            except NotFoundError:
                if self._raw_files:
                    raise
                # No such session, or an older server without the route: its JSON route tells which.
            else:
                self._raw_files = True
                return written
        written = await self._send(_Calls.write_bytes_json(path, data, append, mode, session))
        self._raw_files = False
        return written

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
        tree = await asyncio.to_thread(os.path.isdir, local)
        call = _Calls.upload(remote_path, session, tree)
        self._check_open()  # before opening the source (a closed client fails first)
        source = await asyncio.to_thread(_upload_source, local, tree)
        try:
            return await self._send(call, iterate_in_thread(source))
        finally:
            # Whatever happened: a request that fails before the body is drained stops the tar thread.
            await asyncio.to_thread(source.close)

    async def download(self, remote_path: str, local_path: str | os.PathLike[str], *, session: str = "default") -> str:
        """Download a remote file to ``local_path``, or a remote directory into directory ``local_path``.

        A directory arrives as a tar stream that is checked completely before anything is moved into place:
        members that would land outside ``local_path`` (absolute or ``..`` names, links pointing out) or
        special files raise :class:`UnsafeDownloadError` and leave nothing behind.
        """
        local = os.fspath(local_path)
        call = _Calls.download(remote_path, session)
        loop = asyncio.get_running_loop()
        async with self._transport(), self._stream(call) as resp:
            chunks = iterate_from_thread(resp.aiter_bytes(CHUNK), loop)
            if resp.headers.get(FORMAT_HEADER) == "tar":
                await asyncio.to_thread(_extract_tree, cast(IO[bytes], IterReader(chunks)), local)
            else:
                await asyncio.to_thread(_write_file, local, chunks)
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
