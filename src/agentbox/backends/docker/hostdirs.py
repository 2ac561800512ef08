"""Per-sandbox host directories bind-mounted into sandboxes: ``<root>/<sandbox id>``, one kind per root.

Two kinds exist: the Unix socket directory of a network-less sandbox (:mod:`.sockets`) and the run
directory through which a local engine's sandbox gets its session key (:mod:`.keydirs`). Each is made
just before its container, named by one of the container's labels, and goes with it. Labels can be
written by anyone with engine access, so a directory is only ever touched when it is exactly the one
agentbox would make for that very sandbox (``.../agentbox/<kind>/<id>``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import time
from collections.abc import Container
from pathlib import Path

from agentbox.errors import SandboxError

__all__ = ["DIR_GRACE", "SANDBOX_ID", "SandboxDirs"]

log = logging.getLogger("agentbox.backends.docker")

SANDBOX_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")
#: Seconds a directory without a container is left alone by reap (its sandbox may be being created).
DIR_GRACE = 60.0


class SandboxDirs:
    """The per-sandbox directories of one ``kind`` (the root's own name) under ``root``."""

    kind = "dirs"

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sandbox_id: str) -> Path:
        """The directory of ``sandbox_id`` (not created)."""
        if not SANDBOX_ID.match(sandbox_id):
            raise SandboxError(f"invalid sandbox id {sandbox_id!r}")
        return self.root / sandbox_id

    def make(self, sandbox_id: str) -> Path:
        """The directory of ``sandbox_id``, created 0700 (in a 0700 root) if missing."""
        directory = self.path(sandbox_id)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.mkdir(mode=0o700, exist_ok=True)
        return directory

    def owns(self, directory: str | None, sandbox_id: str | None) -> bool:
        """True when ``directory`` (a label's value) looks like one agentbox made for ``sandbox_id``."""
        if not directory or not sandbox_id:
            return False
        path = Path(directory)
        return (
            path.is_absolute() and path.name == sandbox_id and bool(SANDBOX_ID.match(sandbox_id))
            and path.parent.name == self.kind and path.parent.parent.name == "agentbox"
        )

    def made_here(self, directory: str | None, sandbox_id: str | None) -> bool:
        """True when ``directory`` is exactly the one this root holds for ``sandbox_id`` (stricter than
        :meth:`owns`, which accepts another root's, e.g. another user's)."""
        return bool(sandbox_id and SANDBOX_ID.match(sandbox_id)) and directory == str(self.root / str(sandbox_id))

    def remove(self, directory: str | None, sandbox_id: str | None) -> None:
        """Remove a sandbox's directory, named by its label, if :meth:`owns` says it is agentbox's for that
        very sandbox; anything else is left alone with a warning."""
        if not directory or not sandbox_id:
            return
        if not self.owns(directory, sandbox_id):
            log.warning("not removing %s: it does not look like the %s directory of sandbox %s",
                        directory, self.kind, sandbox_id)
            return
        # The sandbox user could write anything into its directory: remove the tree (rmtree does not
        # follow symlinks).
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(directory)

    def candidates(self) -> list[Path]:
        """The directories under ``root`` that look like sandbox directories."""
        try:
            return [p for p in self.root.iterdir() if p.is_dir() and SANDBOX_ID.match(p.name)]
        except OSError:
            return []

    def sweep(self, entries: list[Path], present: Container[str | None], *, grace: float = DIR_GRACE) -> None:
        """Remove those of ``entries`` whose sandbox is not ``present`` (e.g. after a crash between create
        and cleanup, or a container removed with ``docker rm``), once they are older than ``grace`` s."""
        # A directory is made just before its container: a young one may belong to a sandbox being
        # created right now, whose container the listing could not show yet.
        settled = time.time() - grace
        for path in entries:
            if path.name not in present:
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < settled:
                        self.remove(str(path), path.name)
