"""Fixtures for the CLI tests: a clean configuration environment and a CliRunner."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

# The console script installed in the same environment as the interpreter running the tests.
AGENTBOX = str(Path(sys.executable).parent / "agentbox")


@pytest.fixture(autouse=True)
def clean_config_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No SANDBOX_*/WORKSPACE_*/AGENTBOX_CONFIG from the developer's shell, and no ./config.toml."""
    for name in list(os.environ):
        if name.startswith(("SANDBOX_", "WORKSPACE_")) or name == "AGENTBOX_CONFIG":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def agentbox_bin() -> str:
    """Path of the installed ``agentbox`` console script."""
    return AGENTBOX


@pytest.fixture
def runner() -> CliRunner:
    """A CliRunner; stdout and stderr are kept apart (result.stdout / result.stderr)."""
    return CliRunner()
