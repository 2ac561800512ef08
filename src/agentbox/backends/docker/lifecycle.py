"""Pieces of a sandbox container's life on the engine: the create call, the secrets handed over before
start, following the log until the server's ready line, and saying why a start failed.

Readiness is event-driven: the container's log stream is followed from right after start until the
server's ``agentbox-server ready on http://HOST:PORT`` (or ``unix:PATH``) line, the stream's end (the
container exited) or a deadline.
"""

from __future__ import annotations

import contextlib
import io
import queue
import re
import tarfile
import threading
import time
from collections.abc import Mapping
from typing import Any

from agentbox.backends.docker.errors import IMAGE_HINT, engine_errors, is_not_found
from agentbox.backends.spec import ContainerSpec, to_docker_args
from agentbox.errors import ImageNotFoundError, SandboxStartError
from agentbox.protocol import READY_LINE_PREFIX

__all__ = [
    "READY", "ReadyWatcher", "close_stream", "count_ready_lines", "create_container", "secrets_tar", "start_failure",
]

READY = re.compile(re.escape(READY_LINE_PREFIX.encode()) + rb"(?:http://(\S+):(\d+)|unix:\S+)")
RUN_DIR = "/run"
SECRETS_DIR = "agentbox"
LOG_TAIL = 25


def secrets_tar(files: Mapping[str, tuple[bytes, int]]) -> bytes:
    """A tar of ``agentbox/<name>`` entries to extract at /run (root-owned; the entrypoint hands them on)."""
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(SECRETS_DIR)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o700, now
        tar.addfile(info)
        for name, (content, mode) in files.items():
            info = tarfile.TarInfo(f"{SECRETS_DIR}/{name}")
            info.size, info.mode, info.mtime = len(content), mode, now
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def create_container(api: Any, spec: ContainerSpec) -> str:
    """Create the container described by ``spec`` (not started); returns its id.

    docker-py's public ``containers.create`` converts the model-layer arguments of :func:`to_docker_args`
    and then inspects the new container to return a model: one more engine round trip on the
    create -> first-output path. Its converter, ``_create_container_args``, is private; it is used here, in
    this one place, to get the same conversion without that round trip (to_docker_args is pinned against
    it by the unit tests, so an SDK change shows there).
    """
    from docker.models.containers import _create_container_args

    kwargs = _create_container_args({**to_docker_args(spec), "version": api.api_version})
    with engine_errors(f"creating the sandbox container from {spec.image}"):
        try:
            return str(api.create_container(**kwargs)["Id"])
        except Exception as exc:
            if is_not_found(exc) and "network" not in str(exc).lower():
                raise ImageNotFoundError(f"image {spec.image!r} is not present on the engine; {IMAGE_HINT}") from exc
            raise


def count_ready_lines(log: str) -> int:
    """How many ready lines a container's log holds (one per earlier run)."""
    return log.count(READY_LINE_PREFIX)


class ReadyWatcher:
    """Follows a started container's log stream in a thread until the server's ready line or the end."""

    def __init__(self, api: Any, container_id: str, *, skip: int = 0) -> None:
        self._skip = skip  # ready lines of earlier runs of a restarted container are in the log too
        self._events: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._stream = api.logs(container_id, stdout=True, stderr=True, stream=True, follow=True)
        self._thread = threading.Thread(target=self._follow, name=f"agentbox-ready-{container_id[:12]}", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        pending = b""
        try:
            for chunk in self._stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if READY.search(line):
                        if self._skip:
                            self._skip -= 1
                            continue
                        self._events.put(("ready", line))
                        return
        except Exception:  # the stream is closed under us on purpose (deadline, ready)
            pass
        self._events.put(("ended", pending))

    def wait(self, timeout: float) -> tuple[str, bytes]:
        """("ready", line), ("ended", b"") when the container exited first, or ("timeout", b"")."""
        try:
            return self._events.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return "timeout", b""
        finally:
            self.close()

    def close(self) -> None:
        """Stop following (idempotent)."""
        close_stream(self._stream)


def close_stream(stream: Any) -> None:
    """Close a followed log stream of docker-py at once, from any thread (idempotent, never raises)."""
    with contextlib.suppress(Exception):
        stream.close()
    # docker-py's close shuts the socket but leaves the response's file open on it: the socket stays
    # open until collected (a ResourceWarning). Closing the response lets it go now.
    with contextlib.suppress(Exception):
        stream._response.close()


def start_failure(api: Any, container_id: str, log_tail: str, *, timed_out: bool, timeout: float) -> SandboxStartError:
    """The error for a container whose server never reported ready, with the last lines of its log."""
    shown = "\n".join("    " + line for line in log_tail.rstrip().splitlines()) or "    (no output)"
    state: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        state = api.inspect_container(container_id).get("State", {})
    if timed_out:
        what = f"the runtime server did not report ready within {timeout:.0f} s"
        fix = "raise start_timeout if the engine is slow, or check the log below"
    elif state.get("OOMKilled"):
        what = "the sandbox was killed for lack of memory before its server was ready"
        fix = "raise the memory limit (memory=...)"
    else:
        what = f"the runtime server exited (code {state.get('ExitCode', '?')}) before it was ready"
        fix = "check that the image is an agentbox runtime image (`agentbox doctor`) and the log below"
    return SandboxStartError(f"{what}; {fix}. Last log lines of container {container_id[:12]}:\n{shown}")
