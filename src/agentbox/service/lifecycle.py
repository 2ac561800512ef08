"""Idle and lifetime policy: pause a sandbox nobody used for ``idle_timeout`` seconds, remove it
``max_lifetime`` seconds after creation. Timers, not a sweep: each sandbox has at most two loop timers.

Activity is a request through the proxy (counted when it starts), and a request still open (a long
command's SSE stream, a WebSocket) holds the sandbox awake until it ends: an idle pause never freezes a
command someone is watching. When an idle timer fires it re-arms itself if there was activity meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from datetime import datetime, timezone
from typing import Any

from agentbox.service.store import SandboxRow

__all__ = ["Lifecycle"]

Action = Callable[[str], Coroutine[Any, Any, Any]]


class Lifecycle:
    """The timers of every sandbox; ``on_idle(id)`` and ``on_expired(id)`` do the pausing and removing."""

    def __init__(self, on_idle: Action, on_expired: Action) -> None:
        self._on_idle = on_idle
        self._on_expired = on_expired
        self._idle: dict[str, asyncio.TimerHandle] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._timeouts: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._inflight: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[Any]] = set()

    def track(self, row: SandboxRow) -> None:
        """(Re)arm the timers of ``row`` for its current state (call after every change of state)."""
        loop = asyncio.get_running_loop()
        if row.max_lifetime is not None and row.id not in self._expiry and row.owner:
            created = datetime.fromisoformat(row.created)
            left = row.max_lifetime - (datetime.now(timezone.utc) - created).total_seconds()
            self._expiry[row.id] = loop.call_later(max(0.0, left), self._fire, self._on_expired, row.id)
        handle = self._idle.pop(row.id, None)
        if handle is not None:
            handle.cancel()
        if row.state == "running" and row.idle_timeout is not None and not row.keep_alive:
            self._timeouts[row.id] = row.idle_timeout
            self._last.setdefault(row.id, time.monotonic())
            self._idle[row.id] = loop.call_later(row.idle_timeout, self._idle_check, row.id)

    def touch(self, sandbox_id: str) -> None:
        """A request reached the sandbox."""
        self._last[sandbox_id] = time.monotonic()

    def begin(self, sandbox_id: str) -> None:
        """A request to the sandbox started (it stays awake until :meth:`end`)."""
        self._inflight[sandbox_id] += 1
        self.touch(sandbox_id)

    def end(self, sandbox_id: str) -> None:
        """That request ended."""
        self._inflight[sandbox_id] -= 1
        if self._inflight[sandbox_id] <= 0:
            del self._inflight[sandbox_id]
        self.touch(sandbox_id)

    def forget(self, sandbox_id: str) -> None:
        """Drop every timer of a sandbox that is gone (or dead)."""
        for timers in (self._idle, self._expiry):
            handle = timers.pop(sandbox_id, None)
            if handle is not None:
                handle.cancel()
        self._timeouts.pop(sandbox_id, None)
        self._last.pop(sandbox_id, None)

    def close(self) -> None:
        """Cancel every timer."""
        for sandbox_id in list(self._idle) + list(self._expiry):
            self.forget(sandbox_id)

    def _idle_check(self, sandbox_id: str) -> None:
        self._idle.pop(sandbox_id, None)
        timeout = self._timeouts.get(sandbox_id)
        if timeout is None:
            return
        loop = asyncio.get_running_loop()
        quiet_since = self._last.get(sandbox_id, time.monotonic())
        if self._inflight[sandbox_id] > 0:
            self._idle[sandbox_id] = loop.call_later(timeout, self._idle_check, sandbox_id)
        elif time.monotonic() - quiet_since < timeout:
            self._idle[sandbox_id] = loop.call_later(quiet_since + timeout - time.monotonic(), self._idle_check,
                                                     sandbox_id)
        else:
            self._fire(self._on_idle, sandbox_id)

    def _fire(self, action: Action, sandbox_id: str) -> None:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(action(sandbox_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
