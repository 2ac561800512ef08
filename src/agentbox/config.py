"""One typed ``SandboxConfig``, resolved from four sources with a documented precedence.

Lowest to highest::

    defaults  <  config.toml [sandbox]  <  environment SANDBOX_<KEY>  <  explicit arguments

The file is ``--config`` / ``AGENTBOX_CONFIG``, else ``./config.toml`` when present. Environment passed
*into* the sandbox comes from ``SANDBOX_ENV_<NAME>=value`` (and an ``env`` table in the file).

The deprecated ``WORKSPACE_BASE``, ``WORKSPACE_MOUNT_PATH``, ``WORKSPACE_MOUNT_PATH_IN_SANDBOX`` and
``WORKSPACE_MOUNT_REWRITE`` variables still produce a mount when ``SANDBOX_VOLUMES`` is unset, with one
warning naming the equivalent ``SANDBOX_VOLUMES``; when it is set they are ignored, with a warning.

Every value remembers where it came from (``resolve_config(...).sources``) so ``agentbox config`` can
say it, and every bad value is reported with its source, the value, and the expected form.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agentbox.errors import ConfigError, VolumeSpecError
from agentbox.volumes import Mount, format_volumes, parse_volumes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "DEFAULT_BASE_IMAGE",
    "ENV_PREFIX",
    "ResolvedConfig",
    "SandboxConfig",
    "resolve_config",
]

DEFAULT_BASE_IMAGE = "nikolaik/python-nodejs:python3.12-nodejs22"
ENV_PREFIX = "SANDBOX_"
ENV_PASS_PREFIX = "SANDBOX_ENV_"
CONFIG_ENV = "AGENTBOX_CONFIG"
DEPRECATED_WORKSPACE_VARS = (
    "WORKSPACE_BASE",
    "WORKSPACE_MOUNT_PATH",
    "WORKSPACE_MOUNT_PATH_IN_SANDBOX",
    "WORKSPACE_MOUNT_REWRITE",
)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _json_text(text: str, *, empty: Any, form: str) -> Any:
    """A list- or table-valued setting given as text (an environment variable): JSON, blank = ``empty``."""
    text = text.strip()
    if not text:
        return empty
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"must be {form}") from None


def _form(text: str) -> dict[str, Any]:
    return {"form": text}


class SandboxConfig(BaseModel):
    """Everything that decides how a sandbox is made. Field names are the seed's knobs."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    runtime_container_image: str | None = Field(
        None,
        description="A ready runtime image to use as is; unset: build one from base_container_image.",
        json_schema_extra=_form("an image reference, e.g. agentbox-runtime:abc123"),
    )
    base_container_image: str = Field(
        DEFAULT_BASE_IMAGE,
        description="Any image to build the runtime image on (pulled, or bootstrapped offline).",
        json_schema_extra=_form("an image reference, e.g. debian:bookworm"),
    )
    volumes: list[Mount] = Field(
        default_factory=list,
        description="Mounts, host:container[:mode] entries separated by commas (mode rw or ro).",
        json_schema_extra=_form("host:container[:mode],... e.g. ./src:/workspace,/data:/data:ro"),
    )
    work_dir: str = Field(
        "/workspace",
        description="The sandbox's working directory; a mount at this path is the workspace.",
        json_schema_extra=_form("an absolute path inside the sandbox"),
    )
    user_id: int = Field(
        default_factory=os.getuid,
        description="uid of the sandbox user; files it creates in bind mounts belong to this uid.",
        json_schema_extra=_form("a uid, 0..2147483647 (default: your own uid)"),
    )
    runtime_binding_address: str | None = Field(
        None,
        description=(
            "Host address the runtime server's port is published on (reference runtime: 0.0.0.0). Unset: "
            "this host only (a Unix socket in a private directory on a local engine, else 127.0.0.1)."
        ),
        json_schema_extra=_form("an IP address, e.g. 127.0.0.1 or 0.0.0.0 (empty: this host only)"),
    )
    use_host_network: bool = Field(
        False,
        description="Run the sandbox in the host's network namespace (no isolation, no port mapping).",
        json_schema_extra=_form("true or false"),
    )
    network: str | None = Field(
        None,
        description="Network the sandbox joins: unset = agentbox's managed network, 'none' = no network.",
        json_schema_extra=_form("a Docker network name, or none"),
    )
    additional_networks: list[str] = Field(
        default_factory=list,
        description="Extra existing Docker networks, joined before the first command (sidecars).",
        json_schema_extra=_form('a JSON list of network names, e.g. ["net1","net2"]'),
    )
    egress: str | list[str] = Field(
        "open",
        description="What the sandbox may reach: open, none, or an allow-list (through agentbox's egress gateway).",
        json_schema_extra=_form('open, none, or a list of rules, e.g. ["pypi.org","10.1.2.0/24:5432"]'),
    )
    host_ports: list[int] = Field(
        default_factory=list,
        description="Host ports reachable at host.docker.internal:PORT (relayed, also when bound to 127.0.0.1).",
        json_schema_extra=_form("a list of TCP ports, e.g. [11434, 8000]"),
    )
    timeout: float = Field(
        120.0,
        description="Default per-action timeout in seconds.",
        json_schema_extra=_form("seconds, a number > 0"),
    )
    keep_runtime_alive: bool = Field(
        False,
        description="Keep the sandbox running when its handle is closed.",
        json_schema_extra=_form("true or false"),
    )
    backend: Literal["docker", "swarm"] = Field(
        "docker",
        description="Where sandboxes run: docker (one engine, found as the docker CLI finds it), or swarm "
        "(a Docker Swarm whose manager is found the same way, or at swarm_manager).",
        json_schema_extra=_form("docker or swarm"),
    )
    placement: list[str] = Field(
        default_factory=list,
        description="Swarm placement constraints of every sandbox, e.g. [\"node.labels.pool==agents\"].",
        json_schema_extra=_form('a JSON list of Swarm constraints, e.g. ["node.role==worker"]'),
    )
    swarm_manager: str | None = Field(
        None,
        description="Engine URL of a Swarm manager; unset: DOCKER_HOST, as the docker CLI finds its engine.",
        json_schema_extra=_form("an engine URL, e.g. unix:///var/run/docker.sock or tcp://host:2376"),
    )
    swarm_nodes: dict[str, str] = Field(
        default_factory=dict,
        description="Engine URL of each Swarm node by hostname: session keys, pause, logs and image loads "
        "go to the node that runs the sandbox.",
        json_schema_extra=_form('a JSON object, e.g. {"node1": "tcp://10.0.0.11:2376"}'),
    )
    swarm_relay_address: str | None = Field(
        None,
        description="Address of the Swarm manager the relay publishes its one port on; unset: its swarm "
        "address.",
        json_schema_extra=_form("an IP address of the manager node"),
    )
    # A limit of the swarm, not a setting of one sandbox: left out of the dumped form a sandbox's record
    # keeps (and a client's configuration cannot carry it).
    swarm_max_per_node: int | None = Field(
        None,
        description="Most sandboxes a Swarm node runs at once; a create when every eligible node is full "
        "is refused. Unset: no limit.",
        json_schema_extra=_form("a whole number > 0"),
        exclude=True,
    )
    runtime: Literal["runc", "runsc"] = Field(
        "runc",
        description="OCI runtime: runc, or runsc for gVisor.",
        json_schema_extra=_form("runc or runsc"),
    )
    hardened: bool = Field(
        False,
        description="No sudo, all capabilities dropped, no-new-privileges.",
        json_schema_extra=_form("true or false"),
    )
    cpus: float | None = Field(
        None,
        description="CPU limit in cores.",
        json_schema_extra=_form("a number of cores > 0, e.g. 1.5"),
    )
    memory: int | None = Field(
        None,
        description="Memory limit in bytes (accepts 512m, 2g...).",
        json_schema_extra=_form("a size, e.g. 512m or 2g"),
    )
    pids_limit: int | None = Field(
        None,
        description="Maximum number of processes in the sandbox.",
        json_schema_extra=_form("a whole number > 0"),
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment for commands in the sandbox (SANDBOX_ENV_<NAME>=value).",
        json_schema_extra=_form("NAME=value pairs"),
    )

    @field_validator("volumes", mode="before")
    @classmethod
    def _parse_volumes(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return parse_volumes(value)
        if isinstance(value, (list, tuple)):
            return parse_volumes(value)
        return value

    @field_validator("work_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or ":" in value or "," in value:
            raise ValueError("must be an absolute path inside the sandbox, without ':' or ','")
        return os.path.normpath(value)

    @field_validator("user_id")
    @classmethod
    def _uid(cls, value: int) -> int:
        if not 0 <= value <= 2**31 - 1:
            raise ValueError("must be between 0 and 2147483647")
        return value

    @field_validator("runtime_binding_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError("must be an IP address such as 127.0.0.1 or 0.0.0.0") from None

    @field_validator("network")
    @classmethod
    def _network(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        return value.strip() if value is not None else None

    @field_validator("additional_networks", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = _json_text(value, empty=[], form="a JSON list of names")
            if not isinstance(value, list):
                raise ValueError("must be a JSON list of names")
        if isinstance(value, list):
            names = []
            for name in value:
                if not isinstance(name, str) or not name.strip():
                    raise ValueError(f"network names must be non-empty strings, got {name!r}")
                names.append(name.strip())
            if len(set(names)) != len(names):
                raise ValueError("a network is listed twice")
            return names
        return value

    @field_validator("egress", mode="before")
    @classmethod
    def _egress(cls, value: Any) -> Any:
        from agentbox.netpolicy.rules import normalize_egress

        return normalize_egress(value)

    @field_validator("host_ports", mode="before")
    @classmethod
    def _host_ports(cls, value: Any) -> Any:
        from agentbox.netpolicy.rules import normalize_host_ports

        return normalize_host_ports(value)

    @field_validator("placement", mode="before")
    @classmethod
    def _placement(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = _json_text(value, empty=[], form="a JSON list of constraints")
        if isinstance(value, list):
            for item in value:
                if not isinstance(item, str) or not any(op in item for op in ("==", "!=")):
                    raise ValueError(f"{item!r} is not a Swarm constraint (e.g. node.hostname==node2)")
            return [item.strip() for item in value]
        return value

    @field_validator("swarm_nodes", mode="before")
    @classmethod
    def _swarm_nodes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = _json_text(value, empty={}, form="a JSON object of hostname to engine URL")
        return value

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, value: float) -> float:
        if not value > 0:
            raise ValueError("must be > 0")
        return value

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:
            raise ValueError("must be > 0")
        return value

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _SIZE.match(value)
            if not match:
                raise ValueError("must be a size such as 512m or 2g")
            number, unit, _suffix = match.groups()
            value = int(float(number) * _SIZE_UNITS[unit.lower()])
        if isinstance(value, int) and not isinstance(value, bool) and value < 6 * 1024**2:
            raise ValueError("must be at least 6m (Docker's minimum)")
        return value

    @field_validator("pids_limit", "swarm_max_per_node")
    @classmethod
    def _pids(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError("must be > 0")
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            for name in value:
                if not isinstance(name, str) or not _ENV_NAME.match(name):
                    raise ValueError(f"{name!r} is not a valid environment variable name")
            return {k: str(v) if isinstance(v, (int, float, bool)) else v for k, v in value.items()}
        return value

    @classmethod
    def load(cls, config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> SandboxConfig:
        """Resolve the configuration from file, environment and ``overrides`` (see the module doc)."""
        return resolve_config(config_file=config_file, overrides=overrides).config


FIELDS: tuple[str, ...] = tuple(SandboxConfig.model_fields)


def expected_form(name: str) -> str:
    """The human description of the values a field accepts."""
    extra = SandboxConfig.model_fields[name].json_schema_extra
    return str(extra.get("form", "")) if isinstance(extra, dict) else ""


def env_name(name: str) -> str:
    """The environment variable for a field: SANDBOX_<NAME>."""
    return ENV_PREFIX + name.upper()


@dataclass
class ResolvedConfig:
    """A configuration with, for every field, where its value came from, and what was worth warning."""

    config: SandboxConfig
    sources: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    config_file: str | None = None
    ignored_env: list[str] = field(default_factory=list)


def _check_value(name: str, value: Any, source: str) -> Any:
    """Validate one value alone so an error can name its source; returns the typed value."""
    try:
        return getattr(SandboxConfig.model_validate({name: value}), name)
    except VolumeSpecError as exc:
        raise VolumeSpecError(f"{source}: {exc}") from None
    except ValidationError as exc:
        reasons = "; ".join(_reason(err) for err in exc.errors())
        raise ConfigError(
            f"{source}: invalid value {value!r} for {name}: {reasons}. Expected {expected_form(name)}."
        ) from None


def _reason(err: Any) -> str:
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def _closest(key: str, choices: list[str]) -> str | None:
    match = difflib.get_close_matches(key, choices, n=1, cutoff=0.75)
    return match[0] if match else None


def _toml_line(text: str, section: str, key: str) -> int | None:
    """Line number of ``key =`` inside ``[section]`` (tomllib keeps no positions)."""
    current = None
    pattern = re.compile(rf'^\s*["\']?{re.escape(key)}["\']?\s*=')
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("[") and not stripped.startswith("[["):
            current = stripped.strip("[]").strip()
            continue
        if current == section and pattern.match(line):
            return number
    return None


def _find_config_file(config_file: str | os.PathLike[str] | None, environ: Mapping[str, str], cwd: str) -> Path | None:
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} (from --config) does not exist")
        return path
    if environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} (from {CONFIG_ENV}) does not exist")
        return path
    default = Path(cwd) / "config.toml"
    return default if default.is_file() else None


def _read_file(path: Path, cwd: str) -> dict[str, tuple[Any, str]]:
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    section = data.get("sandbox", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [sandbox] must be a table")
    values: dict[str, tuple[Any, str]] = {}
    for key, value in section.items():
        line = _toml_line(text, "sandbox", key)
        where = f"{path}:{line}" if line else str(path)
        if key not in FIELDS:
            hint = _closest(key, list(FIELDS))
            suggestion = f"; did you mean {hint!r}?" if hint else f"; valid keys: {', '.join(FIELDS)}"
            raise ConfigError(f"{where}: unknown key {key!r} in [sandbox]{suggestion}")
        if key == "volumes" and isinstance(value, (str, list)):
            # Relative host paths in a file are relative to the file, not to wherever agentbox runs.
            try:
                value = parse_volumes(value, cwd=str(path.resolve().parent))
            except VolumeSpecError as exc:
                raise VolumeSpecError(f"{where}: {exc}") from None
        values[key] = (value, f"{path}:{line}" if line else str(path))
    return values


def _deprecated_workspace(environ: Mapping[str, str], warnings: list[str], volumes_set: bool) -> str | None:
    """The SANDBOX_VOLUMES equivalent of the deprecated WORKSPACE_* variables, if they apply."""
    present = [name for name in DEPRECATED_WORKSPACE_VARS if environ.get(name)]
    if not present:
        return None
    if volumes_set:
        warnings.append(
            f"{', '.join(present)} ignored: SANDBOX_VOLUMES is set and takes precedence "
            "(the WORKSPACE_* variables are deprecated)"
        )
        return None
    base = environ.get("WORKSPACE_BASE")
    host = environ.get("WORKSPACE_MOUNT_PATH") or base
    inside = environ.get("WORKSPACE_MOUNT_PATH_IN_SANDBOX") or "/workspace"
    if not host:
        warnings.append(
            f"{', '.join(present)} ignored: no WORKSPACE_BASE or WORKSPACE_MOUNT_PATH says what to mount"
        )
        return None
    rewrite = environ.get("WORKSPACE_MOUNT_REWRITE")
    if rewrite:
        old, sep, new = rewrite.partition(":")
        if not sep:
            raise ConfigError(
                f"environment WORKSPACE_MOUNT_REWRITE: invalid value {rewrite!r}: expected old_prefix:new_prefix"
            )
        if host.startswith(old):
            host = new + host[len(old) :]
    equivalent = f"{host}:{inside}:rw"
    warnings.append(
        f"{', '.join(present)} {'is' if len(present) == 1 else 'are'} deprecated: "
        f"use SANDBOX_VOLUMES={equivalent} instead"
    )
    return equivalent


def resolve_config(
    *,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    cwd: str | None = None,
) -> ResolvedConfig:
    """Resolve a SandboxConfig from defaults, file, environment and explicit overrides.

    ``overrides`` with a value of None are treated as not given, so CLI options can be passed through.
    Raises ConfigError naming the source of any bad value or unknown key.
    """
    environ = os.environ if environ is None else environ
    cwd = cwd or os.getcwd()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {name: "default" for name in FIELDS}
    warnings: list[str] = []
    ignored: list[str] = []

    path = _find_config_file(config_file, environ, cwd)
    if path is not None:
        for key, (value, where) in _read_file(path, cwd).items():
            values[key] = _check_value(key, value, where)
            sources[key] = where

    env_fields = {env_name(name): name for name in FIELDS if name != "env"}
    passed_env: dict[str, str] = {}
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX):
            continue
        raw = environ[var]
        if var.startswith(ENV_PASS_PREFIX):
            name = var[len(ENV_PASS_PREFIX) :]
            if not _ENV_NAME.match(name):
                raise ConfigError(f"environment {var}: {name!r} is not a valid variable name")
            passed_env[name] = raw
            continue
        field_name = env_fields.get(var)
        if field_name is None:
            hint = _closest(var[len(ENV_PREFIX) :].lower(), [n for n in FIELDS if n != "env"])
            if hint:
                raise ConfigError(f"environment {var}: unknown variable; did you mean {env_name(hint)}?")
            ignored.append(var)
            continue
        if field_name == "volumes":
            try:
                raw_value: Any = parse_volumes(raw, cwd=cwd)
            except VolumeSpecError as exc:
                raise VolumeSpecError(f"environment {var}: {exc}") from None
        else:
            raw_value = raw
        values[field_name] = _check_value(field_name, raw_value, f"environment {var}")
        sources[field_name] = f"environment {var}"

    if passed_env:
        merged = dict(values.get("env", {}))
        merged.update(passed_env)
        values["env"] = _check_value("env", merged, "environment SANDBOX_ENV_*")
        sources["env"] = "environment SANDBOX_ENV_*" if sources["env"] == "default" else (
            sources["env"] + " + environment SANDBOX_ENV_*"
        )

    volumes_given = "volumes" in values or bool(overrides and overrides.get("volumes") is not None)
    equivalent = _deprecated_workspace(environ, warnings, volumes_given)
    if equivalent is not None:
        present = [name for name in DEPRECATED_WORKSPACE_VARS if environ.get(name)]
        where = f"environment {'+'.join(present)} (deprecated)"
        values["volumes"] = _check_value("volumes", parse_volumes(equivalent, cwd=cwd), where)
        sources["volumes"] = where

    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in FIELDS:
            hint = _closest(key, list(FIELDS))
            raise ConfigError(f"unknown setting {key!r}" + (f"; did you mean {hint!r}?" if hint else ""))
        if key == "volumes" and isinstance(value, (str, list, tuple)):
            try:
                value = parse_volumes(value, cwd=cwd)
            except VolumeSpecError as exc:
                raise VolumeSpecError(f"argument volumes: {exc}") from None
        values[key] = _check_value(key, value, f"argument {key}")
        sources[key] = "argument"

    config = SandboxConfig.model_validate(values)
    return ResolvedConfig(
        config=config,
        sources=sources,
        warnings=warnings,
        config_file=str(path) if path else None,
        ignored_env=ignored,
    )


def config_rows(resolved: ResolvedConfig) -> list[tuple[str, str, str]]:
    """(key, value, source) rows for display, with volumes as their spec string."""
    rows = []
    data = resolved.config
    for name in FIELDS:
        value = getattr(data, name)
        if name == "volumes":
            shown = format_volumes(value) or "(none)"
        elif name == "env":
            shown = ", ".join(f"{k}={v}" for k, v in value.items()) or "(none)"
        elif name == "network" and value is None:
            shown = "(agentbox managed network)"
        elif name == "runtime_container_image" and value is None:
            shown = "(built from base_container_image)"
        elif isinstance(value, list):
            shown = json.dumps(value)
        else:
            shown = "(none)" if value is None else str(value)
        rows.append((name, shown, resolved.sources[name]))
    return rows


def config_json(resolved: ResolvedConfig) -> dict[str, Any]:
    """The effective configuration as JSON-ready data, with sources and warnings."""
    data = resolved.config.model_dump(mode="json")
    data["volumes"] = [
        {"source": m.source, "target": m.target, "mode": m.mode, "kind": m.kind, "read_only": m.read_only}
        for m in resolved.config.volumes
    ]
    return {
        "config": data,
        "sources": resolved.sources,
        "warnings": resolved.warnings,
        "config_file": resolved.config_file,
        "ignored_environment": resolved.ignored_env,
    }
