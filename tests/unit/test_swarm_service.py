"""The Swarm service a sandbox spec becomes (pure; no swarm needed)."""

from __future__ import annotations

import json

import pytest

from agentbox.backends.spec import ContainerSpec, spec_from_config
from agentbox.backends.swarm.service import DELIVERED, ENTRYPOINT, ServicePlan, service_args, workspace_volume
from agentbox.config import SandboxConfig
from agentbox.errors import ConfigError


def _spec(**settings: object) -> ContainerSpec:
    return spec_from_config(
        SandboxConfig.model_validate(settings), image="img:1", sandbox_id="abc123",
        labels={"agentbox.sandbox": "abc123", "agentbox.test": "1"},
    )


def test_a_sandbox_is_a_one_task_service_never_restarted() -> None:
    args = service_args(_spec(), ServicePlan(networks=("agentbox-abc123-net",)))
    template = args["task_template"]
    assert args["mode"].mode == "replicated" and args["mode"].replicas == 1
    assert template["RestartPolicy"]["Condition"] == "none"
    assert args["endpoint_spec"]["Mode"] == "dnsrr" and "Ports" not in args["endpoint_spec"]
    container = template["ContainerSpec"]
    assert container["Init"] is True
    # The entrypoint waits for the key handed over on the node, then runs the image's own.
    assert container["Command"][:2] == ["sh", "-c"] and DELIVERED in container["Command"][2]
    assert ENTRYPOINT in container["Command"][2]
    assert template["Networks"] == [{"Target": "agentbox-abc123-net"}]


def test_the_work_dir_gets_a_volume_unless_something_is_mounted_there() -> None:
    plain = service_args(_spec(), ServicePlan(networks=()))["task_template"]["ContainerSpec"]["Mounts"]
    assert [(m["Source"], m["Target"]) for m in plain] == [(workspace_volume("abc123"), "/workspace")]
    mounted = service_args(_spec(volumes=["data:/workspace"]), ServicePlan(networks=()))
    assert [m["Source"] for m in mounted["task_template"]["ContainerSpec"]["Mounts"]] == ["data"]


def test_limits_caps_and_user_are_carried() -> None:
    spec = _spec(cpus=1.5, memory="256m", pids_limit=64, hardened=True, user_id=1234)
    args = service_args(spec, ServicePlan(networks=()))
    template = args["task_template"]
    assert template["Resources"]["Limits"] == {"NanoCPUs": 1_500_000_000, "MemoryBytes": 256 * 2**20, "Pids": 64}
    assert template["ContainerSpec"]["CapabilityDrop"] == ["ALL"]
    assert "--uid" in template["ContainerSpec"]["Args"] and "1234" in template["ContainerSpec"]["Args"]
    assert "env" not in json.dumps(template["ContainerSpec"]).lower().replace("environment", "")


def test_what_swarm_cannot_do_is_refused() -> None:
    with pytest.raises(ConfigError, match="OCI runtime"):
        service_args(_spec(runtime="runsc"), ServicePlan(networks=()))
    with pytest.raises(ConfigError, match="host"):
        service_args(_spec(use_host_network=True), ServicePlan(networks=()))


def test_placement_and_node_settings_parse_from_the_environment_form() -> None:
    config = SandboxConfig.model_validate(
        {"backend": "swarm", "placement": '["node.role==worker"]', "swarm_nodes": '{"n1": "unix:///x.sock"}'}
    )
    assert config.placement == ["node.role==worker"] and config.swarm_nodes == {"n1": "unix:///x.sock"}
    with pytest.raises(ValueError, match="Swarm constraint"):
        SandboxConfig.model_validate({"placement": ["worker"]})
