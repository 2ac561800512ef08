"""Runtime images: a runtime image from any base image, content-hashed tags, fast rebuilds, offline.

Two knobs of :class:`~agentbox.config.SandboxConfig` decide the image a sandbox runs:
``runtime_container_image`` (a ready image, used as is, pulled if missing) and ``base_container_image``
(any Debian or Ubuntu image; the runtime server is built on top of it). :func:`ensure_runtime_image` is
the one call a backend needs; the CLI's ``agentbox build`` / ``agentbox images`` sit on
:func:`build_runtime_image`, :func:`list_images` and :func:`prune_images`.

The image contract (what the Docker backend relies on)::

    ENTRYPOINT ["/usr/bin/tini", "--", "/opt/agentbox/bin/agentbox-entrypoint"]
    CMD        --uid UID --work-dir DIR --host HOST --port PORT [--hardened]
    /run/agentbox/session-key   put before start (0600): the server's API key, deleted once read
    /run/agentbox/env.sh        optional ``export NAME='value'`` lines, sourced then deleted

The server runs from ``/opt/agentbox/venv`` (not on PATH) as the user with uid UID. ``/opt/agentbox``
is root-owned (0755 directories, 0644 files, the build fails otherwise) and, in a sandbox, a read-only
mount of the image's server volume (:func:`ensure_server_volume`): nothing inside can rewrite the server.
A start without a session key (``docker restart``) waits for one to be put in; env.sh must be put in
before the key.
"""

from agentbox.images.base import BOOTSTRAP_IMAGE, BaseImage, bootstrap_base_image, ensure_base_image
from agentbox.images.build import (
    LABEL_BASE,
    LABEL_CONTENT_HASH,
    LABEL_RUNTIME,
    LABEL_VERSION,
    RUNTIME_REPOSITORY,
    BuildResult,
    build_runtime_image,
    ensure_runtime_image,
)
from agentbox.images.inventory import ImageInfo, list_images, prune_images
from agentbox.images.server_volume import ensure_server_volume, prune_server_volumes, server_volume_name

__all__ = [
    "BOOTSTRAP_IMAGE",
    "LABEL_BASE",
    "LABEL_CONTENT_HASH",
    "LABEL_RUNTIME",
    "LABEL_VERSION",
    "RUNTIME_REPOSITORY",
    "BaseImage",
    "BuildResult",
    "ImageInfo",
    "bootstrap_base_image",
    "build_runtime_image",
    "ensure_base_image",
    "ensure_runtime_image",
    "ensure_server_volume",
    "list_images",
    "prune_images",
    "prune_server_volumes",
    "server_volume_name",
]
