"""The runtime images on an engine (found by label, never by name) and pruning the stale ones.

An image is *current* when its content hash is the one this agentbox would build today on the base it
was built from (the base is still present and nothing copied in has changed). Pruning removes the
others: images of older agentbox source, of an older lock file, or of a base image since replaced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentbox.engine import translate_errors
from agentbox.errors import EngineError
from agentbox.images.build import (
    LABEL_BASE,
    LABEL_CONTENT_HASH,
    LABEL_RUNTIME,
    LABEL_VERSION,
    _client_scope,
    _image_or_none,
)
from agentbox.images.context import make_context
from agentbox.images.server_volume import prune_server_volumes

if TYPE_CHECKING:
    import docker

__all__ = ["ImageInfo", "list_images", "prune_images"]


@dataclass(frozen=True)
class ImageInfo:
    """One runtime image on the engine."""

    id: str
    """Image id, ``sha256:...``."""
    tags: tuple[str, ...]
    """Its tags (empty for an untagged, dangling image)."""
    base: str
    """The base image it was built on (label ``agentbox.base``)."""
    content_hash: str
    """Its content hash (label ``agentbox.content-hash``)."""
    version: str
    """The agentbox version that built it (label ``agentbox.version``)."""
    created: str
    """Creation time as the engine reports it (RFC 3339)."""
    size: int
    """Total size in bytes, base layers included."""
    current: bool
    """True when building on its base today would give this very image (same content hash)."""
    labels: Mapping[str, str]
    """All its labels."""


def _current_hashes(client: docker.DockerClient, bases: set[str]) -> dict[str, str]:
    """base ref -> the content hash a build on it would have now (absent bases are left out)."""
    hashes: dict[str, str] = {}
    for base in bases:
        image = _image_or_none(client, base)
        if image is not None:
            hashes[base] = make_context(base, image.id).content_hash
    return hashes


def _infos(client: docker.DockerClient, label_filter: Mapping[str, str] | None) -> list[ImageInfo]:
    selectors = [f"{LABEL_RUNTIME}=1", *(f"{k}={v}" for k, v in (label_filter or {}).items())]
    with translate_errors("listing runtime images"):
        images: list[Any] = client.images.list(filters={"label": selectors})
        current = _current_hashes(client, {(img.labels or {}).get(LABEL_BASE, "") for img in images} - {""})
    infos = []
    for img in images:
        labels = img.labels or {}
        base = labels.get(LABEL_BASE, "")
        content_hash = labels.get(LABEL_CONTENT_HASH, "")
        infos.append(
            ImageInfo(
                id=img.id,
                tags=tuple(img.tags),
                base=base,
                content_hash=content_hash,
                version=labels.get(LABEL_VERSION, ""),
                created=img.attrs.get("Created", ""),
                size=int(img.attrs.get("Size", 0)),
                current=bool(content_hash) and current.get(base) == content_hash,
                labels=dict(labels),
            )
        )
    infos.sort(key=lambda info: info.created, reverse=True)
    return infos


def list_images(
    client: docker.DockerClient | None = None, *, labels: Mapping[str, str] | None = None
) -> list[ImageInfo]:
    """Every runtime image on the engine (label ``agentbox.runtime=1``), newest first.

    ``labels`` narrows the list to images that also carry those labels.
    """
    with _client_scope(client) as engine:
        return _infos(engine, labels)


def prune_images(
    client: docker.DockerClient | None = None,
    keep_current: bool = True,
    *,
    labels: Mapping[str, str] | None = None,
) -> list[str]:
    """Remove runtime images (with ``keep_current``, only those that are not current); returns them.

    Each removed image is named by its first tag, or its id when untagged. Images a container still
    uses are skipped: docker refuses to remove them and agentbox never forces it. ``labels`` narrows
    pruning to images that also carry those labels. The server volumes of images no longer present
    (these, and any removed otherwise) go too.
    """
    from docker.errors import APIError, ImageNotFound

    removed: list[str] = []
    with _client_scope(client) as engine:
        for info in _infos(engine, labels):
            if keep_current and info.current:
                continue
            name = info.tags[0] if info.tags else info.id
            try:
                # Untag every other name first: removing by a tag only untags a multi-tagged image.
                for tag in info.tags[1:]:
                    engine.images.remove(tag)
                engine.images.remove(name)
            except ImageNotFound:
                continue  # removed meanwhile
            except APIError as exc:
                if exc.status_code == 409:
                    continue  # a container still uses it
                raise EngineError(f"removing runtime image {name}: {exc.explanation or exc}") from None
            removed.append(name)
        prune_server_volumes(engine)
    return removed
