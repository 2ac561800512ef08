"""Command-line options that mirror the configuration, and how they become ``resolve_config`` overrides.

Every option defaults to None, meaning "not given", so configuration from ``config.toml`` and the
``SANDBOX_*`` environment shows through unless the user typed the option (``resolve_config`` ignores
None overrides). The same aliases are reused by every command that creates a sandbox.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from agentbox.config import ResolvedConfig, resolve_config
from agentbox.errors import ConfigError

from ._app import warn

__all__ = [
    "AdditionalNetworkOpt",
    "BaseImageOpt",
    "BindingAddressOpt",
    "CpusOpt",
    "EnvOpt",
    "HardenedOpt",
    "ImageOpt",
    "KeepAliveOpt",
    "MemoryOpt",
    "NetworkOpt",
    "PidsLimitOpt",
    "RuntimeOpt",
    "TimeoutOpt",
    "UserIdOpt",
    "VolumeOpt",
    "parse_env",
    "resolve",
    "sandbox_overrides",
]

_SANDBOX = "Sandbox options (override config.toml and SANDBOX_* variables)"


def _opt(*names: str, metavar: str | None = None, help: str) -> Any:
    """A sandbox option: in its own help panel, default None shown as nothing."""
    return typer.Option(*names, metavar=metavar, help=help, rich_help_panel=_SANDBOX, show_default=False)


VolumeOpt = Annotated[
    list[str] | None,
    _opt("--volume", "-v", metavar="HOST:PATH[:MODE]",
         help="Mount, mode rw (default) or ro; repeatable. Replaces SANDBOX_VOLUMES."),
]
UserIdOpt = Annotated[
    int | None, _opt("--user-id", metavar="UID", help="uid of the sandbox user; files it writes in mounts are its.")
]
NetworkOpt = Annotated[
    str | None, _opt("--network", metavar="NAME", help="Docker network to join ('none': no network).")
]
AdditionalNetworkOpt = Annotated[
    list[str] | None,
    _opt("--additional-network", metavar="NAME", help="Extra existing Docker network to join; repeatable."),
]
ImageOpt = Annotated[
    str | None, _opt("--image", metavar="IMAGE", help="Ready runtime image to use as is (runtime_container_image).")
]
BaseImageOpt = Annotated[
    str | None, _opt("--base-image", metavar="IMAGE", help="Base image to build the runtime image on.")
]
CpusOpt = Annotated[float | None, _opt("--cpus", metavar="CORES", help="CPU limit in cores.")]
MemoryOpt = Annotated[str | None, _opt("--memory", metavar="SIZE", help="Memory limit, e.g. 512m or 2g.")]
PidsLimitOpt = Annotated[int | None, _opt("--pids-limit", metavar="N", help="Maximum number of processes.")]
RuntimeOpt = Annotated[
    str | None, _opt("--runtime", metavar="runc|runsc", help="OCI runtime: runc, or runsc (gVisor).")
]
HardenedOpt = Annotated[
    bool | None, _opt("--hardened/--no-hardened", help="No sudo, all capabilities dropped, no-new-privileges.")
]
TimeoutOpt = Annotated[
    float | None,
    _opt("--timeout", metavar="SECONDS", help="Seconds before a command is interrupted (exit code 124)."),
]
EnvOpt = Annotated[
    list[str] | None,
    _opt("--env", "-e", metavar="NAME=VALUE",
         help="Environment for commands in the sandbox (NAME alone: this shell's value); repeatable."),
]
BindingAddressOpt = Annotated[
    str | None,
    _opt("--binding-address", metavar="IP", help="Host address the server port is published on (default 127.0.0.1)."),
]
KeepAliveOpt = Annotated[
    bool | None, _opt("--keep-alive/--no-keep-alive", help="Keep the sandbox when the command ends.")
]


def parse_env(items: list[str] | None, environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """``NAME=VALUE`` items as a dict; a bare ``NAME`` takes the host's value, as ``docker run -e`` does."""
    if not items:
        return None
    environ = os.environ if environ is None else environ
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not name:
            raise ConfigError(f"--env {item!r}: expected NAME=VALUE")
        if not sep:
            if name not in environ:
                raise ConfigError(f"--env {name}: no '=' and no {name} in this environment to pass through")
            value = environ[name]
        env[name] = value
    return env


def sandbox_overrides(
    *,
    volume: list[str] | None = None,
    user_id: int | None = None,
    network: str | None = None,
    additional_network: list[str] | None = None,
    image: str | None = None,
    base_image: str | None = None,
    cpus: float | None = None,
    memory: str | None = None,
    pids_limit: int | None = None,
    runtime: str | None = None,
    hardened: bool | None = None,
    timeout: float | None = None,
    env: list[str] | None = None,
    binding_address: str | None = None,
    keep_alive: bool | None = None,
) -> dict[str, Any]:
    """Map option values to SandboxConfig field overrides; options not given stay None (= not set)."""
    return {
        "volumes": volume or None,
        "user_id": user_id,
        "network": network,
        "additional_networks": additional_network or None,
        "runtime_container_image": image,
        "base_container_image": base_image,
        "cpus": cpus,
        "memory": memory,
        "pids_limit": pids_limit,
        "runtime": runtime,
        "hardened": hardened,
        "timeout": timeout,
        "env": parse_env(env),
        "runtime_binding_address": binding_address,
        "keep_runtime_alive": keep_alive,
    }


def resolve(config_file: str | None, overrides: Mapping[str, Any] | None = None) -> ResolvedConfig:
    """Resolve the configuration with ``overrides`` on top, and print its warnings on stderr.

    ``--env`` adds to the environment from the file and ``SANDBOX_ENV_*`` rather than replacing it,
    as ``docker run -e`` adds to an image's environment.
    """
    overrides = dict(overrides or {})
    extra_env = overrides.pop("env", None)
    resolved = resolve_config(config_file=config_file, overrides=overrides)
    if extra_env:
        overrides["env"] = {**resolved.config.env, **extra_env}
        resolved = resolve_config(config_file=config_file, overrides=overrides)
    for message in resolved.warnings:
        warn(message)
    return resolved
