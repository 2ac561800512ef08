"""Build a runtime image on a base image, or reuse the one whose content hash matches.

The tag is ``agentbox-runtime:<hash>``; the hash covers the base image's id and everything copied in
(see :mod:`agentbox.images.context`), so "is the image up to date?" is one ``images.get`` call. Builds
go through the Docker SDK's low-level API with the classic builder, streaming the log line by line to
``progress``; a failure becomes :class:`~agentbox.errors.ImageBuildError` carrying the log's tail.
"""

from __future__ import annotations

import collections
import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentbox import __version__
from agentbox.engine import docker_client, translate_errors
from agentbox.errors import ImageBuildError, ImageNotFoundError
from agentbox.images.base import ensure_base_image, pull_image
from agentbox.images.context import CA_CERT_DIR, make_context

if TYPE_CHECKING:
    import docker
    from agentbox.config import SandboxConfig

__all__ = [
    "LABEL_BASE",
    "LABEL_CONTENT_HASH",
    "LABEL_RUNTIME",
    "LABEL_VERSION",
    "RUNTIME_REPOSITORY",
    "BuildResult",
    "build_runtime_image",
    "check_base_supported",
    "ensure_runtime_image",
    "runtime_tag",
]

Progress = Callable[[str], None]

RUNTIME_REPOSITORY = "agentbox-runtime"
LABEL_RUNTIME = "agentbox.runtime"
LABEL_VERSION = "agentbox.version"
LABEL_BASE = "agentbox.base"
LABEL_CONTENT_HASH = "agentbox.content-hash"
HASH_LENGTH = 16
LOG_TAIL_LINES = 40
# Proxy settings are predefined build args: they reach RUN steps without entering the cache key.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")

# Tells a base the build can work with from one that will fail half-way: run before any build.
_PROBE = r"""
if command -v apt-get >/dev/null 2>&1; then echo apt=yes; else echo apt=no; fi
if [ -r /etc/os-release ]; then . /etc/os-release; echo "os=${PRETTY_NAME:-$ID}"; fi
"""


def _no_progress(_line: str) -> None:
    pass


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build_runtime_image` produced."""

    tag: str
    """The image reference to run, e.g. ``agentbox-runtime:0123456789abcdef``."""
    base: str
    """The base image it was built on."""
    content_hash: str
    """Full hex sha256 of the base image id and every input copied in."""
    reused: bool
    """True when an image with this content hash existed and nothing was built."""
    seconds: float
    """Wall time of the call."""
    image_id: str = ""
    """The image's id (``sha256:...``)."""


def runtime_tag(content_hash: str) -> str:
    """The content-hashed tag for a hash."""
    return f"{RUNTIME_REPOSITORY}:{content_hash[:HASH_LENGTH]}"


@contextlib.contextmanager
def _client_scope(client: docker.DockerClient | None) -> Iterator[docker.DockerClient]:
    """Use the caller's client, or open (and close) one for this call."""
    if client is not None:
        yield client
        return
    # Builds can sit silent for minutes (apt, pip): a short socket timeout would cut them off.
    own = docker_client(timeout=1800)
    try:
        yield own
    finally:
        own.close()


def _image_or_none(client: docker.DockerClient, ref: str) -> Any:
    from docker.errors import ImageNotFound

    try:
        return client.images.get(ref)
    except ImageNotFound:
        return None


def check_base_supported(client: docker.DockerClient, base: str) -> None:
    """Raise ImageBuildError unless ``base`` has a shell and apt-get (Debian/Ubuntu), before any build.

    Runs one short-lived, network-less container on the base.
    """
    from docker.errors import APIError

    with translate_errors(f"probing base image {base}"):
        container = client.containers.create(
            base,
            entrypoint=["/bin/sh", "-c", _PROBE],
            command=[],
            user="root",
            network_disabled=True,
            labels={"agentbox.probe": "1"},
        )
        try:
            try:
                container.start()
            except APIError as exc:
                # The OCI runtime's complaint about a missing /bin/sh is the only start failure expected.
                raise ImageBuildError(
                    f"base image {base} has no usable /bin/sh ({exc.explanation or exc}); runtime images are "
                    "built on Debian or Ubuntu bases (or set runtime_container_image to a ready image)"
                ) from None
            container.wait(timeout=60)
            out = container.logs(stdout=True, stderr=False)
        finally:
            container.remove(force=True)
    facts = dict(line.split("=", 1) for line in out.decode(errors="replace").splitlines() if "=" in line)
    if facts.get("apt") != "yes":
        system = facts.get("os", "an unknown system")
        raise ImageBuildError(
            f"base image {base} ({system}) has no apt-get: agentbox builds runtime images on Debian or "
            "Ubuntu bases (e.g. debian:bookworm, ubuntu:24.04, python:3.12, nikolaik/python-nodejs); "
            "use one of those, or set runtime_container_image to a ready runtime image"
        )


def build_runtime_image(
    base: str,
    *,
    tag: str | None = None,
    force: bool = False,
    client: docker.DockerClient | None = None,
    progress: Progress = _no_progress,
    labels: Mapping[str, str] | None = None,
    source: Path | None = None,
    ca_dir: Path = CA_CERT_DIR,
) -> BuildResult:
    """Build the runtime image on ``base`` (present on the engine), or reuse it if already built.

    ``tag`` defaults to the content-hashed ``agentbox-runtime:<hash>``; a given tag is reused only when
    the image it names carries the same content hash. ``force`` rebuilds without the layer cache.
    ``labels`` are added to the image (tests mark theirs); ``source`` replaces the agentbox package
    directory copied in; ``ca_dir`` is where the host's extra CA certificates are read from.
    Raises ImageNotFoundError when ``base`` is absent, ImageBuildError when the build fails.
    """
    started = time.monotonic()
    with _client_scope(client) as engine:
        with translate_errors(f"looking up base image {base}"):
            base_image = _image_or_none(engine, base)
        if base_image is None:
            raise ImageNotFoundError(
                f"base image {base} is not on this engine; pull it first (or use ensure_runtime_image, "
                "which pulls or bootstraps one)"
            )
        context = make_context(base, base_image.id, source=source, ca_dir=ca_dir)
        target = tag or runtime_tag(context.content_hash)
        if not force:
            with translate_errors(f"looking up {target}"):
                existing = _image_or_none(engine, target)
            if existing is not None and existing.labels.get(LABEL_CONTENT_HASH) == context.content_hash:
                progress(f"runtime image {target} is up to date (content hash {context.content_hash[:12]})")
                return BuildResult(target, base, context.content_hash, True, time.monotonic() - started, existing.id)
        check_base_supported(engine, base)
        if context.ca_certificates:
            progress(f"carrying CA certificates into the image: {', '.join(context.ca_certificates)}")
        progress(f"building {target} on {base} ...")
        image_labels = {
            LABEL_RUNTIME: "1",
            LABEL_VERSION: __version__,
            LABEL_BASE: base,
            LABEL_CONTENT_HASH: context.content_hash,
            **(labels or {}),
        }
        image_id = _docker_build(engine, context.tar(image_labels), target, no_cache=force, progress=progress)
        progress(f"built {target}")
        return BuildResult(target, base, context.content_hash, False, time.monotonic() - started, image_id)


def _docker_build(
    client: docker.DockerClient,
    tar: bytes,
    tag: str,
    *,
    no_cache: bool,
    progress: Progress,
) -> str:
    """Run one classic-builder build; stream its log to ``progress``; return the image id."""
    from docker.errors import DockerException

    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
    image_id = ""
    pending = ""
    build_args = {name: value for name in PROXY_VARIABLES if (value := os.environ.get(name))}

    def emit(text: str) -> None:
        nonlocal pending
        pending += text
        *lines, pending = pending.split("\n")
        for line in lines:
            line = line.rstrip("\r")
            if line.strip():
                tail.append(line)
                progress(line)

    try:
        stream = client.api.build(
            fileobj=tar,
            custom_context=True,
            tag=tag,
            buildargs=build_args or None,
            rm=True,
            forcerm=True,
            pull=False,
            nocache=no_cache,
            decode=True,
        )
        for chunk in stream:
            if "stream" in chunk:
                emit(chunk["stream"])
            if "aux" in chunk and isinstance(chunk["aux"], dict):
                image_id = chunk["aux"].get("ID", image_id)
            if "error" in chunk:
                emit("\n")
                detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                log = "\n".join(tail)
                raise ImageBuildError(f"building {tag} failed: {detail.strip()}\n--- build log (tail) ---\n{log}")
        emit("\n")
    except DockerException as exc:
        log = "\n".join(tail)
        raise ImageBuildError(f"building {tag} failed: {exc}\n--- build log (tail) ---\n{log}") from None
    if not image_id:
        with translate_errors(f"looking up the image just built as {tag}"):
            image_id = client.images.get(tag).id
    return image_id


def ensure_runtime_image(
    config: SandboxConfig,
    *,
    client: docker.DockerClient | None = None,
    progress: Progress = _no_progress,
) -> str:
    """The runtime image reference to run for ``config``, made available on the engine.

    With ``runtime_container_image`` set: that image as is, pulled when missing (ImageNotFoundError if it
    cannot be). Otherwise the base image is found (local), pulled, or bootstrapped offline, and the
    runtime image on it is built unless its content-hashed tag exists. ``progress`` hears which path was
    taken, and the build log.
    """
    with _client_scope(client) as engine:
        ready = config.runtime_container_image
        if ready:
            with translate_errors(f"looking up runtime image {ready}"):
                if _image_or_none(engine, ready) is not None:
                    progress(f"runtime image {ready} (local)")
                    return ready
            reason = pull_image(engine, ready, progress)
            if reason is not None:
                raise ImageNotFoundError(
                    f"runtime image {ready} is not present and cannot be pulled ({reason}); pull or load "
                    "it yourself, or unset runtime_container_image to build one from base_container_image"
                )
            progress(f"runtime image {ready} (pulled)")
            return ready
        base = ensure_base_image(engine, config.base_container_image, progress=progress)
        progress(f"base image {base.ref} ({base.how})")
        result = build_runtime_image(base.ref, client=engine, progress=progress)
        return result.tag
