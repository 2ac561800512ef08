"""Parse ``SANDBOX_VOLUMES`` mount specs into typed mounts.

The grammar, one entry per comma::

    entry     := host ":" container [ ":" mode ]
    host      := drive-path | path | volume-name
    drive     := letter ":" ("\\" | "/") ...          (Windows: C:\\src, C:/src)
    container := "/" ...                              (absolute, no ":")
    mode      := "rw" | "ro"                          (default rw)

The host side is a bind mount when it looks like a path (absolute, ``~``, ``.``, or containing a
slash) and a named Docker volume when it is a bare name (``cache``). Relative and ``~`` paths are
resolved against the current directory and home at parse time, so the same spec means the same
thing wherever the mount is later made.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from agentbox.errors import VolumeSpecError

__all__ = ["Mount", "format_volumes", "parse_volume", "parse_volumes", "workspace_mount"]

_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
# Docker's own rule for volume names.
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MODES = ("rw", "ro")
_FORBIDDEN = ("\x00", "\n", "\r", ",")


@dataclass(frozen=True)
class Mount:
    """One mount of a sandbox: a host path (bind) or a named Docker volume at an absolute path inside."""

    source: str
    """Absolute host path for a bind mount, or the Docker volume name."""
    target: str
    """Absolute, normalised path inside the sandbox."""
    read_only: bool = False
    """True for ``ro`` mounts: writes inside the sandbox fail."""
    kind: Literal["bind", "volume"] = "bind"
    """``bind`` for a host path, ``volume`` for a named Docker volume."""

    @property
    def mode(self) -> str:
        """``ro`` or ``rw``."""
        return "ro" if self.read_only else "rw"

    def spec(self) -> str:
        """This mount as a ``host:container:mode`` entry (parses back to an equal Mount)."""
        return f"{self.source}:{self.target}:{self.mode}"


def _split_entry(entry: str) -> tuple[str, str, str | None]:
    """Split one entry into host, container and optional mode, honouring Windows drive letters."""
    drive, rest = "", entry
    if _DRIVE.match(entry):
        drive, rest = entry[:2], entry[2:]
    parts = rest.split(":")
    if len(parts) == 2:
        host, container, mode = parts[0], parts[1], None
    elif len(parts) == 3:
        host, container, mode = parts
    elif len(parts) < 2:
        raise VolumeSpecError(
            f"volume {entry!r} has no container path: expected host:container[:mode], "
            "e.g. ./src:/workspace or /data:/data:ro"
        )
    else:
        raise VolumeSpecError(
            f"volume {entry!r} has too many ':' separators: expected host:container[:mode] "
            "(paths may not contain ':')"
        )
    return drive + host, container, mode


def _resolve_host(host: str, entry: str, cwd: str) -> tuple[str, Literal["bind", "volume"]]:
    if not host:
        raise VolumeSpecError(f"volume {entry!r} has an empty host path")
    if _DRIVE.match(host):
        return host, "bind"  # a Windows path: Docker Desktop translates it, we keep it verbatim
    if host.startswith("~"):
        expanded = os.path.expanduser(host)
        if expanded.startswith("~"):
            raise VolumeSpecError(f"volume {entry!r}: cannot expand {host!r} (unknown user?)")
        return posixpath.normpath(expanded), "bind"
    if host.startswith("/"):
        return posixpath.normpath(host), "bind"
    if host in (".", "..") or host.startswith(("./", "../")) or "/" in host:
        return posixpath.normpath(posixpath.join(cwd, host)), "bind"
    if _VOLUME_NAME.match(host):
        return host, "volume"
    raise VolumeSpecError(
        f"volume {entry!r}: host side {host!r} is neither a path nor a valid Docker volume name "
        "(names are letters, digits, '_', '.', '-'; write ./{host} for a relative path)"
    )


def parse_volume(entry: str, *, cwd: str | None = None) -> Mount:
    """Parse one ``host:container[:mode]`` entry.

    Raises VolumeSpecError with the entry and what is wrong with it.
    """
    entry = entry.strip()
    for bad in _FORBIDDEN:
        if bad in entry:
            raise VolumeSpecError(f"volume {entry!r} contains a forbidden character {bad!r}")
    host, container, mode = _split_entry(entry)
    if mode is not None and mode not in _MODES:
        raise VolumeSpecError(f"volume {entry!r} has an unknown mode {mode!r}: expected 'rw' or 'ro'")
    if not container.startswith("/"):
        raise VolumeSpecError(
            f"volume {entry!r}: container path {container!r} must be absolute (start with '/')"
        )
    target = posixpath.normpath(container)
    if target.startswith("//"):
        target = "/" + target.lstrip("/")
    if target == "/":
        raise VolumeSpecError(f"volume {entry!r}: cannot mount over the sandbox's root '/'")
    source, kind = _resolve_host(host, entry, cwd if cwd is not None else os.getcwd())
    return Mount(source=source, target=target, read_only=mode == "ro", kind=kind)


def parse_volumes(spec: str | Iterable[str | Mount] | None, *, cwd: str | None = None) -> list[Mount]:
    """Parse a comma-separated ``SANDBOX_VOLUMES`` value (or a list of entries or Mounts) into mounts.

    Empty input gives no mounts. Two mounts on one container path are an error; one host path
    mounted at two places (e.g. rw and ro) is fine.
    """
    if spec is None:
        return []
    entries: list[str | Mount]
    if isinstance(spec, str):
        if not spec.strip():
            return []
        entries = list(spec.split(","))
    else:
        entries = list(spec)
    mounts: list[Mount] = []
    for raw in entries:
        if isinstance(raw, Mount):  # already parsed (e.g. a SandboxConfig's own mounts passed back in)
            mounts.append(raw)
            continue
        if not isinstance(raw, str):
            raise VolumeSpecError(f"volume entries must be strings, got {raw!r}")
        if not raw.strip():
            raise VolumeSpecError(
                f"empty volume entry in {spec!r}: entries are host:container[:mode] separated by ','"
            )
        mounts.append(parse_volume(raw, cwd=cwd))
    seen: dict[str, Mount] = {}
    for mount in mounts:
        if mount.target in seen:
            raise VolumeSpecError(
                f"two volumes mount on {mount.target!r}: {seen[mount.target].spec()!r} and {mount.spec()!r}; "
                "each container path can be mounted once"
            )
        seen[mount.target] = mount
    return mounts


def format_volumes(mounts: Iterable[Mount]) -> str:
    """The ``SANDBOX_VOLUMES`` string for these mounts."""
    return ",".join(m.spec() for m in mounts)


def workspace_mount(mounts: Iterable[Mount], work_dir: str = "/workspace") -> Mount | None:
    """The mount that provides the sandbox's working directory, if any."""
    target = posixpath.normpath(work_dir)
    return next((m for m in mounts if m.target == target), None)
