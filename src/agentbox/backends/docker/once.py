"""Per-key single flight: a slow step (an image build, a network create) runs once per key at a time.

Callers that need the same key while it is being made wait for that one result; callers that need
another key do not wait at all. This replaces one process-wide lock, under which a build of minutes
blocked every create in the process, including those needing no build.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

from agentbox.errors import AgentboxError

__all__ = ["OnceByKey"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class OnceByKey(Generic[K, V]):
    """A cache of values made at most once per key at a time; a failure is not cached."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the two dicts only; never held while making a value
        self._done: dict[K, V] = {}
        self._pending: dict[K, Future[V]] = {}

    def get(self, key: K, make: Callable[[], V]) -> V:
        """The value for ``key``: cached, or the result of the call already making it, or ``make()``."""
        with self._lock:
            if key in self._done:
                return self._done[key]
            future = self._pending.get(key)
            owner = future is None
            if future is None:
                future = self._pending[key] = Future()
        if not owner:
            try:
                return future.result()
            except AgentboxError as exc:
                # The owner's caller may mark its error with its own sandbox id: give each waiter a copy.
                clone = copy.copy(exc)
                clone.__dict__.pop("sandbox_id", None)
                raise clone from exc
        try:
            value = make()
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            future.set_exception(exc)
            raise
        with self._lock:
            self._done[key] = value
            del self._pending[key]
        future.set_result(value)
        return value

    def peek(self, key: K) -> V | None:
        """The cached value for ``key``, without making it."""
        with self._lock:
            return self._done.get(key)

    def forget(self, key: K) -> bool:
        """Drop the cached value (it went stale); True if there was one."""
        with self._lock:
            return self._done.pop(key, None) is not None
