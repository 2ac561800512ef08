"""The seam that runs an image's own server (no engine needed): the spec, its Docker arguments, how it is
reached, and the wire model's tolerance of both OpenHands versions' ``/start`` bodies."""

from __future__ import annotations

from pathlib import Path
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
from agentbox.service.openhands.models import Launch, StartRequest
from agentbox.service.openhands.runtimes import LAUNCHER, kind_of, work_hosts
from agentbox.service.pool import WarmPools
from agentbox.service.settings import load_settings

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


# -- OpenHands pools ------------------------------------------------------------------------------------------

V0_ARGV = [*ARGV, "-u", "-m", "openhands.runtime.action_execution_server", "60000", "--working-dir", "/workspace"]


def _pool_toml(tmp_path: Path, extra: str = "", table: str | None = None) -> Path:
    argv = ", ".join(f'"{a}"' for a in V0_ARGV)
    table = table if table is not None else (
        f'image = "oh:1"\ncommand = [{argv}]\nworking_dir = "/openhands/code/"\nenvironment = {{ A = "1" }}\n'
    )
    path = tmp_path / "service.toml"
    path.write_text(f'[sandbox]\ncpus = 1\n\n[[pool]]\nname = "oh"\nsize = 2\n{extra}\n[pool.openhands]\n{table}')
    return path


def test_openhands_pool_profile_is_parsed_and_matched_by_launch_only(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "d", config_file=_pool_toml(tmp_path))
    (spec,) = settings.pools
    assert spec.openhands == Launch(image="oh:1", command=tuple(V0_ARGV), working_dir="/openhands/code/",
                                    environment={"A": "1"})
    assert spec.config["runtime_container_image"] == "oh:1"
    pools = WarmPools(None, settings.pools, settings.sandbox_defaults)  # type: ignore[arg-type]
    config = SandboxConfig(cpus=1, runtime_container_image="oh:1")
    body = {"image": "oh:1", "command": V0_ARGV, "working_dir": "/openhands/code/", "environment": {"A": 1},
            "session_id": "any-session", "resource_factor": 1}
    assert pools.match_launch(config, StartRequest.model_validate(body).launch()) == "oh"
    # Whatever differs in what is fixed at creation misses the pool: the environment, the argv, the limits.
    other_env = StartRequest.model_validate({**body, "environment": {"A": "2"}}).launch()
    other_argv = StartRequest.model_validate({**body, "command": [*V0_ARGV, "--no-enable-browser"]}).launch()
    assert pools.match_launch(config, other_env) is None and pools.match_launch(config, other_argv) is None
    assert pools.match_launch(config.model_copy(update={"cpus": 2}), spec.openhands) is None
    # A /v1 create never takes an OpenHands runtime.
    assert pools.match(config, {}) is None


@pytest.mark.parametrize(
    ("extra", "table", "message"),
    [
        ('labels = { a = "b" }', None, "no labels"),
        ("use_host_network = true", None, "bridge network"),
        ('egress = ["pypi.org"]', None, "egress"),
        ('runtime_container_image = "other:2"', None, "differs"),
        ("", 'image = "oh:1"\n', "command"),
        ("", 'image = "oh:1"\ncommand = ["x"]\nport = 1\n', "port"),
    ],
)
def test_openhands_pool_profiles_that_could_never_serve_are_refused(tmp_path: Path, extra: str, table: str | None,
                                                                     message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(data_dir=tmp_path / "d", config_file=_pool_toml(tmp_path, extra, table))


def test_work_hosts_are_paths_of_the_port_proxy() -> None:
    assert work_hosts("http://127.0.0.1:8473/", "abc") == {
        "http://127.0.0.1:8473/v1/sandboxes/abc/ports/12000/": 12000,
        "http://127.0.0.1:8473/v1/sandboxes/abc/ports/12001/": 12001,
    }


def test_direct_ports_go_to_the_sandbox_address_never_a_host_port() -> None:
    from agentbox.backends.base import Endpoint
    from agentbox.service.proxy import _port_endpoint
    from agentbox.service.sandboxes import Target

    target = Target("abc", Endpoint("http://172.18.0.5:60000", "network"), "key", direct_ports=True)
    assert _port_endpoint(target, 12000).url == "http://172.18.0.5:12000"
