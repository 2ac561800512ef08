"""The pure pieces of the CLI: command quoting, exit codes, cp locations, options to overrides."""

from __future__ import annotations

import os
from typing import Any

import pytest

from agentbox.cli._options import parse_env, resolve, sandbox_overrides
from agentbox.cli.demo import invoking_uid
from agentbox.cli.sandboxes import command_text, docker_exec_argv, exit_code_of, result_json
from agentbox.cli.transfer import Location, parse_location
from agentbox.errors import ConfigError
from agentbox.protocol import CommandResult


@pytest.mark.parametrize(
    ("words", "text"),
    [
        (["echo hi | wc -c"], "echo hi | wc -c"),
        (["sh", "-c", "exit 3"], "sh -c 'exit 3'"),
        (["echo", "$HOME", "a b"], "echo '$HOME' 'a b'"),
    ],
)
def test_command_text(words: list[str], text: str) -> None:
    assert command_text(words) == text


@pytest.mark.parametrize(
    ("exit_code", "timed_out", "expected"),
    [(0, False, 0), (3, False, 3), (256 + 7, False, 7), (None, False, 1), (130, True, 124), (None, True, 124)],
)
def test_exit_code_of(exit_code: int | None, timed_out: bool, expected: int) -> None:
    assert exit_code_of(_result(exit_code=exit_code, timed_out=timed_out)) == expected


def _result(**fields: Any) -> CommandResult:
    values: dict[str, Any] = {"command_id": "c1", "session": "default", "output": "", "exit_code": 0, "cwd": "/"}
    return CommandResult(**{**values, **fields})


def test_result_json_has_the_documented_keys() -> None:
    result = _result(output="hi", cwd="/workspace")
    assert result_json(result, sandbox_id="x") == {
        "exit_code": 0, "output": "hi", "cwd": "/workspace", "timed_out": False, "sandbox_id": "x"
    }


@pytest.mark.parametrize(
    ("text", "location"),
    [
        ("abc123:/workspace/x", Location("/workspace/x", "abc123")),
        ("abc123:", Location(".", "abc123")),
        ("abc123:rel/path", Location("rel/path", "abc123")),
        ("./local", Location("./local")),
        ("/tmp/a:b", Location("/tmp/a:b")),
        ("./a:b", Location("./a:b")),
        ("plain", Location("plain")),
    ],
)
def test_parse_location(text: str, location: Location) -> None:
    assert parse_location(text) == location


def test_parse_env() -> None:
    assert parse_env(None) is None
    assert parse_env(["A=1", "B=x=y", "C="], environ={}) == {"A": "1", "B": "x=y", "C": ""}
    assert parse_env(["HOME"], environ={"HOME": "/root"}) == {"HOME": "/root"}
    with pytest.raises(ConfigError, match="no '='"):
        parse_env(["MISSING"], environ={})


def test_options_not_given_are_not_overrides() -> None:
    overrides = sandbox_overrides()
    assert set(overrides.values()) == {None}
    given = sandbox_overrides(volume=["/a:/workspace"], hardened=False, keep_alive=True, image="img")
    assert given["volumes"] == ["/a:/workspace"]
    assert given["hardened"] is False and given["keep_runtime_alive"] is True
    assert given["runtime_container_image"] == "img"


def test_env_option_adds_to_the_configured_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_ENV_FROM_ENV", "1")
    resolved = resolve(None, sandbox_overrides(env=["FROM_CLI=2"], cpus=1.5))
    assert resolved.config.env == {"FROM_ENV": "1", "FROM_CLI": "2"}
    assert resolved.config.cpus == 1.5
    assert resolved.sources["cpus"] == "argument"


def test_docker_exec_argv() -> None:
    argv = docker_exec_argv("cid", user="1000", workdir="/workspace", env={"B": "2", "A": "1"})
    assert argv[:4] == ["docker", "exec", "-i", "-t"]
    assert argv[argv.index("-u") + 1] == "1000" and argv[argv.index("-w") + 1] == "/workspace"
    assert "A=1" in argv and argv.index("A=1") < argv.index("B=2")
    assert argv[-3:] == ["cid", "bash", "-l"]


@pytest.mark.parametrize("euid", [0, 1000])
def test_invoking_uid_prefers_sudo_uid_only_for_root(monkeypatch: pytest.MonkeyPatch, euid: int) -> None:
    # Both branches on any machine: the effective uid is the test's choice, not the runner's.
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    monkeypatch.setattr(os, "getuid", lambda: euid)
    assert invoking_uid({"SUDO_UID": "1234"}) == (1234 if euid == 0 else euid)
    assert invoking_uid({}) == euid
    assert invoking_uid({"SUDO_UID": "junk"}) == euid


def test_make_run_says_where_the_console_is_and_how_to_sign_in(monkeypatch, tmp_path):
    from agentbox.cli.demo import console_hint

    monkeypatch.setattr("agentbox.service.settings.default_data_dir", lambda: tmp_path)
    hint = console_hint()
    assert "http://127.0.0.1:8473/" in hint
    assert str(tmp_path / "admin.token") in hint
