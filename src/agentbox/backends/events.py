"""What happens to sandboxes behind their owner's back, as a stream: the values of
:meth:`agentbox.backends.base.Backend.events`, and the two ways a backend can produce them.

* An engine with an event stream (Docker's container events) hands its events over as they happen,
  through a :class:`QueuedEvents` fed by the engine's reader.
* An engine that only lets itself be asked gets :class:`PolledEvents`, the default of
  :meth:`Backend.events`: the sandboxes are listed every :data:`POLL_INTERVAL` seconds (a modest pace,
  not a hot loop) and the differences between two looks (:func:`changes`) become events. A backend
  may also call for a look early (Swarm does, on each node or service event of its manager).

Every stream is closed from any thread (the service's shutdown), which ends the iteration.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Literal, TypeVar

if TYPE_CHECKING:
    from agentbox.backends.base import SandboxInfo

__all__ = ["POLL_INTERVAL", "BackendEvent", "EventKind", "EventStream", "PolledEvents", "QueuedEvents", "changes"]

log = logging.getLogger("agentbox.backends")

#: ``die``: its container exited unasked; ``oom``: the kernel killed a process for memory (a ``die``
#: follows); ``destroy``: removed; ``lost``: its node went down (Swarm), with its processes and files.
EventKind = Literal["die", "oom", "destroy", "start", "pause", "unpause", "lost"]

_S = TypeVar("_S", bound="EventStream")

#: Seconds between two looks of a backend without an event stream.
POLL_INTERVAL = 30.0


@dataclass(frozen=True)
class BackendEvent:
    """One thing that happened to a sandbox."""

    sandbox_id: str
    """The agentbox sandbox id."""
    kind: EventKind
    """What happened."""
    exit_code: int | None = None
    """``die``: the container's exit code, when the engine tells it."""
    node: str | None = None
    """``lost``: the hostname of the node that went down."""


class EventStream:
    """An iterable of :class:`BackendEvent`, used as a context manager; :meth:`close` (from any thread)
    ends the iteration."""

    def __init__(self) -> None:
        #: Set by :meth:`close` (an iteration that ends without it: the engine's stream gave up).
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[BackendEvent]:
        raise NotImplementedError

    def close(self) -> None:
        """Stop producing events; an iteration in progress ends."""
        self.closed.set()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


_END = object()


class QueuedEvents(EventStream):
    """Events that producer threads :meth:`put`; ``on_close`` stops the producers (closes their engine
    streams). The iteration ends at :meth:`close`, or at :meth:`end` when a producer gives up."""

    def __init__(self, on_close: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self._queue: queue.Queue[object] = queue.Queue()
        self._on_close = on_close

    def put(self, event: BackendEvent) -> None:
        """Deliver one event."""
        self._queue.put(event)

    def end(self) -> None:
        """The producer is done (its stream ended): the iteration ends once the queue is drained."""
        self._queue.put(_END)

    def __iter__(self) -> Iterator[BackendEvent]:
        while True:
            item = self._queue.get()
            if item is _END or self.closed.is_set():
                return
            assert isinstance(item, BackendEvent)
            yield item

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        with contextlib.suppress(Exception):
            self._on_close()
        self._queue.put(_END)


def changes(before: Mapping[str, SandboxInfo], after: Mapping[str, SandboxInfo]) -> builtins.list[BackendEvent]:
    """The events that explain going from one look at the sandboxes (id -> info) to the next."""
    from agentbox.backends.base import SandboxState as S

    events = [BackendEvent(sid, "destroy") for sid in before if sid not in after]
    for sid, now in after.items():
        was = before.get(sid)
        if was is None or was.state is now.state:
            continue
        if now.state is S.LOST:
            events.append(BackendEvent(sid, "lost", node=now.node))
        elif now.state is S.PAUSED:
            events.append(BackendEvent(sid, "pause"))
        elif now.state is S.RUNNING:
            events.append(BackendEvent(sid, "unpause" if was.state is S.PAUSED else "start"))
        elif now.state is S.STOPPED and was.state in (S.RUNNING, S.PAUSED):
            events.append(BackendEvent(sid, "die"))
    return events


class PolledEvents(QueuedEvents):
    """Events from looking at the sandboxes (``look``: a ``Backend.list`` with the caller's labels)
    every ``interval`` seconds, and whenever :meth:`nudge` asks, on a thread of its own.

    The first look is taken before this returns: what changes after it is reported."""

    def __init__(
        self,
        look: Callable[[], builtins.list[SandboxInfo]],
        *,
        interval: float = POLL_INTERVAL,
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(on_close)
        self._look = look
        self._interval = interval
        self._wake = threading.Event()
        self._seen = {i.id: i for i in look()}
        self._thread = threading.Thread(target=self._run, name="agentbox-backend-events", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        """Look now (an engine said something changed), not at the next interval."""
        self._wake.set()

    def _run(self) -> None:
        while not self.closed.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self.closed.is_set():
                return
            try:
                now = {i.id: i for i in self._look()}
            except Exception as exc:  # the engine is away for a moment: look again later
                log.warning("looking at the sandboxes for changes failed (%s); trying again", exc)
                continue
            for event in changes(self._seen, now):
                self.put(event)
            self._seen = now

    def close(self) -> None:
        super().close()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(10)
