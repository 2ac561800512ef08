"""What happens to the service's sandboxes behind its back (a container died, was OOM-killed or removed;
a Swarm node went down with its sandboxes), followed through :meth:`Backend.events
<agentbox.backends.base.Backend.events>`: the backend's own event stream where its engine has one
(Docker's container events; Swarm's node and service events), else the interface's documented fallback,
a look at the sandboxes every :data:`~agentbox.backends.events.POLL_INTERVAL` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping

from agentbox.backends.base import Backend
from agentbox.backends.events import BackendEvent, EventStream

__all__ = ["EngineEvent", "EngineWatcher"]

log = logging.getLogger("agentbox.service")

#: The service's name for a backend's event (one thing that happened to a sandbox).
EngineEvent = BackendEvent


class EngineWatcher:
    """Follows the backend's events for sandboxes with ``labels`` on a thread, calling ``on_event``
    (from that thread) for each; :meth:`close` ends it."""

    def __init__(self, backend: Backend, labels: Mapping[str, str], on_event: Callable[[EngineEvent], None]) -> None:
        self._backend = backend
        self._labels = dict(labels)
        self._on_event = on_event
        self._stream: EventStream | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Subscribe now (events from this moment on are delivered) and follow them on a thread."""
        self._stream = self._backend.events(self._labels)
        self._thread = threading.Thread(target=self._follow, args=(self._stream,), name="agentbox-engine-events",
                                        daemon=True)
        self._thread.start()

    def _follow(self, stream: EventStream) -> None:
        for event in stream:
            try:
                self._on_event(event)
            except Exception:
                log.exception("handling engine event %s failed", event)
        if not stream.closed.is_set():
            log.warning("the %s backend's event stream ended: dead sandboxes are noticed at the next start",
                        self._backend.name)

    def close(self) -> None:
        """Stop following (unblocks the reading thread)."""
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()
        if self._thread is not None:
            self._thread.join(5)
