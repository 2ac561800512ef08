"""The service's Prometheus metrics, in a registry of its own (two apps in one process never collide).

=====================================  =========================================================
``agentbox_sandboxes{state}``          records per state (set from the store at each scrape)
``agentbox_sandbox_creates_total``     creates by ``outcome`` (ok: made cold, pooled: from a pool, failed)
``agentbox_sandbox_create_seconds``    create latency: request accepted -> server ready
``agentbox_pool_size{pool}``           warm pool target size per profile
``agentbox_pool_free{pool}``           ready sandboxes waiting in each pool
``agentbox_api_errors_total{code}``    error answers by wire code
``agentbox_proxy_requests_total``      requests forwarded to runtime servers, by ``kind`` (http, ws)
=====================================  =========================================================
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = ("creating", "running", "paused", "stopped", "removing", "dead", "pooled")


class Metrics:
    """Every metric the service exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sandboxes = Gauge("agentbox_sandboxes", "Sandboxes known to the service, by state", ["state"], registry=r)
        self.creates = Counter("agentbox_sandbox_creates", "Sandbox creates, by outcome", ["outcome"], registry=r)
        self.create_seconds = Histogram(
            "agentbox_sandbox_create_seconds",
            "Seconds from an accepted create to a ready runtime server",
            buckets=(0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0),
            registry=r,
        )
        self.pool_size = Gauge("agentbox_pool_size", "Target size of each warm pool", ["pool"], registry=r)
        self.pool_free = Gauge("agentbox_pool_free", "Ready sandboxes in each warm pool", ["pool"], registry=r)
        self.api_errors = Counter("agentbox_api_errors", "Error answers, by wire code", ["code"], registry=r)
        self.proxy_requests = Counter(
            "agentbox_proxy_requests", "Requests forwarded to runtime servers", ["kind"], registry=r
        )
        for outcome in ("ok", "pooled", "failed"):
            self.creates.labels(outcome=outcome)

    def render(self, counts: dict[str, int]) -> bytes:
        """The text exposition, with the per-state gauge set from ``counts``."""
        for state in STATES:
            self.sandboxes.labels(state=state).set(counts.get(state, 0))
        return generate_latest(self.registry)
