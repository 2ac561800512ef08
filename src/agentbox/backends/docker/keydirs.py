"""Session-key handover through a host directory, for sandboxes on a local engine.

Copying the key into a created container (``put_archive``) costs an engine round trip of about 50 ms
and as much engine CPU: the engine mounts the container's file system and runs an extraction helper.
When the engine shares this host's files, the sandbox's ``/run/agentbox`` is instead a bind mount of a
per-sandbox host directory, ``<keys>/<sandbox id>`` (0700 in a 0700 root, on a tmpfs): the key is written
there before start, in microseconds, and the entrypoint finds it exactly as it would a copied one (it
hands it to the sandbox user; the server deletes it once read). A restarted container waits for its key
in the same directory. The directory is named by the container's ``agentbox.key-dir`` label and goes
with the sandbox (:mod:`.hostdirs`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import replace

from agentbox.backends.docker.hostdirs import SandboxDirs
from agentbox.backends.labels import LABELS
from agentbox.backends.spec import ContainerSpec

__all__ = ["KeyDirs"]


class KeyDirs(SandboxDirs):
    """The per-sandbox key directories under ``root``."""

    kind = "keys"

    def place(self, spec: ContainerSpec, sandbox_id: str) -> ContainerSpec:
        """``spec`` with a fresh key directory for ``sandbox_id`` mounted at its /run/agentbox."""
        directory = str(self.make(sandbox_id))
        labels = tuple(sorted({**spec.label_map, LABELS.KEY_DIR: directory}.items()))
        return replace(spec, key_dir=directory, labels=labels)

    def hand_over(self, directory: str, files: Mapping[str, tuple[bytes, int]]) -> None:
        """Write ``files`` (name -> (content, mode)) into ``directory``, in order, each one atomically.

        The entrypoint goes on once the session key is non-empty, so every file appears whole (a temporary
        name, then a rename); a restarted sandbox's user can write in its directory, and a rename replaces
        whatever it left under a name (a symlink included) instead of writing through it.
        """
        for name, (content, mode) in files.items():
            fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
            try:
                with os.fdopen(fd, "wb") as f:
                    os.fchmod(f.fileno(), mode)
                    f.write(content)
                os.rename(temporary, os.path.join(directory, name))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
