"""The wire models of the runtime server API, shared by the server and the client.

Every request and response body that crosses HTTP is one of these pydantic v2 models, and models with
variants are discriminated unions on a literal field (``type`` for outputs and stream events, ``command``
for editor operations). Nothing else in agentbox defines a wire shape.

Requests and responses are lenient in opposite directions, so that versions can differ:

- **Requests are strict** (:class:`WireModel`): unknown fields are refused (a typo is an error, not
  silently ignored), JSON types are not coerced (``true`` is not a timeout, ``"3"`` is not a count), and
  every string that reaches the OS is checked here, once, by the annotated types below (:data:`Text`,
  :data:`CommandText`, :data:`PathText`, :data:`Env`, :data:`Offset`...): no NUL byte where the kernel
  would refuse one, no lone surrogate that cannot become UTF-8, no integer that overflows a C ``long``, no
  path deeper than the server can walk. The server turns a failure into a 4xx naming the field, so no
  service below the routes ever sees such input.
- **Responses are tolerant** (:class:`ResponseModel`): unknown fields are ignored, so an older client
  reads a newer server's answer.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)

__all__ = [
    "API_KEY_HEADER",
    "FORMAT_HEADER",
    "READY_LINE_PREFIX",
    "Alive",
    "BackgroundInfo",
    "BackgroundList",
    "BackgroundOutput",
    "BackgroundOutputQuery",
    "BackgroundStart",
    "CommandResult",
    "CommandText",
    "CreateOp",
    "DirEntry",
    "DirListing",
    "EditOp",
    "EditResult",
    "Env",
    "ErrorBody",
    "ErrorOutput",
    "FileContent",
    "FileWritten",
    "InsertOp",
    "KernelStatus",
    "ListDir",
    "Offset",
    "OutputChunk",
    "PathText",
    "PythonOutput",
    "PythonResult",
    "QueryModel",
    "ReadFile",
    "ReadOutput",
    "ResponseModel",
    "RichOutput",
    "RunCommand",
    "RunPython",
    "SandboxUsage",
    "SendInput",
    "SendKeys",
    "ServerInfo",
    "ServerUsage",
    "SessionCreate",
    "SessionInfo",
    "SessionList",
    "StrReplaceOp",
    "StreamEnd",
    "StreamEvent",
    "StreamOutput",
    "Text",
    "TransferQuery",
    "UndoEditOp",
    "UploadResult",
    "ViewOp",
    "WireModel",
    "WriteFile",
]

#: The header that carries the per-sandbox session API key.
API_KEY_HEADER = "X-Session-API-Key"
#: Download responses say in this header whether the body is a raw file or a tar of a tree.
FORMAT_HEADER = "X-Agentbox-Format"
#: The server prints this, followed by its URL, once it accepts connections.
READY_LINE_PREFIX = "agentbox-server ready on "

#: Longest path accepted (Linux PATH_MAX, in characters; the kernel counts bytes and says so itself).
MAX_PATH_CHARS = 4096
#: Most components in a path: deeper trees exceed what recursive walks (``os.makedirs``) can handle.
MAX_PATH_DEPTH = 512
#: Largest integer in a request: JSON-safe for every client, and far inside a C ``off_t``/``long``.
MAX_INT = 2**53 - 1

_SURROGATE = re.compile("[\ud800-\udfff]")


def _utf8(value: str) -> str:
    # A lone surrogate (possible in a Python str, not in UTF-8) would fail later, deep inside a write or
    # a serialisation, outside the error tree; refuse it where the field is known.
    if _SURROGATE.search(value):
        raise ValueError("contains a lone surrogate (not encodable as UTF-8)")
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL byte, which the OS cannot take in a path, argument or environment")
    return value


def _path(value: str) -> str:
    _no_nul(_utf8(value))
    if value.count("/") >= MAX_PATH_DEPTH:
        raise ValueError(f"has more than {MAX_PATH_DEPTH} components")
    return value


def _env_name(value: str) -> str:
    if not value or "=" in value or "\x00" in value:
        raise ValueError(f"environment variable name {value!r} must be non-empty, without '=' or NUL")
    return _utf8(value)


def _whole_number(value: Any, info: ValidationInfo) -> Any:
    # JSON Schema counts 1.0 as an integer, so it is one here; a boolean or a string is not (JSON's `true`
    # is no count), except in a query string, where every value is text.
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not a boolean")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        if info.context and info.context.get("query") and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise ValueError("must be a whole number")
    return value


#: Makes an ``Annotated[int, Field(...), WHOLE]`` an integer that is also 3.0, never true or "3" (in a
#: body; a query string's "3" is 3). The bounds sit on the int itself, before this validator, so the JSON
#: schema keeps them as minimum/maximum.
_WHOLE = BeforeValidator(_whole_number)


def _real_number(value: Any) -> Any:
    if isinstance(value, (bool, str)):
        raise ValueError("must be a number")
    return value


#: A flag: JSON true or false only (not 1, "yes" or "true").
Flag = Annotated[bool, Strict()]

#: Any text that must survive UTF-8 (file content, terminal input, Python source).
Text = Annotated[str, AfterValidator(_utf8)]
#: Shell source: also no NUL (bash drops or refuses it; ``exec`` cannot pass it).
CommandText = Annotated[str, Field(pattern=r"^[^\x00]*$"), AfterValidator(_no_nul), AfterValidator(_utf8)]
#: A path: non-empty, no NUL, at most PATH_MAX characters and MAX_PATH_DEPTH components.
PathText = Annotated[
    str, Field(min_length=1, max_length=MAX_PATH_CHARS, pattern=r"^[^\x00]+$"), AfterValidator(_path)
]
#: An environment variable name as ``execve`` takes it.
EnvName = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^=\x00]+$"), AfterValidator(_env_name)]
#: An environment variable value.
EnvValue = Annotated[str, Field(pattern=r"^[^\x00]*$"), AfterValidator(_no_nul), AfterValidator(_utf8)]
#: Extra environment variables of a session or command. Described with patternProperties (what
#: generators such as schemathesis honour) rather than pydantic's propertyNames.
Env = Annotated[
    dict[EnvName, EnvValue],
    Field(max_length=4096),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": 4096,
            "patternProperties": {r"^[^=\x00]+$": {"type": "string", "pattern": r"^[^\x00]*$"}},
            "additionalProperties": False,
        }
    ),
]
#: A byte offset or count: never negative, never beyond what a C ``off_t`` holds.
Offset = Annotated[int, Field(ge=0, le=MAX_INT), _WHOLE]
#: A 1-based line number.
LineNumber = Annotated[int, Field(ge=1, le=MAX_INT), _WHOLE]
#: Cap on returned output; larger values are clamped by the server, whose full output stays spooled.
OutputChars = Annotated[int, Field(ge=200, le=MAX_INT), _WHOLE]

SessionName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Shell session name: letters, digits, '_', '.', '-' (at most 64).",
    ),
]
#: A duration: a number (integers too), never true or "3".
Seconds = Annotated[float, Field(gt=0, le=7 * 24 * 3600), BeforeValidator(_real_number)]
Encoding = Literal["text", "base64"]


class WireModel(BaseModel):
    """Base of every request model: unknown fields are rejected, and the wire types do not coerce JSON."""

    # defer_build: validators are built on first use, not at import (server startup is on the clock).
    # Not pydantic's strict mode, which would also refuse what Python callers of the SDK rightly pass (a
    # list for a tuple); the wire types above refuse what JSON must not coerce (`true` as a number, "3" as
    # a count, 1 as a flag).
    model_config = ConfigDict(extra="forbid", defer_build=True)


class QueryModel(WireModel):
    """Base of query-string models: every value arrives as text; validate them with
    ``context={"query": True}`` so that whole numbers are parsed from it."""


class ResponseModel(BaseModel):
    """Base of every response model: unknown fields are ignored, so an older client reads a newer server."""

    model_config = ConfigDict(extra="ignore", defer_build=True)


class ErrorBody(ResponseModel):
    """The body of every error response."""

    code: str = Field(description="Stable error code from agentbox.errors.ERROR_CODES.")
    message: str = Field(description="What went wrong and, where possible, how to fix it.")


class Alive(ResponseModel):
    """Liveness probe answer."""

    status: Literal["ok"] = Field(default="ok", description="Always 'ok' when the server answers.")


# --------------------------------------------------------------------------------------------- shell


class SessionCreate(WireModel):
    """Create a named persistent bash session."""

    name: SessionName
    cwd: PathText | None = Field(default=None, description="Start directory (default: the server's work dir).")
    env: Env = Field(default_factory=dict, description="Extra environment variables.")


class SessionInfo(ResponseModel):
    """A shell session and what it is doing."""

    name: str = Field(description="Session name.")
    pid: int = Field(description="Process id of the session's bash.")
    cwd: str = Field(description="Working directory after the last command.")
    busy: bool = Field(description="True while a command is running.")
    command_id: str | None = Field(default=None, description="Id of the running command, if any.")
    command: str | None = Field(default=None, description="Text of the running command, if any.")


class SessionList(ResponseModel):
    """All shell sessions."""

    sessions: list[SessionInfo] = Field(description="Sessions, in creation order.")


class RunCommand(WireModel):
    """Run a command in a shell session."""

    command: CommandText = Field(description="Bash source; may span lines, contain heredocs, end with '&'.")
    timeout: Seconds | None = Field(
        default=None, description="Hard limit: interrupt (SIGINT, then SIGKILL) after this many seconds."
    )
    no_output_timeout: Seconds | None = Field(
        default=None, description="Return (command still running) once it printed nothing for this long."
    )
    max_output_chars: OutputChars | None = Field(
        default=None, description="Cap on returned output (head and tail kept); server default if unset."
    )


class CommandResult(ResponseModel):
    """Outcome of a command, or of the part of it seen since the last result for that command."""

    command_id: str = Field(description="Id of the command; its full output stays retrievable by it.")
    session: str = Field(description="Session the command ran in.")
    output: str = Field(description="Output (stdout and stderr interleaved, as on a terminal).")
    exit_code: int | None = Field(description="Exit status; None while the command still runs.")
    cwd: str = Field(description="Working directory of the session after the command.")
    still_running: bool = Field(default=False, description="True if control returned while the command runs on.")
    timed_out: bool = Field(default=False, description="True if the hard timeout interrupted the command.")
    interrupted: bool = Field(default=False, description="True if an interrupt request stopped the command.")
    session_restarted: bool = Field(default=False, description="True if the shell exited and was restarted.")
    truncated: bool = Field(default=False, description="True if the middle of the output was cut.")
    output_chars: int = Field(default=0, description="Length of the output before truncation, in characters.")
    duration_s: float = Field(default=0.0, description="Seconds since the command started.")


class ReadOutput(WireModel):
    """Wait for more output of the running command (after a no-output timeout)."""

    timeout: Seconds | None = Field(default=10.0, description="Longest this call waits; the command is not killed.")
    no_output_timeout: Seconds | None = Field(
        default=1.0, description="Return once the command printed nothing for this long."
    )
    max_output_chars: OutputChars | None = Field(default=None, description="Cap on returned output.")


class SendInput(ReadOutput):
    """Type text into the running command's terminal, then wait like ReadOutput."""

    text: Text = Field(description="Text to type; include '\\n' to press Enter.")


KeyName = Annotated[
    str,
    Field(
        pattern=r"^(C-[a-z@\[\\\]^_]|Enter|Tab|Escape|Backspace|Up|Down|Left|Right)$",
        description="A key: 'C-c', 'C-d', 'C-z', any 'C-<letter>', Enter, Tab, Escape, Backspace, arrows.",
    ),
]


class SendKeys(ReadOutput):
    """Press keys (Ctrl-C, Ctrl-D, Ctrl-Z...) in the running command's terminal, then wait."""

    keys: list[KeyName] = Field(min_length=1, description="Keys to press, in order.")


class OutputChunk(ResponseModel):
    """Streamed output as it is produced."""

    type: Literal["output"] = Field(default="output", description="Event kind.")
    text: str = Field(description="The next piece of output.")


class StreamEnd(ResponseModel):
    """Last event of a stream: the result (its output field is empty: it was streamed)."""

    type: Literal["result"] = Field(default="result", description="Event kind.")
    result: CommandResult = Field(description="The command result, without output.")


StreamEvent = Annotated[OutputChunk | StreamEnd, Field(discriminator="type")]


# ----------------------------------------------------------------------------------------- background


class BackgroundStart(WireModel):
    """Start a detached command."""

    command: CommandText = Field(description="Bash source to run with 'bash -c'.")
    cwd: PathText | None = Field(default=None, description="Directory (default: the cwd of session 'session').")
    env: Env = Field(default_factory=dict, description="Extra environment variables.")
    session: SessionName = "default"


class BackgroundInfo(ResponseModel):
    """A background command."""

    id: str = Field(description="Background command id.")
    command: str = Field(description="The command text.")
    pid: int = Field(description="Process id (also its process group and session id).")
    cwd: str = Field(description="Directory it started in.")
    running: bool = Field(description="True until it exits.")
    exit_code: int | None = Field(description="Exit status (negative: killed by that signal).")
    started_at: float = Field(description="Start time, seconds since the epoch.")
    ended_at: float | None = Field(default=None, description="End time, seconds since the epoch.")
    output_bytes: int = Field(default=0, description="Bytes of output written so far.")


class BackgroundList(ResponseModel):
    """All background commands."""

    commands: list[BackgroundInfo] = Field(description="Background commands, oldest first.")


class BackgroundOutputQuery(QueryModel):
    """Which part of a background command's output to read."""

    offset: Offset = Field(default=0, description="Byte offset to read from.")
    max_bytes: Annotated[int, Field(ge=1, le=64_000_000), _WHOLE] = Field(
        default=1_000_000, description="Most bytes to return."
    )


class BackgroundOutput(ResponseModel):
    """A slice of a background command's output."""

    id: str = Field(description="Background command id.")
    output: str = Field(description="Output text (undecodable bytes replaced).")
    offset: int = Field(description="Byte offset this slice starts at.")
    next_offset: int = Field(description="Offset to pass next time to continue.")
    running: bool = Field(description="True until the command exits.")
    exit_code: int | None = Field(description="Exit status once it ended.")


# ---------------------------------------------------------------------------------------------- files


class _PathRequest(WireModel):
    path: PathText = Field(description="Path; relative paths resolve against the session's cwd.")
    session: SessionName = "default"


class ReadFile(_PathRequest):
    """Read a file: text (optionally a line range) or base64 bytes."""

    start_line: LineNumber | None = Field(default=None, description="First line to return (1-based, text only).")
    end_line: LineNumber | None = Field(default=None, description="Last line to return, inclusive (text only).")
    encoding: Encoding = Field(default="text", description="'text' (UTF-8) or 'base64' (any bytes).")


class FileContent(ResponseModel):
    """File content."""

    path: str = Field(description="Absolute path read.")
    content: str = Field(description="Text, or base64 of the bytes.")
    encoding: Encoding = Field(description="How content is encoded.")
    size: int = Field(description="File size in bytes.")
    total_lines: int | None = Field(default=None, description="Number of lines in the file (text only).")


#: Canonical base64 (what the server decodes with validation on): the alphabet, padded to whole quads.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_BASE64 = re.compile(BASE64_PATTERN)


class WriteFile(_PathRequest):
    """Write a file, creating parent directories."""

    # The schema says it too (if encoding is base64, then content is base64), so generators and clients
    # written from the OpenAPI document know the rule the validator below enforces.
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"encoding": {"const": "base64"}}, "required": ["encoding"]},
            "then": {"properties": {"content": {"pattern": BASE64_PATTERN}}},
        }
    )

    content: Text = Field(description="Text, or base64 of the bytes.")
    encoding: Encoding = Field(default="text", description="How content is encoded.")
    append: Flag = Field(default=False, description="Append instead of replacing.")
    mode: Annotated[int, Field(ge=0, le=0o7777), _WHOLE] | None = Field(
        default=None, description="Permission bits for a new file."
    )

    @model_validator(mode="after")
    def _base64_is_valid(self) -> WriteFile:
        # Decoding bad base64 fails deep in the file service (non-ASCII even as a ValueError, a 500); the
        # field is known here.
        if self.encoding == "base64" and not _BASE64.match(self.content):
            raise ValueError(
                "content: not valid base64 (only A-Z, a-z, 0-9, '+', '/', padded with '=' to a multiple of 4)"
            )
        return self


class FileWritten(ResponseModel):
    """A file was written."""

    path: str = Field(description="Absolute path written.")
    size: int = Field(description="File size in bytes afterwards.")


class ListDir(WireModel):
    """List a directory."""

    path: PathText = Field(default=".", description="Directory; relative paths resolve against the session's cwd.")
    session: SessionName = "default"
    include_hidden: Flag = Field(default=True, description="Include names starting with '.'.")


class DirEntry(ResponseModel):
    """One directory entry."""

    name: str = Field(description="Entry name.")
    path: str = Field(description="Absolute path.")
    type: Literal["file", "dir", "symlink", "other"] = Field(description="Entry kind (symlinks not followed).")
    size: int = Field(description="Size in bytes (of the link itself for symlinks).")
    modified: float = Field(description="Modification time, seconds since the epoch.")


class DirListing(ResponseModel):
    """A directory listing."""

    path: str = Field(description="Absolute path listed.")
    entries: list[DirEntry] = Field(description="Entries sorted by name.")


class _EditBase(_PathRequest):
    pass


class ViewOp(_EditBase):
    """Show a file with line numbers, or a directory two levels deep."""

    command: Literal["view"] = Field(description="Operation.")
    view_range: tuple[LineNumber, Annotated[int, Field(ge=-1, le=MAX_INT), _WHOLE]] | None = Field(
        default=None, description="[first, last] lines (1-based; last -1 means to the end)."
    )


class CreateOp(_EditBase):
    """Create a new file (refuses to overwrite)."""

    command: Literal["create"] = Field(description="Operation.")
    file_text: Text = Field(description="Content of the new file.")


class StrReplaceOp(_EditBase):
    """Replace old_str, which must occur exactly once, by new_str."""

    command: Literal["str_replace"] = Field(description="Operation.")
    old_str: Text = Field(min_length=1, description="Exact text to replace (must be unique in the file).")
    new_str: Text = Field(default="", description="Replacement text.")


class InsertOp(_EditBase):
    """Insert text after a line (0 inserts at the top)."""

    command: Literal["insert"] = Field(description="Operation.")
    insert_line: Offset = Field(description="Insert after this line (0 = before the first line).")
    new_str: Text = Field(description="Text to insert.")


class UndoEditOp(_EditBase):
    """Revert the last edit made to a file through this API."""

    command: Literal["undo_edit"] = Field(description="Operation.")


EditOp = Annotated[ViewOp | CreateOp | StrReplaceOp | InsertOp | UndoEditOp, Field(discriminator="command")]


class EditResult(ResponseModel):
    """Outcome of an editor operation."""

    path: str = Field(description="Absolute path operated on.")
    output: str = Field(description="What an agent should read: the view, or a snippet around the edit.")


class TransferQuery(QueryModel):
    """Query parameters of upload and download."""

    path: PathText = Field(description="Remote path; relative paths resolve against the session's cwd.")
    session: SessionName = "default"
    format: Literal["auto", "file", "tar"] = Field(
        default="auto",
        description="'file': raw bytes; 'tar': a tree as tar; 'auto': tar for directories (download).",
    )


class UploadResult(ResponseModel):
    """An upload was stored."""

    path: str = Field(description="Absolute path written.")
    bytes: int = Field(description="Bytes received.")
    files: int = Field(description="Regular files written.")


# --------------------------------------------------------------------------------------------- python


class RunPython(WireModel):
    """Run code in the stateful Jupyter kernel."""

    code: Text = Field(description="Python (IPython) source.")
    timeout: Seconds | None = Field(default=None, description="Interrupt the kernel after this many seconds.")


class StreamOutput(ResponseModel):
    """Text the code printed."""

    type: Literal["stream"] = Field(default="stream", description="Output kind.")
    name: Literal["stdout", "stderr"] = Field(description="Which stream.")
    text: str = Field(description="The text.")


class RichOutput(ResponseModel):
    """A result (value of the last expression) or displayed object, in the formats it offers."""

    type: Literal["result", "display"] = Field(description="'result' for Out[n], 'display' for display().")
    text: str | None = Field(default=None, description="text/plain representation.")
    html: str | None = Field(default=None, description="text/html representation.")
    markdown: str | None = Field(default=None, description="text/markdown representation.")
    png: str | None = Field(default=None, description="image/png, base64.")
    jpeg: str | None = Field(default=None, description="image/jpeg, base64.")
    svg: str | None = Field(default=None, description="image/svg+xml.")


class ErrorOutput(ResponseModel):
    """An exception raised by the code."""

    type: Literal["error"] = Field(default="error", description="Output kind.")
    ename: str = Field(description="Exception class name.")
    evalue: str = Field(description="Exception message.")
    traceback: list[str] = Field(description="Traceback lines, without terminal colours.")


PythonOutput = Annotated[StreamOutput | RichOutput | ErrorOutput, Field(discriminator="type")]


class PythonResult(ResponseModel):
    """Outcome of running Python code."""

    status: Literal["ok", "error", "timeout"] = Field(description="'timeout': interrupted after timeout.")
    execution_count: int | None = Field(default=None, description="IPython execution counter.")
    outputs: list[PythonOutput] = Field(description="Outputs in the order produced.")


class KernelStatus(ResponseModel):
    """State of the Jupyter kernel."""

    running: bool = Field(description="True if a kernel process is alive.")
    pid: int | None = Field(default=None, description="Kernel process id.")


# ----------------------------------------------------------------------------------------------- info


class ServerUsage(ResponseModel):
    """Resource use of the server process itself."""

    cpu_seconds: float = Field(description="User+system CPU seconds used by the server.")
    rss_bytes: int | None = Field(default=None, description="Resident memory of the server.")


class SandboxUsage(ResponseModel):
    """Resource use of the whole sandbox, from its cgroup when readable."""

    cpu_seconds: float | None = Field(default=None, description="CPU seconds used by the sandbox cgroup.")
    memory_bytes: int | None = Field(default=None, description="Memory charged to the sandbox cgroup.")
    memory_limit_bytes: int | None = Field(default=None, description="Memory limit; None if unlimited.")
    pids: int | None = Field(default=None, description="Processes and threads in the sandbox cgroup.")


class ServerInfo(ResponseModel):
    """What the runtime server knows about itself and its sandbox."""

    version: str = Field(description="agentbox version of the server.")
    pid: int = Field(description="Server process id.")
    uid: int = Field(description="User id the server (and every command) runs as.")
    work_dir: str = Field(description="Default working directory.")
    uptime_s: float = Field(description="Seconds since the server started.")
    idle_s: float = Field(description="Seconds since the last authenticated request.")
    sessions: int = Field(description="Number of shell sessions.")
    busy_sessions: int = Field(description="Sessions running a command.")
    background_running: int = Field(description="Background commands still running.")
    kernel_running: bool = Field(description="True if the Python kernel is started.")
    server: ServerUsage = Field(description="Server process resource use.")
    sandbox: SandboxUsage = Field(description="Sandbox-wide resource use.")


# ------------------------------------------------------------------------------------ raw file bytes

__all__ += ["RawFileQuery", "RawWriteQuery"]


class RawFileQuery(QueryModel):
    """Query parameters of ``GET /files/raw``: the body answered is the file's exact bytes."""

    path: PathText = Field(description="A regular file; relative paths resolve against the session's cwd.")
    session: SessionName = "default"


class RawWriteQuery(RawFileQuery):
    """Query parameters of ``PUT /files/raw``: the request body is the file's new content, as raw bytes."""

    mode: int | None = Field(default=None, ge=0, le=0o7777, description="Permission bits for a new file.")
    append: bool = Field(default=False, description="Append the body instead of replacing the content.")
