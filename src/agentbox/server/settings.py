"""The runtime server's settings: one frozen value built by the command line (or by tests)."""

from __future__ import annotations

import dataclasses

__all__ = ["ServerSettings"]


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Everything ``create_app`` needs; no I/O happens when one is built."""

    api_key: str = dataclasses.field(repr=False)
    """The session API key every request but ``/alive`` must carry."""
    work_dir: str = "/workspace"
    """Default working directory of shell sessions, the kernel and background commands."""
    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = 0
    """Port to listen on; 0 picks a free one."""
    shell: str = "/bin/bash"
    """The bash binary for shell sessions."""
    max_output_chars: int = 30_000
    """Default cap on the output returned in one command result (head and tail are kept)."""
    kill_grace_s: float = 2.0
    """After SIGINT (then after SIGKILL), how long to wait for the shell prompt before escalating."""
    keep_commands: int = 64
    """How many finished commands keep their full output retrievable."""
    state_dir: str | None = None
    """Private directory for spools and shell plumbing; a fresh temporary one if None."""
    term_columns: int = 200
    """Terminal width shell sessions see (wide, so tools wrap less)."""
    term_rows: int = 50
    """Terminal height shell sessions see."""
    max_body_bytes: int = 64 * 1024 * 1024
    """Largest JSON request body (413 above it; large files go through the raw upload/download)."""
    max_output_chars_cap: int = 4_000_000
    """Ceiling on any request's ``max_output_chars``: output held in memory per command is bounded by it,
    whatever the client asks (the full output stays spooled on disk)."""
    worker_threads: int = 8
    """Threads for blocking file work, all started with the server (none needs a new task under load)."""
