"""The service's settings: command-line options plus its own ``config.toml``.

::

    [sandbox]                 # operators' defaults for every sandbox (any SandboxConfig key);
    cpus = 1                  # a client's own values override them, within [policy]
    memory = "1g"

    [policy]
    networks = ["sidecars"]   # existing Docker networks sandboxes may join (none by default)
    volume_roots = ["/srv/agent-work"]   # added to --allow-volume-root
    allow_named_volumes = false
    idle_timeout = 1800       # seconds without activity before a sandbox is paused (default and maximum)
    max_lifetime = 86400      # seconds after creation before it is removed (default and maximum)
    allow_keep_alive = false  # may a create exempt its sandbox from idle_timeout?
    host_ports = [11434]   # host ports sandboxes may reach at host.docker.internal (none by default)

    [[pool]]                  # a warm pool: `size` ready sandboxes of this profile (no volumes)
    name = "default"
    size = 2
    hardened = true           # any SandboxConfig key, over [sandbox]
    labels = {team = "a"}     # container labels; a create is served from the pool when its
                              # effective config and its labels are exactly the profile's

    [[pool]]                  # a pool of OpenHands runtimes: OpenHands' /start is served from it when
    name = "openhands"        # it posts exactly this image, command, working_dir and environment
    size = 2                  # (and its scaled limits equal the profile's)
    [pool.openhands]
    image = "docker.openhands.dev/openhands/runtime:0.62-nikolaik"
    command = ["/openhands/micromamba/bin/micromamba", "run", "-n", "openhands", "..."]
    working_dir = "/openhands/code/"

Defaults: listen on ``127.0.0.1:8473``; data in ``$XDG_STATE_HOME/agentbox/service`` (``~/.local/state/...``),
or ``/var/lib/agentbox/service`` when run as root.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from agentbox.config import FIELDS, SandboxConfig, resolve_config
from agentbox.errors import AgentboxError, ConfigError
from agentbox.netpolicy.rules import normalize_host_ports
from agentbox.service.policy import Policy

if TYPE_CHECKING:
    from agentbox.service.openhands.models import Launch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "PoolSpec", "ServiceSettings", "default_data_dir", "load_settings"]

DEFAULT_HOST = "127.0.0.1"
#: The service's documented default port ("AGBX" would not fit; 8473 is unassigned by IANA).
DEFAULT_PORT = 8473

_TABLES = ("sandbox", "policy", "pool")
_POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_POLICY_KEYS = (
    "networks", "volume_roots", "allow_named_volumes", "idle_timeout", "max_lifetime", "allow_keep_alive",
    "host_ports",
)


def default_data_dir() -> Path:
    """``/var/lib/agentbox/service`` for root, else ``$XDG_STATE_HOME/agentbox/service``."""
    if os.geteuid() == 0:
        return Path("/var/lib/agentbox/service")
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "agentbox" / "service"


@dataclass(frozen=True)
class PoolSpec:
    """One ``[[pool]]`` entry: keep ``size`` ready sandboxes of one profile."""

    name: str
    size: int
    config: dict[str, Any]
    """The profile's own SandboxConfig keys (laid over ``[sandbox]``)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Container labels of its sandboxes (fixed when they are made)."""
    openhands: Launch | None = None
    """An OpenHands pool (``[pool.openhands]``): its sandboxes run this image's own server, and only
    OpenHands' ``/start`` takes them (:mod:`agentbox.service.openhands`)."""


@dataclass(frozen=True)
class ServiceSettings:
    """Everything :func:`agentbox.service.create_app` needs."""

    data_dir: Path
    """Where the database and ``admin.token`` live (0700)."""
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    sandbox_defaults: dict[str, Any] = field(default_factory=dict)
    """The ``[sandbox]`` values of the service config: the base every client's config is laid over."""
    policy: Policy = field(default_factory=Policy)
    backend: str = "docker"
    """Which backend the service drives (``agentbox.backends.get_backend``)."""
    config_file: Path | None = None
    pools: tuple[PoolSpec, ...] = ()
    """Warm pools."""


def _str_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where} must be a list of non-empty strings")
    return list(value)


def _roots(paths: list[str], where: str) -> list[str]:
    out = []
    for path in paths:
        if not os.path.isabs(path):
            raise ConfigError(f"{where}: {path!r} must be an absolute host path")
        out.append(os.path.realpath(path))
    return out


def _pools(value: Any, defaults: dict[str, Any], where: str) -> tuple[PoolSpec, ...]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{where}: pools are [[pool]] tables")
    out: list[PoolSpec] = []
    for i, entry in enumerate(value, 1):
        at = f"{where}: [[pool]] #{i}"
        name, size = entry.get("name"), entry.get("size")
        if not isinstance(name, str) or not _POOL_NAME.match(name):
            raise ConfigError(f"{at}: name must be 1-63 letters, digits, '_', '.', '-'")
        if name in {p.name for p in out}:
            raise ConfigError(f"{at}: a pool called {name!r} is defined twice")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= 1000:
            raise ConfigError(f"{at}: size must be a whole number 0..1000")
        labels = entry.get("labels", {})
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise ConfigError(f"{at}: labels must be a table of strings")
        profile = {k: v for k, v in entry.items() if k not in ("name", "size", "labels", "openhands")}
        unknown = sorted(set(profile) - set(FIELDS))
        if unknown:
            valid = ", ".join(("name", "size", "labels", "openhands", *FIELDS))
            raise ConfigError(f"{at}: unknown key(s) {', '.join(unknown)}; valid: {valid}")
        launch = None
        if "openhands" in entry:
            from agentbox.service.openhands.pooling import pool_launch

            launch = pool_launch(entry["openhands"], {**defaults, **profile}, labels, at)
            profile["runtime_container_image"] = launch.image
        try:
            config = SandboxConfig.model_validate({**defaults, **profile})
        except (ValidationError, AgentboxError) as exc:
            raise ConfigError(f"{at}: {exc}") from None
        if config.volumes:
            raise ConfigError(f"{at}: a pool profile has no volumes (made before its owner is known)")
        out.append(PoolSpec(name, size, profile, dict(labels), launch))
    return tuple(out)


def load_settings(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    config_file: str | os.PathLike[str] | None = None,
    allow_volume_roots: list[str] | tuple[str, ...] = (),
) -> ServiceSettings:
    """Settings from the command line and the service's config file; ConfigError for anything wrong."""
    defaults: dict[str, Any] = {}
    roots = _roots(list(allow_volume_roots), "--allow-volume-root")
    networks: list[str] = []
    named = False
    host_ports: list[int] = []
    keep = False
    lifecycle: dict[str, float | None] = {"idle_timeout": None, "max_lifetime": None}
    pools: tuple[PoolSpec, ...] = ()
    path = Path(config_file) if config_file is not None else None
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read service config {str(path)!r}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"service config {str(path)!r} is not valid TOML: {exc}") from None
        unknown = sorted(set(data) - set(_TABLES))
        if unknown:
            raise ConfigError(f"{path}: unknown table(s) {', '.join(unknown)}; valid: {', '.join(_TABLES)}")
        # The same reader as a local config.toml: same validation, relative paths from the file.
        resolved = resolve_config(config_file=path, environ={}, cwd=str(path.resolve().parent))
        defaults = {
            name: getattr(resolved.config, name) for name, source in resolved.sources.items() if source != "default"
        }
        policy = data.get("policy", {})
        if not isinstance(policy, dict):
            raise ConfigError(f"{path}: [policy] must be a table")
        bad = sorted(set(policy) - set(_POLICY_KEYS))
        if bad:
            raise ConfigError(f"{path}: unknown key(s) {', '.join(bad)} in [policy]; valid: {', '.join(_POLICY_KEYS)}")
        networks = _str_list(policy.get("networks", []), f"{path}: [policy] networks")
        roots += _roots(_str_list(policy.get("volume_roots", []), f"{path}: [policy] volume_roots"),
                        f"{path}: [policy] volume_roots")
        pools = _pools(data.get("pool", []), defaults, str(path))
        try:
            host_ports = normalize_host_ports(policy.get("host_ports", []))
        except ValueError as exc:
            raise ConfigError(f"{path}: [policy] host_ports: {exc}") from None
        named = policy.get("allow_named_volumes", False)
        keep = policy.get("allow_keep_alive", False)
        if not isinstance(named, bool) or not isinstance(keep, bool):
            raise ConfigError(f"{path}: [policy] allow_named_volumes and allow_keep_alive are true or false")
        for key in ("idle_timeout", "max_lifetime"):
            value = policy.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ConfigError(f"{path}: [policy] {key} must be a number of seconds > 0")
            lifecycle[key] = float(value) if value is not None else None
    if not 0 <= port < 65536:
        raise ConfigError(f"--port {port}: must be between 0 (any free port) and 65535")
    return ServiceSettings(
        data_dir=Path(data_dir) if data_dir is not None else default_data_dir(),
        host=host,
        port=port,
        sandbox_defaults=defaults,
        policy=Policy(volume_roots=tuple(dict.fromkeys(roots)), networks=frozenset(networks),
                      allow_named_volumes=named, allow_keep_alive=keep,
                      host_ports=frozenset(host_ports), **lifecycle),
        backend=str(defaults.get("backend", "docker")),
        config_file=path,
        pools=pools,
    )
