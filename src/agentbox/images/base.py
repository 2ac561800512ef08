"""The base image a runtime image is built on: the configured one if it can be had, else one made here.

Machines without an image registry (air-gapped, or behind a proxy that only lets package mirrors
through) cannot pull ``nikolaik/python-nodejs``. For them agentbox bootstraps a Debian bookworm root
file system with ``debootstrap`` (from the Debian mirror the machine already uses for apt) with Python 3
and Node.js (with npm) from Debian packages, and imports it as :data:`BOOTSTRAP_IMAGE`, which later runs
reuse. The tag names the recipe, so a changed recipe makes a new base instead of trusting an old one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from agentbox.engine import translate_errors
from agentbox.errors import ImageBuildError, ImageNotFoundError

if TYPE_CHECKING:
    import docker

__all__ = ["BOOTSTRAP_IMAGE", "BaseImage", "bootstrap_base_image", "ensure_base_image", "pull_image"]

BOOTSTRAP_SUITE = "bookworm"
# What the offline base carries: the seed's "basic utilities for Python and NodeJS", as
# nikolaik/python-nodejs (the default base it stands in for) carries them.
BOOTSTRAP_PACKAGES = ("ca-certificates", "python3", "python3-venv", "nodejs", "bash", "procps")
# Installed with apt-get inside the new root after debootstrap: debootstrap's own resolver fails to
# configure npm's tree of ~400 node-* packages (measured), apt-get does it in ~20 s.
BOOTSTRAP_APT_PACKAGES = ("npm",)
_RECIPE = json.dumps([BOOTSTRAP_SUITE, "minbase", BOOTSTRAP_PACKAGES, BOOTSTRAP_APT_PACKAGES])
BOOTSTRAP_IMAGE = f"agentbox-base:{BOOTSTRAP_SUITE}-{hashlib.sha256(_RECIPE.encode()).hexdigest()[:8]}"
LABEL = "agentbox.base"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BaseImage:
    """A base image that is present on the engine, and how it got there."""

    ref: str
    """The image reference to build on."""
    how: Literal["local", "pulled", "bootstrapped"]
    """present already / pulled from a registry just now / made here with debootstrap."""
    note: str = ""
    """Why this path was taken, for the user."""


def _present(client: docker.DockerClient, ref: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.images.get(ref)
    except ImageNotFound:
        return False
    return True


# A failed pull is remembered for a few minutes, in this process and in a small file for the next ones:
# offline, every `agentbox run` would otherwise ask the registry again, and an unreachable registry can
# take a connect timeout to say no.
PULL_RETRY_SECONDS = 300.0
_failed_pulls: dict[str, tuple[float, str]] = {}


def _failures_file() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "agentbox", "failed-pulls.json")


def _recent_failure(ref: str) -> str | None:
    """The reason ``ref`` could not be pulled, if that was found out less than PULL_RETRY_SECONDS ago."""
    now = time.time()
    failed = _failed_pulls.get(ref)
    if failed is None:
        try:
            with open(_failures_file(), encoding="utf-8") as f:
                stored = json.load(f).get(ref)
            if isinstance(stored, list) and len(stored) == 2:
                failed = (float(stored[0]), str(stored[1]))
        except (OSError, ValueError, AttributeError):
            failed = None
    if failed is not None and 0 <= now - failed[0] < PULL_RETRY_SECONDS:
        return failed[1]
    return None


def _remember_pull(ref: str, reason: str | None) -> None:
    path = _failures_file()
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    if reason is None:
        _failed_pulls.pop(ref, None)
        if data.pop(ref, None) is None:
            return
    else:
        _failed_pulls[ref] = (time.time(), reason)
        data[ref] = [time.time(), reason]
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass  # only an optimisation: the next process asks the registry again


def pull_image(client: docker.DockerClient, ref: str, progress: Progress) -> str | None:
    """Pull ``ref``; None on success, else the engine's reason (remembered for a few minutes)."""
    from docker.errors import DockerException

    failed = _recent_failure(ref)
    if failed is not None:
        return failed
    progress(f"pulling {ref} ...")
    try:
        client.images.pull(ref)
    except DockerException as exc:
        reason = str(getattr(exc, "explanation", None) or exc).splitlines()[0][:200]
        _remember_pull(ref, reason)
        return reason
    _remember_pull(ref, None)
    return None


def ensure_base_image(
    client: docker.DockerClient,
    ref: str,
    *,
    allow_bootstrap: bool = True,
    progress: Progress = lambda _msg: None,
) -> BaseImage:
    """Make sure a base image is present: ``ref`` if local or pullable, else the bootstrapped Debian one.

    Raises ImageNotFoundError when ``ref`` cannot be had and bootstrapping is not allowed or not possible.
    """
    with translate_errors(f"looking up base image {ref}"):
        if _present(client, ref):
            return BaseImage(ref, "local")
        already_known = _recent_failure(ref) is not None
        reason = pull_image(client, ref, progress)
        if reason is None:
            return BaseImage(ref, "pulled", f"pulled {ref}")
        if not allow_bootstrap:
            raise ImageNotFoundError(
                f"base image {ref} is not present and cannot be pulled ({reason}); "
                "pull it on a connected machine, or let agentbox bootstrap a Debian base"
            )
        note = f"{ref} cannot be pulled ({reason}); using the locally bootstrapped {BOOTSTRAP_IMAGE}"
        if not already_known:  # said once when found out, not again by every later lookup
            progress(note)
        if _present(client, BOOTSTRAP_IMAGE):
            return BaseImage(BOOTSTRAP_IMAGE, "bootstrapped", note)
    bootstrap_base_image(client, progress=progress)
    return BaseImage(BOOTSTRAP_IMAGE, "bootstrapped", note)


def bootstrap_base_image(
    client: docker.DockerClient,
    *,
    tag: str = BOOTSTRAP_IMAGE,
    progress: Progress = lambda _msg: None,
) -> str:
    """Build a Debian bookworm base image with debootstrap and ``docker import``; returns the tag."""
    if shutil.which("debootstrap") is None:
        raise ImageBuildError(
            "cannot bootstrap a base image: debootstrap is not installed "
            "(apt-get install debootstrap, or run `agentbox doctor --fix`)"
        )
    if os.geteuid() != 0:
        raise ImageBuildError("bootstrapping a base image needs root (debootstrap creates device files)")
    workdir = tempfile.mkdtemp(prefix="agentbox-bootstrap-", dir="/var/tmp")
    rootfs = os.path.join(workdir, "rootfs")
    log_path = os.path.join(workdir, "debootstrap.log")
    try:
        progress(f"bootstrapping Debian {BOOTSTRAP_SUITE} with debootstrap (about a minute) ...")
        cmd = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BOOTSTRAP_PACKAGES)}",
            BOOTSTRAP_SUITE,
            rootfs,
        ]
        with open(log_path, "wb") as log:
            result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            with open(log_path, "rb") as log:
                tail = log.read()[-1500:].decode(errors="replace")
            raise ImageBuildError(f"debootstrap failed (exit {result.returncode}):\n{tail}")
        progress(f"installing {', '.join(BOOTSTRAP_APT_PACKAGES)} in the new root with apt-get ...")
        apt = (
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
            f"--no-install-recommends {' '.join(BOOTSTRAP_APT_PACKAGES)} && apt-get clean"
        )
        with open(log_path, "ab") as log:
            result = subprocess.run(["chroot", rootfs, "sh", "-c", apt], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            with open(log_path, "rb") as log:
                tail = log.read()[-1500:].decode(errors="replace")
            raise ImageBuildError(f"apt-get in the bootstrapped root failed (exit {result.returncode}):\n{tail}")
        # apt's lists and caches are large and stale by the time anyone uses the image.
        for junk in ("var/lib/apt/lists", "var/cache/apt/archives"):
            path = os.path.join(rootfs, junk)
            for entry in os.listdir(path):
                full = os.path.join(path, entry)
                if os.path.isfile(full):
                    os.unlink(full)
        progress(f"importing the root file system as {tag} ...")
        repository, _, image_tag = tag.partition(":")
        tar = subprocess.Popen(
            ["tar", "-C", rootfs, "--numeric-owner", "-c", "."],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert tar.stdout is not None
        with translate_errors(f"importing {tag}"):
            client.api.import_image_from_stream(
                tar.stdout,
                repository=repository,
                tag=image_tag or "latest",
                changes=[
                    "ENV LANG=C.UTF-8",
                    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    f"LABEL {LABEL}=bootstrap-{BOOTSTRAP_SUITE}",
                    'CMD ["/bin/bash"]',
                ],
            )
        if tar.wait() != 0:
            raise ImageBuildError(f"tar of the bootstrapped root file system failed (exit {tar.returncode})")
        if not _present(client, tag):
            raise ImageBuildError(f"docker import did not produce {tag}")
        progress(f"bootstrapped base image {tag}")
        return tag
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
