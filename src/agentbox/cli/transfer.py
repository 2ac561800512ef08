"""``agentbox cp``: copy files and directory trees in and out of a sandbox, as ``docker cp`` does.

The copy goes through the sandbox's runtime server rather than ``docker cp``, so what lands in the
sandbox belongs to the sandbox user (``docker cp`` would leave it owned by root or by the host uid).

Destination rules, the same as ``docker cp``: copying to a directory that exists, or to a path that
ends with ``/``, puts the source inside it under its own name; otherwise the destination is the new
name. ``SRC/.`` copies the contents of a directory rather than the directory itself.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.markup import escape

from ._app import SANDBOX_PANEL, command, out, usage_error

if TYPE_CHECKING:
    from agentbox.sandbox import Sandbox

__all__ = ["Location", "parse_location"]


@dataclass(frozen=True)
class Location:
    """One side of a copy: a host path, or a path inside the sandbox ``sandbox_id``."""

    path: str
    sandbox_id: str | None = None


def parse_location(text: str) -> Location:
    """``ID:/path`` is a path in a sandbox, anything else a host path.

    As with ``docker cp``, a colon only marks a sandbox when what comes before it contains no ``/``,
    so ``./a:b`` and ``/tmp/a:b`` stay host paths.
    """
    head, sep, tail = text.partition(":")
    if sep and head and "/" not in head and not head.startswith("."):
        return Location(path=tail or ".", sandbox_id=head)
    return Location(path=text)


def _copy_contents(path: str) -> bool:
    """``SRC/.`` means "the contents of SRC", not SRC itself."""
    return path.endswith("/.") or path == "."


def _remote_is_dir(sandbox: Sandbox, path: str) -> bool:
    from agentbox.errors import RuntimeServerError

    try:
        sandbox.client.list_dir(path)
    except RuntimeServerError:
        return False
    return True


def copy_in(sandbox: Sandbox, src: str, dest: str) -> str:
    """Upload host ``src`` (file or tree) to ``dest`` in ``sandbox``; returns the path written."""
    if not os.path.exists(src):
        raise usage_error(f"{src}: no such file or directory on this host")
    target = dest
    if not _copy_contents(src) and (dest.endswith("/") or _remote_is_dir(sandbox, dest)):
        target = posixpath.join(dest, os.path.basename(os.path.normpath(src)))
    sandbox.upload(os.path.normpath(src), target)
    return target


def copy_out(sandbox: Sandbox, src: str, dest: str) -> str:
    """Download ``src`` (file or tree) from ``sandbox`` to host ``dest``; returns the path written."""
    target = dest
    if not _copy_contents(src) and (dest.endswith(os.sep) or os.path.isdir(dest)):
        target = os.path.join(dest, posixpath.basename(posixpath.normpath(src)))
    sandbox.download(posixpath.normpath(src), target)
    return target


@command("cp", rich_help_panel=SANDBOX_PANEL)
def cp_cmd(src: str, dest: str) -> None:
    """Copy files or trees in or out: `agentbox cp ./dir ID:/workspace`, `agentbox cp ID:/path ./local`."""
    source, target = parse_location(src), parse_location(dest)
    if (source.sandbox_id is None) == (target.sandbox_id is None):
        raise usage_error(
            "exactly one of SRC and DEST must be ID:PATH in a sandbox, e.g. agentbox cp ./a ID:/workspace"
        )
    sandbox_id = source.sandbox_id or target.sandbox_id
    assert sandbox_id is not None
    from .sandboxes import connect

    sandbox = connect(sandbox_id)  # through the service with --server, like every sandbox command
    try:
        if target.sandbox_id:
            written = copy_in(sandbox, source.path, target.path)
            out.print(f"copied {escape(source.path)} to {escape(sandbox_id)}:{escape(written)}")
        else:
            written = copy_out(sandbox, source.path, target.path)
            out.print(f"copied {escape(sandbox_id)}:{escape(source.path)} to {escape(written)}")
    finally:
        sandbox.detach()
