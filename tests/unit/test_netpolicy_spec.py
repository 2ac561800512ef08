"""Network policy settings: config keys, the spec they become, and the Docker arguments."""

from __future__ import annotations

from typing import Any

import pytest
from docker.models.containers import _create_container_args

from agentbox.backends.spec import ContainerSpec, spec_from_config, to_docker_args
from agentbox.config import SandboxConfig, resolve_config
from agentbox.errors import ConfigError


def spec(**settings: Any) -> ContainerSpec:
    return spec_from_config(SandboxConfig(**settings), image="img", sandbox_id="abc123", labels={})


def test_open_by_default_without_policy() -> None:
    made = spec()
    assert (made.egress, made.host_ports, made.has_policy) == (None, (), False)


def test_none_and_allow_list_and_host_ports_become_a_policy() -> None:
    assert spec(egress="none").egress == ()
    assert spec(egress=["PyPI.org", "10.0.0.0/8:5432"]).egress == ("pypi.org", "10.0.0.0/8:5432")
    made = spec(host_ports=[11434])
    assert made.has_policy and made.egress is None and made.host_ports == (11434,)


def test_environment_variables_set_the_policy() -> None:
    resolved = resolve_config(environ={"SANDBOX_EGRESS": '["pypi.org"]', "SANDBOX_HOST_PORTS": "11434,8000"})
    assert resolved.config.egress == ["pypi.org"]
    assert resolved.config.host_ports == [11434, 8000]
    with pytest.raises(ConfigError, match=r"SANDBOX_EGRESS.*a wildcard"):
        resolve_config(environ={"SANDBOX_EGRESS": "a.*.org"})


def test_host_ports_and_allow_lists_are_refused_without_a_network() -> None:
    with pytest.raises(ConfigError, match="host_ports needs a network"):
        spec(network="none", host_ports=[8000])
    with pytest.raises(ConfigError, match="cannot apply"):
        spec(network="none", egress=["pypi.org"])
    assert spec(network="none", egress="none").egress is None  # no network already reaches nothing
    with pytest.raises(ConfigError, match="use_host_network"):
        spec(use_host_network=True, egress="none")


def test_environment_dns_and_extra_hosts_reach_docker() -> None:
    from dataclasses import replace

    made = replace(
        spec(), environment=(("HTTP_PROXY", "http://10.0.0.1:3128"),), dns=("10.0.0.1",),
        extra_hosts=(("host.docker.internal", "10.0.0.1"),),
    )
    args = to_docker_args(made)
    assert args["environment"] == {"HTTP_PROXY": "http://10.0.0.1:3128"}
    created = _create_container_args({**args, "version": "1.41"})
    host_config = created["host_config"]
    assert host_config["Dns"] == ["10.0.0.1"]
    assert host_config["ExtraHosts"] == ["host.docker.internal:10.0.0.1"]
    assert created["environment"] == {"HTTP_PROXY": "http://10.0.0.1:3128"}
