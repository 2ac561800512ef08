"""One slow image build must not serialise the process: per-key single flight in the Docker backend."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from agentbox.backends.docker import DockerBackend
from agentbox.backends.docker.once import OnceByKey
from agentbox.config import SandboxConfig
from agentbox.errors import ImageBuildError

WAIT = 30  # a bound for a hung test, never a timing assertion
#: Stands in for the docker client: the fake builds never use it.
NO_ENGINE: Any = object()


class FakeBuilds:
    """ensure_runtime_image stand-in: the build of base "slow" blocks until released; others are instant."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.slow_started = threading.Event()
        self.release_slow = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, config: SandboxConfig, **kwargs: Any) -> str:
        with self._lock:
            self.calls.append(config.base_container_image)
        if config.base_container_image == "slow":
            self.slow_started.set()
            assert self.release_slow.wait(WAIT)
        return f"runtime-of-{config.base_container_image}"


@pytest.fixture()
def builds(monkeypatch: pytest.MonkeyPatch) -> FakeBuilds:
    fake = FakeBuilds()
    monkeypatch.setattr("agentbox.images.ensure_runtime_image", fake)
    return fake


def _run(target: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(target(*args)), daemon=True)
    thread.start()
    return thread, out


def test_a_slow_build_blocks_neither_other_images_nor_given_ones(builds: FakeBuilds) -> None:
    backend = DockerBackend(client=NO_ENGINE)
    slow, slow_out = _run(backend.resolve_image, SandboxConfig(base_container_image="slow"))
    assert builds.slow_started.wait(WAIT)
    # While "slow" builds: another base image builds and returns, a given image returns at once.
    assert backend.resolve_image(SandboxConfig(base_container_image="fast")) == "runtime-of-fast"
    assert backend.resolve_image(SandboxConfig(runtime_container_image="mine:1")) == "mine:1"
    assert slow.is_alive() and slow_out == []  # and the slow build is indeed still going
    builds.release_slow.set()
    slow.join(WAIT)
    assert slow_out == ["runtime-of-slow"]


def test_concurrent_creates_needing_the_same_missing_image_wait_for_one_build(builds: FakeBuilds) -> None:
    backend = DockerBackend(client=NO_ENGINE)
    first, first_out = _run(backend.resolve_image, SandboxConfig(base_container_image="slow"))
    assert builds.slow_started.wait(WAIT)
    waiters = [_run(backend.resolve_image, SandboxConfig(base_container_image="slow")) for _ in range(4)]
    assert all(out == [] for _, out in waiters)  # nobody got an image before the build ended
    builds.release_slow.set()
    for thread, _ in [(first, first_out), *waiters]:
        thread.join(WAIT)
    assert [out for _, out in waiters] == [["runtime-of-slow"]] * 4 and first_out == ["runtime-of-slow"]
    assert builds.calls == ["slow"]
    # cached afterwards, until refresh (the image was removed meanwhile) asks for a new build
    assert backend.resolve_image(SandboxConfig(base_container_image="slow")) == "runtime-of-slow"
    assert builds.calls == ["slow"]
    backend.resolve_image(SandboxConfig(base_container_image="slow"), refresh=True)
    assert builds.calls == ["slow", "slow"]


def test_a_failed_build_is_not_cached_and_every_waiter_gets_its_own_error() -> None:
    once: OnceByKey[str, str] = OnceByKey()
    started, release = threading.Event(), threading.Event()
    attempts: list[int] = []

    def failing() -> str:
        attempts.append(1)
        started.set()
        assert release.wait(WAIT)
        raise ImageBuildError("the base image has no python3")

    errors: list[BaseException] = []

    def call() -> None:
        try:
            once.get("k", failing)
        except ImageBuildError as exc:
            errors.append(exc)

    owner = threading.Thread(target=call)
    owner.start()
    assert started.wait(WAIT)
    waiter = threading.Thread(target=call)
    waiter.start()
    release.set()
    owner.join(WAIT)
    waiter.join(WAIT)
    assert len(errors) == 2 and all("no python3" in str(e) for e in errors)
    # Each caller marks its error with its own sandbox: they must not share one exception object.
    assert errors[0] is not errors[1]
    errors[0].with_sandbox("aaa111")  # type: ignore[attr-defined]
    assert errors[1].sandbox_id is None  # type: ignore[attr-defined]
    assert once.get("k", lambda: "made") == "made"  # the failure was not cached
