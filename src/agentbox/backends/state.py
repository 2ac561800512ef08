"""Per-sandbox state files: how the owner gets a sandbox's session key back after a restart.

The key must never appear in ``docker inspect`` (no environment, no label, no command argument), and the
server deletes its copy inside the container once read. So the process that starts a sandbox writes
``$XDG_STATE_HOME/agentbox/<id>.json`` (default ``~/.local/state/agentbox``), mode 0600 in a 0700
directory, holding the key and what is needed to reach the sandbox again; :meth:`Sandbox.connect` reads
it, and removal deletes it. Only the user who started a sandbox (or root) can reattach to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agentbox.errors import SandboxError

__all__ = ["SandboxRecord", "StateStore", "key_dirs", "sockets_dir", "state_dir"]

_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")


def state_dir() -> Path:
    """``$XDG_STATE_HOME/agentbox``, or ``~/.local/state/agentbox``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "agentbox"


def sockets_dir() -> Path:
    """Where network-less sandboxes get their socket directories (``<this>/<sandbox id>``).

    ``/run/agentbox/sockets`` for root, ``$XDG_RUNTIME_DIR/agentbox/sockets`` (a tmpfs, and short: a
    socket path may not exceed 107 bytes), else ``sockets`` in :func:`state_dir`.
    """
    if os.geteuid() == 0:
        return Path("/run/agentbox/sockets")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / "agentbox" / "sockets"
    return state_dir() / "sockets"


def key_dirs() -> Path | None:
    """Where a local engine's sandboxes get the directory their session key is written into before start.

    ``/run/agentbox/keys`` for root, ``$XDG_RUNTIME_DIR/agentbox/keys``, else None: a key is only ever
    written to a tmpfs (never to a disk), so without one it is copied in through the engine instead.
    """
    if os.geteuid() == 0:
        return Path("/run/agentbox/keys")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / "agentbox" / "keys"
    return None


@dataclass
class SandboxRecord:
    """What the owner keeps about one sandbox."""

    id: str
    """Sandbox id."""
    key: str = field(repr=False)
    """The runtime server's session API key."""
    container_id: str
    """Docker container id."""
    owner_pid: int
    """The process that currently owns the sandbox (updated on reattach)."""
    owner_host: str
    """Host name of that process."""
    config: dict[str, Any]
    """The SandboxConfig it was started with (JSON form)."""
    url: str | None = None
    """Server URL, recorded for host-network sandboxes whose port only the ready line tells."""


class StateStore:
    """Reads and writes sandbox records in one directory."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or state_dir()

    def path(self, sandbox_id: str) -> Path:
        """The record file of ``sandbox_id``."""
        if not _ID.match(sandbox_id):
            raise SandboxError(f"invalid sandbox id {sandbox_id!r}")
        return self.directory / f"{sandbox_id}.json"

    def save(self, record: SandboxRecord) -> None:
        """Write the record atomically, readable by this user only."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.path(record.id)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        # O_EXCL + 0600 from the first byte: the key is never readable by others, not even briefly.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(asdict(record), f)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def load(self, sandbox_id: str) -> SandboxRecord | None:
        """The record, or None when this user has none for that sandbox."""
        try:
            data = json.loads(self.path(sandbox_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise SandboxError(f"cannot read the state of sandbox {sandbox_id} ({exc})") from None
        return SandboxRecord(**data)

    def delete(self, sandbox_id: str) -> None:
        """Forget the sandbox (no error if there was no record)."""
        with contextlib.suppress(FileNotFoundError):
            self.path(sandbox_id).unlink()

    def ids(self) -> list[str]:
        """Ids of every recorded sandbox."""
        try:
            return sorted(p.stem for p in self.directory.glob("*.json"))
        except OSError:
            return []
