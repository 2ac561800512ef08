"""The Docker Swarm backend: each sandbox a one-task service placed by a swarm (see :mod:`.backend`)."""

from agentbox.backends.swarm.backend import SwarmBackend

__all__ = ["SwarmBackend"]
