"""The Docker engine's container events, reduced to :class:`~agentbox.backends.events.BackendEvent`:
a sandbox's container started, died (with its exit code), was OOM-killed, paused, or removed.

The engine pushes them (``GET /events``, filtered by label): nothing is polled. A reader thread turns the
engine's stream into the backend's; closing the stream closes the engine's connection, which ends the
reader.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from agentbox.backends.docker.errors import engine_errors
from agentbox.backends.events import BackendEvent, EventKind, QueuedEvents
from agentbox.backends.labels import LABELS

__all__ = ["container_events"]

log = logging.getLogger("agentbox.backends.docker")

_KINDS: frozenset[str] = frozenset({"die", "oom", "destroy", "start", "pause", "unpause"})


def event_of(raw: Mapping[str, Any]) -> BackendEvent | None:
    """The backend event for one engine event, or None when it is not about a sandbox (or not wanted)."""
    action = str(raw.get("Action", "")).split(":", 1)[0]  # "exec_start: sh" and such carry a suffix
    if action not in _KINDS:
        return None
    attrs = (raw.get("Actor") or {}).get("Attributes") or {}
    sandbox_id = attrs.get(LABELS.SANDBOX)
    if not sandbox_id:
        return None
    code = str(attrs.get("exitCode") or "")
    kind: EventKind = action  # type: ignore[assignment]  # checked against _KINDS above
    return BackendEvent(str(sandbox_id), kind, int(code) if code.isdigit() else None)


def container_events(api: Any, labels: Mapping[str, str]) -> QueuedEvents:
    """Events of the containers carrying all of ``labels``, from the moment this returns."""
    filters = {"type": "container", "label": [f"{k}={v}" for k, v in labels.items()]}
    with engine_errors("subscribing to the engine's events"):
        raw_stream = api.events(decode=True, filters=filters)
    stream = QueuedEvents(on_close=raw_stream.close)

    def follow() -> None:
        try:
            for raw in raw_stream:
                event = event_of(raw)
                if event is not None:
                    stream.put(event)
        except Exception as exc:
            if not stream.closed.is_set():
                log.warning("the engine's event stream ended (%s)", exc)
        finally:
            stream.end()

    threading.Thread(target=follow, name="agentbox-docker-events", daemon=True).start()
    return stream
