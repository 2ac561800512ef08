"""The engine's own event stream, reduced to what the service needs: a sandbox's container died, was
OOM-killed, or was removed behind the service's back. Event-driven: no polling loop.

The :class:`~agentbox.backends.base.Backend` interface has no event stream yet, so this reaches the
Docker engine through the backend's ``client`` (the one engine detail the service touches, in this one
file). The method the interface should grow, so every backend can provide it::

    @abc.abstractmethod
    def events(self, labels: Mapping[str, str]) -> ContextManager[Iterator[EngineEvent]]:
        '''Container events of sandboxes carrying all of ``labels``, as they happen, until the context
        exits (which unblocks the iterator from any thread).'''

with ``EngineEvent(sandbox_id: str, kind: Literal["die", "oom", "destroy", "start", "pause", "unpause"],
exit_code: int | None)``. A backend without events would make the service fall back to reconcile-on-start.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from agentbox.backends.base import Backend
from agentbox.backends.labels import LABELS

__all__ = ["EngineEvent", "EngineWatcher"]

log = logging.getLogger("agentbox.service")

Kind = Literal["die", "oom", "destroy", "start", "pause", "unpause"]
_KINDS: frozenset[str] = frozenset({"die", "oom", "destroy", "start", "pause", "unpause"})


@dataclass(frozen=True)
class EngineEvent:
    """One thing that happened to a sandbox's container."""

    sandbox_id: str
    kind: Kind
    exit_code: int | None = None


class EngineWatcher:
    """Follows the engine's events for containers with ``labels`` on a thread, calling ``on_event``
    (from that thread) for each; :meth:`close` ends it."""

    def __init__(self, backend: Backend, labels: Mapping[str, str], on_event: Callable[[EngineEvent], None]) -> None:
        self._backend = backend
        self._labels = dict(labels)
        self._on_event = on_event
        self._stream: Any = None
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def supported(self) -> bool:
        """Whether this backend's engine can stream events (today: it has a Docker client)."""
        return hasattr(self._backend, "client")

    def start(self) -> None:
        """Subscribe now (events from this moment on are delivered) and follow them on a thread."""
        if not self.supported:
            log.warning("backend %s has no event stream: dead sandboxes are noticed at the next start",
                        self._backend.name)
            return
        client = self._backend.client  # type: ignore[attr-defined]
        filters = {"type": "container", "label": [f"{k}={v}" for k, v in self._labels.items()]}
        self._stream = client.api.events(decode=True, filters=filters)
        self._thread = threading.Thread(target=self._follow, name="agentbox-engine-events", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            for raw in self._stream:
                action = str(raw.get("Action", "")).split(":", 1)[0]
                if action not in _KINDS:
                    continue
                attrs = (raw.get("Actor") or {}).get("Attributes") or {}
                sandbox_id = attrs.get(LABELS.SANDBOX)
                if not sandbox_id:
                    continue
                code = attrs.get("exitCode")
                event = EngineEvent(sandbox_id, action, int(code) if code and code.isdigit() else None)  # type: ignore[arg-type]
                try:
                    self._on_event(event)
                except Exception:
                    log.exception("handling engine event %s failed", event)
        except Exception as exc:
            if not self._closed.is_set():
                log.warning("the engine's event stream ended (%s): dead sandboxes are noticed at the next start",
                            exc)

    def close(self) -> None:
        """Stop following (unblocks the reading thread)."""
        self._closed.set()
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()
        if self._thread is not None:
            self._thread.join(5)
