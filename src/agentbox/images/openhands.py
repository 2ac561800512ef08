"""OpenHands' sandbox images without a registry: pulled when the engine can, else built here from PyPI.

OpenHands names the images it runs (``SANDBOX_RUNTIME_CONTAINER_IMAGE``, e.g.
``docker.openhands.dev/openhands/runtime:0.62-nikolaik``, and the V1 agent server
``ghcr.io/openhands/agent-server:<sha>-python``). On a machine that reaches no registry,
:func:`ensure_openhands_images` builds one image from the PyPI package ``openhands-ai`` (which depends on the
matching ``openhands-agent-server``) on the bootstrapped Debian base, with the paths OpenHands' commands
expect (:file:`files/openhands/`), and tags it under every name OpenHands asks for. Like the runtime image it
is named by a content hash (``agentbox-openhands:<hash>``: base image id, version, every file copied in,
the host's extra CA certificates) and not built again while that tag exists.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agentbox.engine import translate_errors
from agentbox.errors import ConfigError
from agentbox.images.base import BOOTSTRAP_IMAGE, ensure_base_image, pull_image
from agentbox.images.build import _docker_build, _image_or_none
from agentbox.images.context import CA_CERT_DIR, CA_ENV, FILES_DIR, BuildContext, ContextFile, host_ca_certificates

if TYPE_CHECKING:
    import docker
    from agentbox.images.base import Progress

__all__ = ["DEFAULT_VERSION", "OpenHandsImages", "ensure_openhands_images", "openhands_image_names"]

DEFAULT_VERSION = "0.62.0"
REPOSITORY = "agentbox-openhands"
HASH_SCHEME = "agentbox-openhands/1"
LABEL_CONTENT_HASH = "agentbox.openhands-content-hash"
LABEL_VERSION = "agentbox.openhands-version"
#: Where OpenHands' environment lives in the image (``POETRY_VIRTUALENVS_PATH`` is /openhands/poetry).
VENV = "/openhands/poetry/openhands-ai-py3.13"
OPENHANDS_FILES = FILES_DIR / "openhands"
#: The agent-server image each OpenHands release's V1 app server starts (``AGENT_SERVER_IMAGE``).
AGENT_SERVER_TAGS = {"0.62.0": "ghcr.io/openhands/agent-server:d5995c3-python"}
#: Dependencies are resolved as of a day after each release (uv's --exclude-newer): later releases of
#: them broke it. A version not listed here resolves against today's PyPI.
RELEASED = {"0.62.0": "2025-11-15"}


def openhands_image_names(version: str) -> tuple[str, ...]:
    """The names OpenHands ``version`` runs: its V0 runtime image, and its V1 agent server when known."""
    parts = version.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts):
        raise ConfigError(f"OpenHands version {version!r}: expected a release number such as {DEFAULT_VERSION}")
    names = [f"docker.openhands.dev/openhands/runtime:{parts[0]}.{parts[1]}-nikolaik"]
    if version in AGENT_SERVER_TAGS:
        names.append(AGENT_SERVER_TAGS[version])
    return tuple(names)


@dataclass(frozen=True)
class OpenHandsImages:
    """What :func:`ensure_openhands_images` did."""

    version: str
    names: tuple[str, ...]
    """The names OpenHands asks for, all present now."""
    how: Literal["local", "pulled", "built", "reused"]
    """Present already / pulled / built here from PyPI just now / the content-hashed build existed."""
    image: str
    """The image the names point at (``agentbox-openhands:<hash>`` when built here)."""
    seconds: float


def make_openhands_context(base: str, base_id: str, version: str, *, ca_dir: Path = CA_CERT_DIR) -> BuildContext:
    """The build context of the OpenHands image on ``base`` (image id ``base_id``)."""
    certs = host_ca_certificates(ca_dir)

    def render(name: str) -> bytes:
        text = (OPENHANDS_FILES / name).read_text()
        text = text.replace("@BASE@", base).replace("@VERSION@", version).replace("@VENV@", VENV)
        cutoff = f"--exclude-newer {RELEASED[version]}" if version in RELEASED else ""
        text = text.replace("--exclude-newer @RELEASED@", cutoff)
        return text.replace("@CA_ENV@", CA_ENV if certs else "").encode()

    files = [ContextFile("Dockerfile", render("Dockerfile.in")), ContextFile("micromamba", render("micromamba"), 0o755)]
    seen: set[str] = set()
    for cert in certs:
        name = cert.name if cert.name not in seen else f"{cert.parent.name}-{cert.name}"
        seen.add(name)
        files.append(ContextFile(f"ca-certificates/{name}", cert.read_bytes()))
    digest = hashlib.sha256(f"{HASH_SCHEME}\0{base_id}\0{version}\0".encode())
    for entry in files:
        digest.update(f"{entry.path}\0{entry.mode:o}\0{len(entry.data)}\0".encode())
        digest.update(entry.data)
    return BuildContext(tuple(files), digest.hexdigest(), tuple(sorted(seen)))


class _HostNetworkBuilds:
    """A client whose builds run their steps on the host's network.

    The build only downloads (apt, pip), and it is long: on the host network it does not depend on the
    engine's default bridge (``docker0``), which an engine may lack or lose.
    """

    def __init__(self, client: docker.DockerClient) -> None:
        self._client = client
        self.images = client.images
        self.api = self

    def build(self, **kwargs: Any) -> Any:
        return self._client.api.build(network_mode="host", **kwargs)


def ensure_openhands_images(
    client: docker.DockerClient,
    version: str = DEFAULT_VERSION,
    *,
    pull: bool = True,
    force: bool = False,
    progress: Progress = lambda _line: None,
) -> OpenHandsImages:
    """Make every image OpenHands ``version`` runs present under the name it asks for.

    Names already present and not built by agentbox are kept (``local``). Missing ones are pulled with
    ``pull`` (``pulled``); otherwise, or when a pull fails, one image is built from PyPI (``built``, or
    ``reused`` when its content-hashed tag exists: names agentbox built earlier are checked this way too)
    and tagged under every name. ``force`` builds without the layer cache whatever exists. Raises
    ImageBuildError when the build fails.
    """
    started = time.monotonic()
    names = openhands_image_names(version)
    with translate_errors("looking up OpenHands' images"):
        present = {n: _image_or_none(client, n) for n in names}
    missing = [n for n, image in present.items() if image is None]
    ours = any(image is not None and LABEL_CONTENT_HASH in image.labels for image in present.values())
    if not missing and not ours and not force:
        # Pulled or loaded by the operator: those are the real thing, kept as they are.
        progress(f"OpenHands {version} images present: {', '.join(names)}")
        return OpenHandsImages(version, names, "local", names[0], time.monotonic() - started)
    if missing and not ours and pull and not force:
        failed = [n for n in missing if pull_image(client, n, progress) is not None]
        if not failed:
            return OpenHandsImages(version, names, "pulled", names[0], time.monotonic() - started)
        progress(f"cannot pull {', '.join(failed)}: building OpenHands {version} from PyPI instead")
    # Built here (now or earlier): the content hash says whether the build is current.
    base = ensure_base_image(client, BOOTSTRAP_IMAGE, progress=progress)
    with translate_errors(f"looking up base image {base.ref}"):
        base_id = client.images.get(base.ref).id
    context = make_openhands_context(base.ref, base_id, version)
    target = f"{REPOSITORY}:{context.content_hash[:16]}"
    with translate_errors(f"looking up {target}"):
        existing = _image_or_none(client, target)
    if existing is not None and not force and existing.labels.get(LABEL_CONTENT_HASH) == context.content_hash:
        how: Literal["built", "reused"] = "reused"
        progress(f"{target} is up to date (content hash {context.content_hash[:12]})")
    else:
        how = "built"
        if context.ca_certificates:
            progress(f"carrying CA certificates into the image: {', '.join(context.ca_certificates)}")
        progress(f"building {target}: OpenHands {version} from PyPI on {base.ref} (several minutes) ...")
        labels = {LABEL_CONTENT_HASH: context.content_hash, LABEL_VERSION: version}
        _docker_build(_HostNetworkBuilds(client), context.tar(labels), target, no_cache=force, progress=progress)
    with translate_errors(f"tagging {target}"):
        image = client.images.get(target)
        for name in names:
            repository, _, tag = name.rpartition(":")
            image.tag(repository, tag)
    progress(f"tagged {target} as {', '.join(names)}")
    return OpenHandsImages(version, names, how, target, time.monotonic() - started)
