"""The backend of a client of a control plane (``agentbox serve``): :class:`ServiceBackend` over its REST
API (:mod:`.api`), runtime calls through its proxy with a bearer token."""

from __future__ import annotations

from agentbox.backends.service.backend import CLIENT_FIELDS, OPERATOR_FIELDS, RemoteSandbox, ServiceBackend

__all__ = ["CLIENT_FIELDS", "OPERATOR_FIELDS", "RemoteSandbox", "ServiceBackend"]
