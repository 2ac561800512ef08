"""Who is an orphan (pure), and engine errors translated with their cause and as timeouts."""

from __future__ import annotations

from typing import Any

import pytest

from agentbox.backends.base import SandboxInfo, SandboxState
from agentbox.backends.labels import LABELS
from agentbox.backends.ownership import is_orphan
from agentbox.engine import translate_errors
from agentbox.errors import EngineUnavailableError, SandboxTimeoutError


def info(**kw: Any) -> SandboxInfo:
    values: dict[str, Any] = {
        "id": "abc123", "container_id": "c" * 64, "container_name": "agentbox-abc123", "image": "img",
        "state": SandboxState.RUNNING, "created": None, "owner_pid": 42, "owner_host": "here", "url": None,
    }
    values.update(kw)
    return SandboxInfo(**values)


def dead(pid: int) -> bool:
    return False


def alive(pid: int) -> bool:
    return True


def never(container_id: str) -> bool:
    raise AssertionError("no manager to ask about")


def test_a_sandbox_of_a_dead_local_owner_is_an_orphan() -> None:
    assert is_orphan(info(), host="here", pid_alive=dead, manager_running=never)
    assert not is_orphan(info(), host="here", pid_alive=alive, manager_running=never)


def test_keep_alive_and_other_hosts_and_unknown_owners_are_never_orphans() -> None:
    assert not is_orphan(info(keep_alive=True), host="here", pid_alive=dead, manager_running=never)
    assert not is_orphan(info(owner_host="elsewhere"), host="here", pid_alive=dead, manager_running=never)
    assert not is_orphan(info(owner_pid=None), host="here", pid_alive=dead, manager_running=never)


def test_a_sandbox_of_a_manager_container_goes_by_that_container() -> None:
    managed = info(labels={LABELS.MANAGER: "m" * 64}, owner_host="elsewhere")
    assert is_orphan(managed, host="here", pid_alive=alive, manager_running=lambda c: False)
    assert not is_orphan(managed, host="here", pid_alive=dead, manager_running=lambda c: True)


def test_an_engine_timeout_is_a_timeout_error_with_its_cause() -> None:
    from requests.exceptions import ReadTimeout

    with pytest.raises(TimeoutError) as err, translate_errors("starting the sandbox container"):
        raise ReadTimeout("read timed out")
    assert isinstance(err.value, SandboxTimeoutError)
    assert "starting the sandbox container" in str(err.value)
    assert isinstance(err.value.__cause__, ReadTimeout)


def test_an_engine_gone_away_keeps_its_cause() -> None:
    from requests.exceptions import ConnectionError as RequestsConnectionError

    with pytest.raises(EngineUnavailableError) as err, translate_errors("listing sandboxes"):
        raise RequestsConnectionError("connection refused")
    assert isinstance(err.value.__cause__, RequestsConnectionError)
