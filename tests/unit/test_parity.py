"""Sync/async parity: both runtime clients, and both sandbox handles' runtime forwards, have one signature each.

Each signature is written by hand several times (RuntimeClient, AsyncRuntimeClient, Sandbox, AsyncSandbox);
these tests make a drift (a renamed parameter, a changed default, a method on one side only) fail.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from agentbox.client import AsyncRuntimeClient, RuntimeClient
from agentbox.sandbox import AsyncSandbox, Sandbox

# Lifecycle methods that differ by name on purpose (close/aclose, context managers).
_CLIENT_LIFECYCLE = {"close", "aclose", "like"}
#: The runtime calls a sandbox handle forwards (the everyday ones; the rest are on ``.client``).
FORWARDS = {
    "run",
    "stream",
    "read_file",
    "read_bytes",
    "write_file",
    "list_dir",
    "upload",
    "download",
    "run_python",
    "start_background",
    "read_background",
    "kill_background",
}


def _public_methods(cls: type) -> dict[str, Callable[..., Any]]:
    return {
        name: member
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def _shape(func: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    """Names, kinds and defaults of the parameters (annotations differ: Iterator vs AsyncIterator)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]


def _is_async(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
        return True
    # A plain def that hands back an async iterator (AsyncSandbox.stream) is async to its caller.
    return "AsyncIterator" in str(inspect.signature(func).return_annotation)


def _return_shape(func: Callable[..., Any]) -> str:
    text = str(inspect.signature(func).return_annotation)
    return text.replace("AsyncIterator", "Iterator")


def test_both_clients_have_the_same_methods() -> None:
    sync = set(_public_methods(RuntimeClient)) - _CLIENT_LIFECYCLE
    asynchronous = set(_public_methods(AsyncRuntimeClient)) - _CLIENT_LIFECYCLE
    assert sync == asynchronous, f"only sync: {sync - asynchronous}; only async: {asynchronous - sync}"
    assert len(sync) >= 30  # the whole API, not an accidentally empty comparison


@pytest.mark.parametrize("name", sorted(set(_public_methods(RuntimeClient)) - _CLIENT_LIFECYCLE))
def test_client_signatures_match(name: str) -> None:
    sync, asynchronous = getattr(RuntimeClient, name), getattr(AsyncRuntimeClient, name)
    assert _shape(sync) == _shape(asynchronous)
    assert _return_shape(sync) == _return_shape(asynchronous)
    assert not _is_async(sync) and _is_async(asynchronous)


def test_client_constructors_match() -> None:
    assert _shape(RuntimeClient.__init__) == _shape(AsyncRuntimeClient.__init__)


def test_sandboxes_forward_the_same_runtime_calls() -> None:
    for cls in (Sandbox, AsyncSandbox):
        forwarded = set(_public_methods(cls)) & set(_public_methods(RuntimeClient)) - _CLIENT_LIFECYCLE
        assert forwarded == FORWARDS, f"{cls.__name__}: {forwarded ^ FORWARDS}"


@pytest.mark.parametrize("name", sorted(FORWARDS))
def test_forward_signatures_are_the_clients(name: str) -> None:
    client = getattr(RuntimeClient, name)
    sync, asynchronous = getattr(Sandbox, name), getattr(AsyncSandbox, name)
    assert _shape(sync) == _shape(client), f"Sandbox.{name} differs from RuntimeClient.{name}"
    assert _shape(asynchronous) == _shape(client), f"AsyncSandbox.{name} differs from RuntimeClient.{name}"
    assert _return_shape(sync) == _return_shape(asynchronous) == _return_shape(client)
    assert not _is_async(sync) and _is_async(asynchronous)


def test_shape_tells_a_changed_default_apart() -> None:
    # The comparison itself must be able to fail.
    def a(self: object, x: int = 1) -> None: ...
    def b(self: object, x: int = 2) -> None: ...

    assert _shape(a) != _shape(b)
