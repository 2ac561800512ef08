"""The control plane, ``agentbox serve``: one service that owns sandboxes on a backend for many clients.

=================  ==================================================================================
``app``            ``create_app(settings)``: thin routes, auth middleware, lifespan (store, reconcile)
``sandboxes``      the work: create / lifecycle / remove / reconcile, on the Backend interface only
``pool``           warm pools: ready sandboxes handed to matching creates, refilled in the background
``lifecycle``      idle and lifetime timers
``engine_events``  the engine's event stream (sandboxes dying behind the service's back)
``events``         state changes fanned out to ``GET /v1/events``
``proxy``          reverse proxy to each sandbox's runtime server (HTTP, SSE, WebSocket)
``store``          SQLite state: tokens (digests), sandbox records (with session keys), audit log
``auth``           bearer tokens
``policy``         what a client may ask for (mounts, networks, quotas), each refusal naming its rule
``settings``       command-line options and the service's config.toml
``models``         the REST v1 wire models
``errors``         the wire error codes and the translation of agentbox errors
``metrics``        Prometheus metrics
``labels``         the labels the service adds (``agentbox.service``, ``agentbox.service-pool``)
=================  ==================================================================================
"""

from __future__ import annotations

from agentbox.service.app import create_app
from agentbox.service.settings import DEFAULT_PORT, ServiceSettings, load_settings

__all__ = ["DEFAULT_PORT", "ServiceSettings", "create_app", "load_settings"]
