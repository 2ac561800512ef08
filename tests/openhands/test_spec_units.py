"""The seam that runs an image's own server (no engine needed): the spec, its Docker arguments, how it is
reached, and the wire model's tolerance of both OpenHands versions' ``/start`` bodies."""

from __future__ import annotations

from typing import Any

import pytest

from agentbox.backends.docker.endpoints import Placement, choose_endpoint
from agentbox.backends.spec import (
    DEFAULT_CAP_DROP,
    FOREIGN_SERVER_LABEL,
    foreign_server_spec,
    spec_from_config,
    to_docker_args,
)
from agentbox.config import SandboxConfig
from agentbox.errors import ConfigError
from agentbox.service.openhands.models import StartRequest
from agentbox.service.openhands.runtimes import LAUNCHER, kind_of

ARGV = ("/openhands/micromamba/bin/micromamba", "run", "-n", "openhands", "poetry", "run", "python")


def _foreign(config: SandboxConfig) -> dict[str, Any]:
    base = spec_from_config(config, image="agentbox-runtime:x", sandbox_id="abc", labels={"agentbox.sandbox": "abc"})
    spec = foreign_server_spec(base, image="oh:1", command=ARGV, entrypoint=LAUNCHER, port=60000,
                               environment={"A": "1"}, working_dir="/openhands/code/")
    assert spec.foreign_server
    return to_docker_args(spec)


def test_foreign_spec_keeps_the_seed_knobs_and_publishes_nothing() -> None:
    config = SandboxConfig(cpus=1, memory="256m", pids_limit=64, hardened=True, runtime="runsc",
                           additional_networks=["side"])
    args = _foreign(config)
    assert args["image"] == "oh:1"
    assert args["entrypoint"] == list(LAUNCHER) and args["command"] == list(ARGV)
    assert "ports" not in args
    assert args["labels"][FOREIGN_SERVER_LABEL] == "1" and args["labels"]["agentbox.server-port"] == "60000"
    limits = (args["nano_cpus"], args["mem_limit"], args["pids_limit"], args["runtime"])
    assert limits == (10**9, 256 << 20, 64, "runsc")
    # OpenHands' server runs as root and uses useradd/sudo: Docker's defaults minus agentbox's drops, even
    # when the operator asked for hardened sandboxes.
    assert args["cap_drop"] == list(DEFAULT_CAP_DROP) and "security_opt" not in args
    assert args["user"] == "root" and args["working_dir"] == "/openhands/code/"
    assert args["environment"] == {"A": "1"}


@pytest.mark.parametrize(
    "config",
    [SandboxConfig(use_host_network=True), SandboxConfig(network="none"), SandboxConfig(egress=["pypi.org"])],
)
def test_foreign_spec_refuses_what_cannot_reach_its_server(config: SandboxConfig) -> None:
    with pytest.raises(ConfigError):
        _foreign(config)


def test_agentbox_spec_keeps_the_image_entrypoint() -> None:
    spec = spec_from_config(SandboxConfig(), image="i", sandbox_id="a", labels={})
    assert "entrypoint" not in to_docker_args(spec) and not spec.foreign_server


def test_foreign_server_is_reached_on_its_network_address() -> None:
    placement = Placement("agentbox-net", published=(), addresses={"agentbox-net": "172.18.0.5"}, server_port=60000,
                          foreign_server=True)
    endpoint = choose_endpoint(placement)
    assert (endpoint.url, endpoint.via) == ("http://172.18.0.5:60000", "network")


def test_start_request_accepts_both_versions() -> None:
    v0 = StartRequest.model_validate({"image": "i", "command": list(ARGV), "session_id": "s",
                                      "environment": {"DEBUG": True, "N": 1, "X": None}, "runtime_class": None})
    assert v0.environment == {"DEBUG": "True", "N": "1"}
    v1 = StartRequest.model_validate({"image": "i", "command": "/usr/local/bin/openhands-agent-server --port 60000",
                                      "session_id": "s", "run_as_user": 10001, "fs_group": 10001, "new_field": 1})
    assert v1.command == ["/usr/local/bin/openhands-agent-server", "--port", "60000"]
    assert (kind_of(v0.command), kind_of(v1.command)) == ("v0", "v1")
