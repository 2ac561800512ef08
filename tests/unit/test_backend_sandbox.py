"""The Sandbox handle without an engine: no I/O before start, explicit states, clear misuse errors."""

from __future__ import annotations

from typing import Any

import pytest

from agentbox.backends.base import SandboxState
from agentbox.config import SandboxConfig
from agentbox.errors import AgentboxError, ConfigError, NetworkNotFoundError, SandboxError, SandboxTimeoutError
from agentbox.sandbox import AsyncSandbox, Sandbox


class ExplodingBackend:
    """Any engine call from a handle that should not make one fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected backend call {name}")


def test_init_does_no_io_and_starts_in_state_new() -> None:
    sb = Sandbox(backend=ExplodingBackend(), volumes=["/src:/workspace"], user_id=1234)  # type: ignore[arg-type]
    assert sb.state is SandboxState.NEW
    assert len(sb.id) == 12
    assert sb.container_id is None


def test_unknown_settings_are_refused_up_front() -> None:
    with pytest.raises(ConfigError, match="timout"):
        Sandbox(timout=3)


def test_identity_labels_cannot_be_overridden() -> None:
    with pytest.raises(ConfigError, match=r"agentbox\.sandbox"):
        Sandbox(labels={"agentbox.sandbox": "x"})


def test_keywords_override_a_given_config() -> None:
    base = SandboxConfig(user_id=7, volumes="/a:/a")
    sb = Sandbox(base, backend=ExplodingBackend(), hardened=True)  # type: ignore[arg-type]
    assert sb.config.user_id == 7 and sb.config.hardened and sb.config.volumes[0].source == "/a"


def test_acting_before_start_says_what_to_do() -> None:
    sb = Sandbox(backend=ExplodingBackend())  # type: ignore[arg-type]
    with pytest.raises(SandboxError, match="not started"):
        sb.run("true")
    with pytest.raises(SandboxError, match="no server address"):
        _ = sb.url
    with pytest.raises(SandboxError, match="not paused"):
        sb.resume()


def test_closing_a_never_started_handle_touches_nothing() -> None:
    sb = Sandbox(backend=ExplodingBackend())  # type: ignore[arg-type]
    sb.close()
    sb.close()
    assert sb.state is SandboxState.CLOSED


def test_async_handle_shares_the_core() -> None:
    sb = AsyncSandbox(backend=ExplodingBackend(), user_id=5)
    assert sb.state is SandboxState.NEW and sb.config.user_id == 5 and sb.sync.id == sb.id


class FailingCreateBackend:
    """A backend whose create fails like the engine would; records the cleanup it is asked for."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.removed: list[str] = []

        class Store:
            def delete(self, sandbox_id: str) -> None:
                pass

            def save(self, record: Any) -> None:
                pass

        self.store = Store()

    def resolve_image(self, config: Any, progress: Any = None, *, refresh: bool = False) -> str:
        return "img"

    def create(self, spec: Any) -> str:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [NetworkNotFoundError("network 'x' (additional_networks) does not exist"), SandboxTimeoutError("engine slow")],
)
def test_a_failed_start_keeps_the_error_type_and_cause_and_names_the_sandbox(error: AgentboxError) -> None:
    cause = RuntimeError("from the SDK")
    error.__cause__ = cause
    sb = Sandbox(backend=FailingCreateBackend(error), runtime_container_image="img")  # type: ignore[arg-type]
    with pytest.raises(type(error)) as err:
        sb.start()
    assert err.value is error  # not rebuilt: subclasses, attributes and traceback survive
    assert err.value.sandbox_id == sb.id and sb.id in str(err.value)
    assert err.value.__cause__ is cause
    assert sb.state is SandboxState.REMOVED
