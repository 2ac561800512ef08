"""SandboxConfig resolution: precedence, sources, typos, bad values and the deprecated WORKSPACE_* vars."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agentbox.config import DEFAULT_BASE_IMAGE, SandboxConfig, config_json, config_rows, resolve_config
from agentbox.errors import ConfigError, VolumeSpecError
from agentbox.volumes import Mount


def resolve(tmp_path: Path, env: dict[str, str] | None = None, toml: str | None = None, **overrides: object):
    if toml is not None:
        (tmp_path / "config.toml").write_text(toml)
    return resolve_config(environ=env or {}, cwd=str(tmp_path), overrides=overrides)


def test_defaults(tmp_path: Path) -> None:
    resolved = resolve(tmp_path)
    config = resolved.config
    assert config.runtime_binding_address is None  # this host only: a socket, or a port on 127.0.0.1
    assert config.timeout == 120
    assert config.base_container_image == DEFAULT_BASE_IMAGE
    assert config.user_id == os.getuid()
    assert config.volumes == [] and config.additional_networks == [] and config.env == {}
    assert config.runtime == "runc" and config.hardened is False
    assert set(resolved.sources.values()) == {"default"}
    assert resolved.config_file is None


def test_precedence_file_env_argument(tmp_path: Path) -> None:
    toml = '[sandbox]\ntimeout = 30\nuser_id = 1000\ncpus = 2\n'
    resolved = resolve(tmp_path, {"SANDBOX_TIMEOUT": "60", "SANDBOX_CPUS": "1.5"}, toml, cpus=0.5)
    config = resolved.config
    assert (config.user_id, config.timeout, config.cpus) == (1000, 60.0, 0.5)
    assert resolved.sources["user_id"] == f"{tmp_path / 'config.toml'}:3"
    assert resolved.sources["timeout"] == "environment SANDBOX_TIMEOUT"
    assert resolved.sources["cpus"] == "argument"
    rows = {key: (value, source) for key, value, source in config_rows(resolved)}
    assert rows["timeout"] == ("60.0", "environment SANDBOX_TIMEOUT")


def test_config_file_from_env_and_argument(tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text('[sandbox]\nruntime = "runsc"\n')
    assert resolve_config(environ={"AGENTBOX_CONFIG": str(other)}, cwd=str(tmp_path)).config.runtime == "runsc"
    assert resolve_config(config_file=other, environ={}, cwd="/").config.runtime == "runsc"
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(config_file=tmp_path / "missing.toml", environ={})


def test_volumes_from_env_are_typed(tmp_path: Path) -> None:
    config = resolve(tmp_path, {"SANDBOX_VOLUMES": "/tmp/a:/workspace,/tmp/ref:/data:ro"}).config
    assert config.volumes == [Mount("/tmp/a", "/workspace"), Mount("/tmp/ref", "/data", read_only=True)]
    data = config_json(resolve(tmp_path, {"SANDBOX_VOLUMES": "/tmp/a:/workspace,/tmp/ref:/data:ro"}))
    assert data["config"]["volumes"][1] == {
        "source": "/tmp/ref", "target": "/data", "mode": "ro", "kind": "bind", "read_only": True
    }


def test_bad_volume_mode_names_source_and_mode(tmp_path: Path) -> None:
    with pytest.raises(VolumeSpecError, match=r"SANDBOX_VOLUMES.*'rwx'"):
        resolve(tmp_path, {"SANDBOX_VOLUMES": "/tmp/a:/workspace:rwx"})


def test_relative_volume_in_file_is_relative_to_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "proj"
    sub.mkdir()
    (sub / "c.toml").write_text('[sandbox]\nvolumes = ["./src:/workspace"]\n')
    config = resolve_config(config_file=sub / "c.toml", environ={}, cwd="/").config
    assert config.volumes[0].source == str(sub / "src")


def test_additional_networks_json_in_env_list_in_toml(tmp_path: Path) -> None:
    env = {"SANDBOX_ADDITIONAL_NETWORKS": '["net1","net2"]'}
    assert resolve(tmp_path, env).config.additional_networks == ["net1", "net2"]
    toml = '[sandbox]\nadditional_networks = ["cache"]\n'
    assert resolve(tmp_path, toml=toml).config.additional_networks == ["cache"]
    with pytest.raises(ConfigError, match=r"SANDBOX_ADDITIONAL_NETWORKS.*JSON list"):
        resolve(tmp_path, {"SANDBOX_ADDITIONAL_NETWORKS": "net1,net2"})


def test_env_passthrough(tmp_path: Path) -> None:
    toml = '[sandbox]\nenv = { A = "1", B = "file" }\n'
    resolved = resolve(tmp_path, {"SANDBOX_ENV_B": "env", "SANDBOX_ENV_GITHUB_TOKEN": "t"}, toml)
    assert resolved.config.env == {"A": "1", "B": "env", "GITHUB_TOKEN": "t"}
    assert "SANDBOX_ENV_" in resolved.sources["env"]


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("SANDBOX_USER_ID", "abc", "a uid"),
        ("SANDBOX_TIMEOUT", "-1", "seconds"),
        ("SANDBOX_USE_HOST_NETWORK", "maybe", "true or false"),
        ("SANDBOX_RUNTIME", "kata", "runc or runsc"),
        ("SANDBOX_MEMORY", "lots", "512m"),
        ("SANDBOX_RUNTIME_BINDING_ADDRESS", "localhost:80", "IP address"),
        ("SANDBOX_PIDS_LIMIT", "0", "whole number"),
    ],
)
def test_bad_env_value_names_variable_value_and_form(tmp_path: Path, var: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path, {var: value})
    message = str(info.value)
    assert var in message and repr(value) in message and expected in message


def test_bad_file_value_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config\.toml:3: invalid value 'yes please' for keep_runtime_alive"):
        resolve(tmp_path, toml='[sandbox]\n# comment\nkeep_runtime_alive = "yes please"\n')


def test_unknown_key_in_file_suggests_closest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config\.toml:2: unknown key 'volumns'.*did you mean 'volumes'"):
        resolve(tmp_path, toml='[sandbox]\nvolumns = "/a:/b"\n')


def test_typo_in_env_suggests_closest_and_unrelated_is_ignored(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"SANDBOX_USER_IDD.*did you mean SANDBOX_USER_ID"):
        resolve(tmp_path, {"SANDBOX_USER_IDD": "1"})
    resolved = resolve(tmp_path, {"SANDBOX_SOMETHING_ELSE_ENTIRELY": "1"})
    assert resolved.ignored_env == ["SANDBOX_SOMETHING_ELSE_ENTIRELY"]


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve(tmp_path, toml="[sandbox\n")


def test_memory_sizes(tmp_path: Path) -> None:
    assert resolve(tmp_path, {"SANDBOX_MEMORY": "512m"}).config.memory == 512 * 1024**2
    assert resolve(tmp_path, memory="2g").config.memory == 2 * 1024**3
    assert resolve(tmp_path, memory=64 * 1024**2).config.memory == 64 * 1024**2


def test_unknown_argument(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'timeout'"):
        resolve(tmp_path, timeot=3)


def test_none_arguments_are_not_given(tmp_path: Path) -> None:
    resolved = resolve(tmp_path, {"SANDBOX_TIMEOUT": "7"}, timeout=None)
    assert resolved.config.timeout == 7


class TestDeprecatedWorkspace:
    def test_workspace_base_becomes_a_mount_with_one_warning(self, tmp_path: Path) -> None:
        resolved = resolve(tmp_path, {"WORKSPACE_BASE": "/tmp/a"})
        assert resolved.config.volumes == [Mount("/tmp/a", "/workspace")]
        assert len(resolved.warnings) == 1
        assert "SANDBOX_VOLUMES=/tmp/a:/workspace:rw" in resolved.warnings[0]
        assert "deprecated" in resolved.sources["volumes"]

    def test_mount_path_in_sandbox_and_rewrite(self, tmp_path: Path) -> None:
        env = {
            "WORKSPACE_BASE": "/ignored-when-mount-path-set",
            "WORKSPACE_MOUNT_PATH": "/host/home/me/proj",
            "WORKSPACE_MOUNT_PATH_IN_SANDBOX": "/code",
            "WORKSPACE_MOUNT_REWRITE": "/host/home:/home",
        }
        resolved = resolve(tmp_path, env)
        assert resolved.config.volumes == [Mount("/home/me/proj", "/code")]
        assert "SANDBOX_VOLUMES=/home/me/proj:/code:rw" in resolved.warnings[0]

    def test_ignored_with_a_warning_when_sandbox_volumes_is_set(self, tmp_path: Path) -> None:
        resolved = resolve(tmp_path, {"WORKSPACE_BASE": "/tmp/a", "SANDBOX_VOLUMES": "/b:/workspace"})
        assert resolved.config.volumes == [Mount("/b", "/workspace")]
        assert len(resolved.warnings) == 1 and "ignored" in resolved.warnings[0]

    def test_ignored_when_volumes_given_as_argument(self, tmp_path: Path) -> None:
        resolved = resolve(tmp_path, {"WORKSPACE_BASE": "/tmp/a"}, volumes=["/c:/workspace"])
        assert resolved.config.volumes == [Mount("/c", "/workspace")]
        assert "ignored" in resolved.warnings[0]


def test_model_direct_construction_parses_volumes() -> None:
    config = SandboxConfig(volumes="/a:/workspace,cache:/c:ro")
    assert [m.kind for m in config.volumes] == ["bind", "volume"]
    with pytest.raises(VolumeSpecError):
        SandboxConfig(volumes=["/a:/w", "/b:/w"])
