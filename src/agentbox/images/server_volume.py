"""The runtime server's own code, read-only to every sandbox: one named volume per runtime image.

``/opt/agentbox`` (the server's source, venv and entrypoint) must not be writable from inside a
sandbox, whatever the sandbox's uid, mode or sudo: the host trusts that server to report results.
Ownership alone cannot do it (uid 0 with CAP_DAC_OVERRIDE writes anything), and a sandbox has no
CAP_SYS_ADMIN in any mode, so a read-only *mount* is something it cannot undo. Docker 20.10 cannot mount
a path of an image, so the image's ``/opt/agentbox`` is copied once into a named volume::

    agentbox-server-<12 hex of the image id>   labels agentbox.managed=1, agentbox.role=server,
                                               agentbox.image=<image id>

which every sandbox from that image mounts read-only at ``/opt/agentbox``. The copy is Docker's own
(a volume mounted where the image has content is filled from it while still empty), made by a
short-lived filler container named ``<volume>-fill``. That name is the cross-process lock: the engine
reserves a container name before it creates the container's volumes, so whoever sees the volume also sees
its filler until the filler has finished, and a second process waits for the first one's filler instead of
filling the same volume at the same time.

:func:`prune_server_volumes` removes the volumes whose image is gone (``agentbox images --prune``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agentbox.backends.spec import SERVER_DIR
from agentbox.engine import translate_errors
from agentbox.errors import EngineError
from agentbox.images.build import LABEL_RUNTIME

if TYPE_CHECKING:
    import docker

__all__ = [
    "LABEL_IMAGE",
    "ROLE_SERVER",
    "ensure_server_volume",
    "prune_server_volumes",
    "server_volume_name",
]

LABEL_MANAGED = "agentbox.managed"
LABEL_ROLE = "agentbox.role"
#: The image (full id) a server volume was filled from.
LABEL_IMAGE = "agentbox.image"
ROLE_SERVER = "server"
ROLE_FILLER = "server-fill"
# Attempts at getting a filled volume when other processes fill or abandon it at the same time.
FILL_ATTEMPTS = 5
# Seconds a filler may take: Docker copies ~120 MB / 12,000 files, about 2 s on a loaded 2-core machine.
FILL_TIMEOUT = 300

# Volumes this process has seen filled: later sandboxes only check that the volume still exists.
_filled: set[str] = set()
_lock = threading.Lock()


def server_volume_name(image_id: str) -> str:
    """The server volume of the image with this id (``sha256:...``)."""
    return f"agentbox-server-{image_id.removeprefix('sha256:')[:12]}"


def _inspect_volume(api: Any, name: str) -> dict[str, Any] | None:
    from docker.errors import NotFound

    try:
        return dict(api.inspect_volume(name))
    except NotFound:
        return None


def _inspect_container(api: Any, name: str) -> dict[str, Any] | None:
    from docker.errors import NotFound

    try:
        return dict(api.inspect_container(name))
    except NotFound:
        return None


def ensure_server_volume(
    client: docker.DockerClient, image: str, *, labels: Mapping[str, str] | None = None
) -> str | None:
    """The name of ``image``'s server volume, filled from its ``/opt/agentbox``; None when ``image`` is
    not an agentbox runtime image (no ``agentbox.runtime`` label: it has no server to protect).

    ``labels`` are added to a volume created now (tests mark theirs). Costs two engine calls once the
    volume exists (the image, the volume; ~4 ms); the first sandbox of a new image waits for the copy
    (~2 s). None too when ``image`` is absent: the container create that follows reports that, with its
    fix. Raises EngineError when the copy fails.
    """
    from docker.errors import ImageNotFound

    api = client.api
    with translate_errors(f"looking up image {image}"):
        try:
            found = client.images.get(image)
        except ImageNotFound:
            return None  # nothing to mount: creating the container says the image is missing, with the fix
    if (found.labels or {}).get(LABEL_RUNTIME) != "1":
        return None
    name = server_volume_name(found.id)
    with translate_errors(f"preparing the server volume {name}"):
        if name in _filled and _inspect_volume(api, name) is not None:
            return name
        with _lock:
            for _ in range(FILL_ATTEMPTS):
                if _settle(api, name):
                    _filled.add(name)
                    return name
                if _fill(api, name, found.id, labels or {}):
                    _filled.add(name)
                    return name
    raise EngineError(
        f"the server volume {name} of image {image} could not be filled: other processes kept filling or "
        f"removing it; remove it (`docker volume rm {name}`) and try again"
    )


def _settle(api: Any, name: str) -> bool:
    """True when volume ``name`` is filled. Otherwise waits for a running filler, clears what an abandoned
    one left, and returns False: the caller (re)fills."""
    from docker.errors import APIError, NotFound

    volume = _inspect_volume(api, name)
    filler = _inspect_container(api, f"{name}-fill")
    if filler is None:
        return volume is not None
    state = filler.get("State") or {}
    if state.get("Running"):
        with contextlib.suppress(NotFound):
            api.wait(filler["Id"], timeout=FILL_TIMEOUT)
        return False  # look again: its owner removes it once done
    if state.get("Status") == "exited" and state.get("ExitCode") == 0 and volume is not None:
        return True  # finished; its owner is about to remove it
    # Created but never started, or failed: its owner is gone or giving up. The volume may be half-filled
    # (Docker copies only into an empty volume), so it goes too, unless a sandbox already uses it.
    with contextlib.suppress(NotFound):
        api.remove_container(filler["Id"], force=True)
    if volume is not None:
        with contextlib.suppress(APIError):
            api.remove_volume(name)
    return False


def _fill(api: Any, name: str, image_id: str, labels: Mapping[str, str]) -> bool:
    """Create ``name`` filled from ``image_id``'s /opt/agentbox with a one-shot container; False when
    another process's filler got there first."""
    from docker.errors import APIError, NotFound
    from docker.types import Mount

    volume_labels = {**labels, LABEL_MANAGED: "1", LABEL_ROLE: ROLE_SERVER, LABEL_IMAGE: image_id}
    try:
        # The volume is created by this call, after the engine reserved the filler's name (see above).
        created = api.create_container(
            image_id,
            entrypoint=["/bin/true"],
            command=[],
            name=f"{name}-fill",
            labels={**labels, LABEL_MANAGED: "1", LABEL_ROLE: ROLE_FILLER, LABEL_IMAGE: image_id},
            network_disabled=True,
            user="root",
            host_config=api.create_host_config(
                mounts=[Mount(target=SERVER_DIR, source=name, type="volume", labels=volume_labels)]
            ),
        )
    except APIError as exc:
        if exc.status_code == 409:
            return False  # another process's filler: wait for it
        raise
    container_id = created["Id"]
    try:
        api.start(container_id)  # Docker copies the image's /opt/agentbox into the empty volume here
        result = api.wait(container_id, timeout=FILL_TIMEOUT)
        code = result.get("StatusCode")
        if code != 0:
            logs = api.logs(container_id).decode(errors="replace").strip()[-500:]
            raise EngineError(f"filling the server volume {name} failed (exit {code}): {logs or 'no output'}")
    except BaseException:
        with contextlib.suppress(APIError):
            api.remove_container(container_id, force=True)
        with contextlib.suppress(APIError):
            api.remove_volume(name)
        raise
    with contextlib.suppress(NotFound):
        api.remove_container(container_id, force=True)
    return True


def prune_server_volumes(client: docker.DockerClient) -> list[str]:
    """Remove the server volumes whose image no longer exists and that no container uses; returns them."""
    from docker.errors import APIError, NotFound

    removed: list[str] = []
    with translate_errors("listing server volumes"):
        found = client.api.volumes(filters={"label": [f"{LABEL_MANAGED}=1", f"{LABEL_ROLE}={ROLE_SERVER}"]})
    for volume in found.get("Volumes") or []:
        image_id = (volume.get("Labels") or {}).get(LABEL_IMAGE, "")
        if not image_id:
            continue
        try:
            client.api.inspect_image(image_id)
            continue  # its image is still here
        except NotFound:
            pass
        except APIError:
            continue
        try:
            client.api.remove_volume(volume["Name"])
        except NotFound:
            continue
        except APIError as exc:
            if exc.status_code == 409:
                continue  # a container (running from a since-untagged image) still mounts it
            raise EngineError(f"removing server volume {volume['Name']}: {exc.explanation or exc}") from None
        removed.append(volume["Name"])
        _filled.discard(volume["Name"])
    return removed
