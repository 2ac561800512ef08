"""What a remote client may ask for: pure checks run before anything is created.

Each refusal names its rule (the ``rule`` of the 403 answer, and the first words of its message):

=====================  ===================================================================================
``host_network``       ``use_host_network`` is never allowed through the service
``volume_roots``       a host bind mount outside every ``--allow-volume-root`` (none by default)
``named_volumes``      a named Docker volume (shared between tenants) unless ``allow_named_volumes``
``networks``           a ``network`` / ``additional_networks`` entry not in ``[policy] networks``
``labels``             a label in agentbox's reserved ``agentbox.`` namespace
``quota.sandboxes``    the token already has ``max_sandboxes`` live sandboxes
``quota.cpus``         the token's live sandboxes would exceed ``max_cpus`` cores (or ``cpus`` unset)
``quota.memory``       likewise for ``max_memory`` bytes
``lifecycle``          an ``idle_timeout`` / ``max_lifetime`` longer than the service's, or ``keep_alive``
                       where ``[policy] allow_keep_alive`` is false
=====================  ===================================================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from agentbox.backends.labels import PREFIX, check_user_labels
from agentbox.config import SandboxConfig
from agentbox.errors import ConfigError
from agentbox.service.errors import ApiError, policy_denied
from agentbox.service.store import Usage

__all__ = ["Policy", "Quota", "check_config", "check_labels", "check_lifecycle", "check_quota"]


@dataclass(frozen=True)
class Policy:
    """The operator's rules for every client's sandbox configuration."""

    volume_roots: tuple[str, ...] = ()
    """Host directories under which bind mounts are allowed (real paths; none by default)."""
    networks: frozenset[str] = frozenset()
    """Existing Docker networks a sandbox may join (``network`` or ``additional_networks``)."""
    allow_named_volumes: bool = False
    """Allow named Docker volumes (any tenant naming the same volume shares its data)."""
    idle_timeout: float | None = None
    """Seconds without activity before the service pauses a sandbox: the default and the maximum."""
    max_lifetime: float | None = None
    """Seconds after creation before the service removes a sandbox: the default and the maximum."""
    allow_keep_alive: bool = False
    """Whether a create may exempt its sandbox from the idle timeout."""
    host_ports: frozenset[int] = frozenset()
    """Host ports a sandbox may reach through ``host_ports`` (none by default: they are host services)."""


@dataclass(frozen=True)
class Quota:
    """A token's limits over all its live sandboxes; None is unlimited."""

    max_sandboxes: int | None = None
    max_cpus: float | None = None
    max_memory: int | None = None


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_config(config: SandboxConfig, raw_volumes: list[str], policy: Policy) -> None:
    """Refuse a configuration the policy does not allow (an :class:`ApiError`, 403 naming the rule).

    ``raw_volumes`` are the entries as the client sent them: relative host paths mean nothing on the
    service's host, so they are refused before parsing would resolve them against its directory.
    """
    if config.use_host_network:
        raise policy_denied("host_network", "use_host_network is not allowed through the service")
    refused_ports = sorted(set(config.host_ports) - policy.host_ports)
    if refused_ports:
        allowed = ", ".join(str(p) for p in sorted(policy.host_ports)) or "none"
        raise policy_denied(
            "host_ports", f"host_ports {refused_ports} are not in the service's allow-list ({allowed})"
        )
    for entry in raw_volumes:
        host = entry.strip().split(":", 1)[0]
        if host.startswith((".", "~")) or ("/" in host and not host.startswith("/")):
            raise ApiError(
                "validation_error", f"volumes: {entry!r}: host paths must be absolute through the service"
            )
    for mount in config.volumes:
        if mount.kind == "volume":
            if not policy.allow_named_volumes:
                raise policy_denied(
                    "named_volumes", f"volume {mount.spec()!r}: named volumes are not allowed by this service"
                )
            continue
        # The engine follows symlinks when it binds: judge where the path really leads.
        real = os.path.realpath(mount.source)
        if not any(_under(real, root) for root in policy.volume_roots):
            roots = ", ".join(policy.volume_roots) or "none are allowed"
            raise policy_denied(
                "volume_roots",
                f"volume {mount.spec()!r}: host path {real} is not under an allowed root ({roots}; "
                "the operator adds roots with --allow-volume-root)",
            )
    wanted = [n for n in (config.network, *config.additional_networks) if n is not None and n != "none"]
    for name in wanted:
        if name not in policy.networks:
            allowed = ", ".join(sorted(policy.networks)) or "none"
            raise policy_denied("networks", f"network {name!r} is not in the service's allow-list ({allowed})")


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A client's extra labels; everything under ``agentbox.`` that is agentbox's (or the service's) is
    refused, so a client can neither forge an owner nor pass as a service-managed sandbox."""
    try:
        out = check_user_labels(labels)
    except ConfigError as exc:
        raise policy_denied("labels", str(exc)) from None
    from agentbox.service.labels import SERVICE_LABELS

    forged = sorted(k for k in out if k in SERVICE_LABELS or (k.startswith(PREFIX + "service")))
    if forged:
        raise policy_denied("labels", f"labels {', '.join(forged)} are set by the service itself")
    return out


def check_quota(config: SandboxConfig, quota: Quota, usage: Usage, token: str) -> None:
    """Refuse a sandbox that would take ``token`` over its quota (``usage``: its live sandboxes)."""
    if quota.max_sandboxes is not None and usage.sandboxes + 1 > quota.max_sandboxes:
        raise policy_denied(
            "quota.sandboxes",
            f"token {token!r} may have {quota.max_sandboxes} sandbox(es) and has {usage.sandboxes}; "
            "remove one first",
        )
    if quota.max_cpus is not None:
        if config.cpus is None or usage.unlimited_cpus:
            raise policy_denied(
                "quota.cpus", f"token {token!r} has a CPU quota ({quota.max_cpus:g}): every sandbox must set cpus"
            )
        if usage.cpus + config.cpus > quota.max_cpus + 1e-9:
            raise policy_denied(
                "quota.cpus",
                f"token {token!r} may use {quota.max_cpus:g} cpus; {usage.cpus:g} in use, {config.cpus:g} asked",
            )
    if quota.max_memory is not None:
        if config.memory is None or usage.unlimited_memory:
            raise policy_denied(
                "quota.memory", f"token {token!r} has a memory quota ({quota.max_memory} bytes): set memory"
            )
        if usage.memory + config.memory > quota.max_memory:
            raise policy_denied(
                "quota.memory",
                f"token {token!r} may use {quota.max_memory} bytes of memory; {usage.memory} in use, "
                f"{config.memory} asked",
            )


def check_lifecycle(
    idle_timeout: float | None, max_lifetime: float | None, keep_alive: bool, policy: Policy
) -> tuple[float | None, float | None, bool]:
    """The (idle timeout, max lifetime, keep-alive) of a new sandbox: what it asked for, within the policy,
    with the service's values as defaults."""
    if keep_alive and not policy.allow_keep_alive:
        raise policy_denied("lifecycle", "keep_alive is not allowed by this service")
    for name, asked, limit in (("idle_timeout", idle_timeout, policy.idle_timeout),
                               ("max_lifetime", max_lifetime, policy.max_lifetime)):
        if asked is not None and limit is not None and asked > limit:
            raise policy_denied("lifecycle", f"{name} {asked:g} s is longer than this service allows ({limit:g} s)")
    return (
        idle_timeout if idle_timeout is not None else policy.idle_timeout,
        max_lifetime if max_lifetime is not None else policy.max_lifetime,
        keep_alive,
    )
