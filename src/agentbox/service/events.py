"""Sandbox state changes, fanned out to every ``GET /v1/events`` subscriber.

Each subscriber has a bounded queue; one that cannot keep up is cut off (its stream ends, it reconnects
and lists) rather than making the service hold an unbounded backlog for it.
"""

from __future__ import annotations

import asyncio

from agentbox.service.models import SandboxEvent

__all__ = ["EventHub"]

QUEUE_SIZE = 1000


class EventHub:
    """Publish/subscribe of :class:`SandboxEvent` within the event loop."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[SandboxEvent | None]] = set()

    def subscribe(self) -> asyncio.Queue[SandboxEvent | None]:
        """A new subscription; ``None`` in it means the stream is over."""
        queue: asyncio.Queue[SandboxEvent | None] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[SandboxEvent | None]) -> None:
        """End a subscription."""
        self._queues.discard(queue)

    def publish(self, event: SandboxEvent) -> None:
        """Give ``event`` to every subscriber (never blocks)."""
        for queue in list(self._queues):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._queues.discard(queue)
                queue.get_nowait()  # room for the end marker
                queue.put_nowait(None)

    def close(self) -> None:
        """End every subscriber's stream."""
        for queue in list(self._queues):
            while queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
        self._queues.clear()
