"""The service a spec becomes, where the swarm suite found a race (pure; no swarm needed)."""

from __future__ import annotations

from agentbox.backends.spec import spec_from_config
from agentbox.backends.swarm.service import DELIVERED, ServicePlan, service_args
from agentbox.config import SandboxConfig


def test_the_delivery_marker_is_never_removed_while_the_engine_may_still_be_writing_it() -> None:
    spec = spec_from_config(SandboxConfig(), image="img:1", sandbox_id="abc123", labels={"agentbox.sandbox": "abc123"})
    command = service_args(spec, ServicePlan(networks=()))["task_template"]["ContainerSpec"]["Command"][2]
    assert f"[ ! -e /run/agentbox/{DELIVERED} ]" in command  # control: it waits for the marker
    # put_archive creates the file and then lchowns it: a task that removes it at once makes that fail.
    assert "rm " not in command
