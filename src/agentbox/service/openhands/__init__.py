"""OpenHands' remote runtime API on the control plane (issue 13): an unmodified OpenHands, configured with
``RUNTIME=remote``, ``SANDBOX_REMOTE_RUNTIME_API_URL=<service>/openhands`` and ``SANDBOX_API_KEY=<token>``,
runs its sandboxes here. :mod:`.models` the wire shapes, :mod:`.runtimes` the work, :mod:`.routes` the router."""

from agentbox.service.openhands.routes import openhands_router

__all__ = ["openhands_router"]
