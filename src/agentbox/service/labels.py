"""The labels the service adds to what it creates, beside agentbox's own (:mod:`agentbox.backends.labels`).

``agentbox.service`` is not (yet) one of agentbox's reserved keys, so the service refuses it in clients'
labels itself (:func:`agentbox.service.policy.check_labels`); adding it to ``LABELS`` would make every
creator refuse it.
"""

from __future__ import annotations

__all__ = ["SERVICE", "SERVICE_LABELS", "SERVICE_POOL"]

SERVICE = "agentbox.service"
"""The id of the service that owns the sandbox: it adopts these on start and removes those it has no record of."""

SERVICE_POOL = "agentbox.service-pool"
"""On a warm pool's sandboxes: the pool it was made for."""

SERVICE_LABELS = frozenset({SERVICE, SERVICE_POOL})
