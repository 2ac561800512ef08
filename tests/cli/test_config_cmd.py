"""`agentbox config` and the CLI's error contract, without Docker."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentbox.cli import app

COMMANDS = (
    "run", "start", "exec", "shell", "cp", "ls", "logs", "pause", "resume", "stop", "rm", "reap", "replace",
    "build", "images", "config", "doctor", "demo",
)


def test_help_lists_every_command_with_a_description(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for name in COMMANDS:
        described = [line for line in lines if line.strip("│ ").startswith(f"{name} ")]
        assert described, f"{name} missing from --help:\n{result.stdout}"
        assert len(described[0].strip("│ ").split()) > 2, f"{name} has no description"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(runner: CliRunner, name: str) -> None:
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout


def test_config_json_shows_typed_mounts(runner: CliRunner) -> None:
    result = runner.invoke(
        app, ["config", "--json"], env={"SANDBOX_VOLUMES": "/tmp/a:/workspace,/tmp/ref:/data:ro"}
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["config"]["volumes"] == [
        {"source": "/tmp/a", "target": "/workspace", "mode": "rw", "kind": "bind", "read_only": False},
        {"source": "/tmp/ref", "target": "/data", "mode": "ro", "kind": "bind", "read_only": True},
    ]
    assert data["sources"]["volumes"] == "environment SANDBOX_VOLUMES"


def test_bad_mount_mode_exits_2_naming_the_mode(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config"], env={"SANDBOX_VOLUMES": "/tmp/a:/workspace:rwx"})
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")
    assert "'rwx'" in result.stderr and "SANDBOX_VOLUMES" in result.stderr
    assert "Traceback" not in result.output


def test_workspace_base_gives_the_equivalent_mount_and_a_deprecation_warning(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config", "--json"], env={"WORKSPACE_BASE": "/tmp/a"})
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(m["source"], m["target"], m["mode"]) for m in data["config"]["volumes"]] == [
        ("/tmp/a", "/workspace", "rw")
    ]
    assert "warning:" in result.stderr and "deprecated" in result.stderr
    assert "SANDBOX_VOLUMES=/tmp/a:/workspace:rw" in result.stderr


def test_environment_overrides_config_toml_and_the_table_says_so(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[sandbox]\ntimeout = 30\npids_limit = 64\n")
    result = runner.invoke(app, ["config"], env={"SANDBOX_TIMEOUT": "45", "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") >= 3}
    assert "45.0" in rows["timeout"] and "environment SANDBOX_TIMEOUT" in rows["timeout"]
    # The file still supplies what the environment does not set.
    assert "64" in rows["pids_limit"] and "config.toml:3" in rows["pids_limit"]


def test_explicit_config_file_that_does_not_exist_exits_2(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config", "--config", "nope.toml"])
    assert result.exit_code == 2
    assert "nope.toml" in result.stderr


def test_brackets_in_error_messages_are_printed_verbatim(runner: CliRunner) -> None:
    # rich would swallow '[...]' as markup if the message were not escaped.
    result = runner.invoke(app, ["config"], env={"SANDBOX_ADDITIONAL_NETWORKS": '["a",'})
    assert result.exit_code == 2
    assert '["a",' in result.stderr and '["net1","net2"]' in result.stderr


def test_run_with_an_invalid_volume_exits_2_before_touching_docker(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agentbox.cli.sandboxes as sandboxes

    def no_sandbox(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a sandbox was created for an invalid configuration")

    monkeypatch.setattr(sandboxes, "start_sandbox", no_sandbox)
    result = runner.invoke(app, ["run", "-v", "/tmp/a:workspace", "--", "true"])
    assert result.exit_code == 2
    assert "must be absolute" in result.stderr and "/tmp/a:workspace" in result.stderr


def test_bad_env_option_exits_2(runner: CliRunner) -> None:
    result = runner.invoke(app, ["run", "-e", "=x", "--", "true"])
    assert result.exit_code == 2
    assert "NAME=VALUE" in result.stderr


def test_shell_without_a_terminal_says_so(runner: CliRunner) -> None:
    result = runner.invoke(app, ["shell", "abc123"])
    assert result.exit_code == 2
    assert "needs a terminal" in result.stderr and "agentbox exec abc123" in result.stderr


def test_cp_needs_exactly_one_sandbox_side(runner: CliRunner) -> None:
    result = runner.invoke(app, ["cp", "./a", "./b"])
    assert result.exit_code == 2
    assert "exactly one of SRC and DEST" in result.stderr


def test_console_script_help_and_config_error(agentbox_bin: str) -> None:
    help_run = subprocess.run([agentbox_bin, "--help"], capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0 and "demo" in help_run.stdout
    bad = subprocess.run(
        [agentbox_bin, "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "SANDBOX_VOLUMES": "/tmp/a:/workspace:rwx"},
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: ") and "'rwx'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_replace_without_a_service_exits_2_saying_where_it_is_done(runner: CliRunner) -> None:
    result = runner.invoke(app, ["replace", "abc123"], env={"AGENTBOX_SERVER": "", "AGENTBOX_TOKEN": ""})
    assert result.exit_code == 2, result.output
    assert "--server" in result.output and "agentbox rm" in result.output
