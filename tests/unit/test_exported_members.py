"""Pin the public surface of ``agentbox``: what ``__all__`` promises, and that each name resolves."""

from __future__ import annotations

import inspect

import agentbox

EXPORTED = {
    "__version__",
    "Sandbox",
    "AsyncSandbox",
    "SandboxInfo",
    "SandboxState",
    "reap",
    "SandboxConfig",
    "Mount",
    "RuntimeClient",
    "AsyncRuntimeClient",
    "AgentboxError",
    "ConfigError",
    "VolumeSpecError",
    "EngineError",
    "EngineUnavailableError",
    "ImageNotFoundError",
    "ImageBuildError",
    "NetworkNotFoundError",
    "SandboxError",
    "SandboxNotFoundError",
    "SandboxStartError",
    "RuntimeServerError",
}


def test_all_is_pinned() -> None:
    assert set(agentbox.__all__) == EXPORTED
    assert len(agentbox.__all__) == len(EXPORTED), "a name is exported twice"


def test_every_exported_name_resolves() -> None:
    for name in agentbox.__all__:
        value = getattr(agentbox, name)
        assert value is not None, name
        if name != "__version__":
            # Each name is the real object from its home module, not a copy or a placeholder.
            assert getattr(inspect.getmodule(value), name, value) is value, name


def test_errors_share_one_root() -> None:
    for name in agentbox.__all__:
        value = getattr(agentbox, name)
        if inspect.isclass(value) and name.endswith("Error"):
            assert issubclass(value, agentbox.AgentboxError), name


def test_dir_lists_the_public_names() -> None:
    assert set(dir(agentbox)) == EXPORTED


def test_unknown_attribute_raises_attribute_error() -> None:
    try:
        agentbox.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("agentbox.NoSuchThing resolved")
