"""A base image that cannot be pulled is not asked for again by every process for a few minutes."""

from __future__ import annotations

from pathlib import Path

import pytest
from docker.errors import APIError

from agentbox.images import base


class FakeImages:
    def __init__(self) -> None:
        self.pulls = 0

    def pull(self, ref: str) -> None:
        self.pulls += 1
        raise APIError(f"no registry for {ref}")


class FakeClient:
    def __init__(self) -> None:
        self.images = FakeImages()


def test_failed_pull_is_remembered_across_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(base, "_failed_pulls", {})
    client = FakeClient()
    first = base.pull_image(client, "example/img:1", lambda _m: None)
    assert first is not None and "no registry" in first and client.images.pulls == 1
    assert (tmp_path / "agentbox" / "failed-pulls.json").is_file()

    monkeypatch.setattr(base, "_failed_pulls", {})  # a new process: only the file remembers
    assert base.pull_image(client, "example/img:1", lambda _m: None) == first
    assert client.images.pulls == 1

    later = base.time.time() + base.PULL_RETRY_SECONDS + 1
    monkeypatch.setattr(base.time, "time", lambda: later)
    base.pull_image(client, "example/img:1", lambda _m: None)
    assert client.images.pulls == 2


def test_unwritable_cache_only_costs_a_pull(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(base, "_failed_pulls", {})
    client = FakeClient()
    assert base.pull_image(client, "example/img:2", lambda _m: None) is not None
    assert base.pull_image(client, "example/img:2", lambda _m: None) is not None
    assert client.images.pulls == 1  # the in-process memory still holds
