"""The labels the service adds to what it creates: agentbox's own reserved keys
(:mod:`agentbox.backends.labels`), so no client can set them."""

from __future__ import annotations

from agentbox.backends.labels import LABELS

__all__ = ["SERVICE", "SERVICE_LABELS", "SERVICE_POOL"]

SERVICE = LABELS.SERVICE
"""The id of the service that owns the sandbox: it adopts these on start and removes those it has no record of."""

SERVICE_POOL = LABELS.SERVICE_POOL
"""On a warm pool's sandboxes: the pool it was made for."""

SERVICE_LABELS = frozenset({SERVICE, SERVICE_POOL})
