"""Runtime images against the real engine: build on two different bases, run the entrypoint contract,
reuse by content hash, labels, list/prune (with server volumes), an unsupported base, and the carried
CA certificates.

Everything a test creates carries the session labels and is removed. The current runtime image on the
bootstrapped base is built (or reused) by a module fixture and left in place: it is the image every
other Docker test and engineer uses.
"""

from __future__ import annotations

import io
import re
import shutil
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentbox.config import SandboxConfig
from agentbox.errors import ImageBuildError, ImageNotFoundError
from agentbox.images import (
    BOOTSTRAP_IMAGE,
    LABEL_BASE,
    LABEL_CONTENT_HASH,
    LABEL_RUNTIME,
    LABEL_VERSION,
    build_runtime_image,
    ensure_runtime_image,
    ensure_server_volume,
    list_images,
    prune_images,
    prune_server_volumes,
    server_volume_name,
)
from agentbox.images.context import host_ca_certificates, make_context, package_dir
from agentbox.protocol import API_KEY_HEADER

# Module-scoped images carry this and are removed by `throwaway`; tests add the session labels (the
# `labels` fixture) and a marker of their own.
TEST_LABELS = {"agentbox.test": "1"}
CASE_LABEL = "agentbox.test-case"


# --- pure: the build context and its hash -----------------------------------------------------------------


def _copy_package(tmp_path: Path) -> Path:
    target = tmp_path / "agentbox"
    shutil.copytree(package_dir(), target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def test_hash_is_stable_and_covers_base_source_and_certs(tmp_path: Path) -> None:
    source = _copy_package(tmp_path)
    certs = tmp_path / "certs"
    certs.mkdir()
    first = make_context("base:1", "sha256:aaa", source=source, ca_dir=certs)
    assert make_context("base:1", "sha256:aaa", source=source, ca_dir=certs).content_hash == first.content_hash
    assert make_context("base:1", "sha256:bbb", source=source, ca_dir=certs).content_hash != first.content_hash

    module = source / "server" / "__main__.py"
    module.write_text(module.read_text() + "\n# a one-line change\n")
    changed = make_context("base:1", "sha256:aaa", source=source, ca_dir=certs)
    assert changed.content_hash != first.content_hash

    (certs / "proxy.crt").write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    with_cert = make_context("base:1", "sha256:aaa", source=source, ca_dir=certs)
    assert with_cert.content_hash != changed.content_hash
    assert with_cert.ca_certificates == ("proxy.crt",)


def test_context_layout_orders_layers_for_fast_rebuilds(tmp_path: Path) -> None:
    context = make_context("base:1", "sha256:aaa", source=_copy_package(tmp_path), ca_dir=tmp_path)
    names = {f.path for f in context.files}
    assert {"Dockerfile", "server-requirements.txt", "opt-agentbox/bin/agentbox-entrypoint"} <= names
    assert "opt-agentbox/src/agentbox/server/__main__.py" in names
    assert not any("__pycache__" in n for n in names)
    dockerfile = context.files[0].data.decode()
    order = [
        dockerfile.index(s) for s in ("install-os-packages.sh", "ca-certificates/", "requirements", "opt-agentbox")
    ]
    assert order == sorted(order)

    with tarfile.open(fileobj=io.BytesIO(context.tar({"agentbox.test": "1"}))) as tar:
        rendered = tar.extractfile("Dockerfile").read().decode()  # type: ignore[union-attr]
        assert rendered.rstrip().endswith('LABEL "agentbox.test"="1"')
        assert tar.getmember("ca-certificates").isdir()  # COPYed even when the host has no certificates
        assert tar.getmember("opt-agentbox/bin/agentbox-entrypoint").mode == 0o755


def test_lock_file_pins_every_requirement() -> None:
    lock = (Path(__file__).parents[2] / "src/agentbox/images/files/server-requirements.txt").read_text()
    pins = [line for line in lock.splitlines() if line and not line.startswith("#")]
    assert pins and all("==" in line for line in pins)
    for name in ("starlette", "uvicorn", "httptools", "pydantic", "jupyter-client", "ipykernel"):
        assert any(line.startswith(f"{name}==") for line in pins), name


def test_public_surface() -> None:
    import agentbox.images

    assert set(agentbox.images.__all__) == {
        "BOOTSTRAP_IMAGE",
        "LABEL_BASE",
        "LABEL_CONTENT_HASH",
        "LABEL_RUNTIME",
        "LABEL_VERSION",
        "RUNTIME_REPOSITORY",
        "BaseImage",
        "BuildResult",
        "ImageInfo",
        "bootstrap_base_image",
        "build_runtime_image",
        "ensure_base_image",
        "ensure_runtime_image",
        "ensure_server_volume",
        "list_images",
        "prune_images",
        "prune_server_volumes",
        "server_volume_name",
    }
    assert all(hasattr(agentbox.images, name) for name in agentbox.images.__all__)


# --- real engine ------------------------------------------------------------------------------------------
# Sandboxes come from conftest's `sandboxes` factory: the real backend, its key hand-over and its
# event-driven readiness, rather than a copy of that contract here. Every image, container and volume a
# test makes carries the session labels plus a marker of its own, and comparisons go by that marker, so
# they hold on an engine other tests and people use at the same time.


@pytest.fixture(scope="module")
def build_client() -> Iterator[Any]:
    """A client for builds, which can sit silent for minutes (apt, pip): a long socket timeout."""
    from agentbox.engine import docker_client, engine_available

    if not engine_available():
        pytest.skip("no Docker engine answers (run `agentbox doctor --fix`)")
    engine = docker_client(timeout=1800)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def throwaway(build_client: Any) -> Iterator[list[str]]:
    """Image refs to remove at the end of the module (in reverse order: derived images first)."""
    refs: list[str] = []
    yield refs
    for ref in reversed(refs):
        try:
            build_client.images.remove(ref, force=True)
        except Exception as exc:  # keep cleaning the rest; say what stayed behind
            print(f"could not remove test image {ref}: {exc}")
    prune_server_volumes(build_client)


def _marker(labels: dict[str, str]) -> dict[str, str]:
    return {**labels, CASE_LABEL: uuid.uuid4().hex}


def _build_test_image(client: Any, throwaway: list[str], dockerfile: str, name: str, labels: dict[str, str]) -> str:
    tag = f"agentbox-test-{name}:{uuid.uuid4().hex[:8]}"
    throwaway.append(tag)
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, labels=labels, rm=True)
    return tag


@pytest.fixture(scope="module")
def bootstrap_runtime(build_client: Any) -> str:
    """The current runtime image on the offline-bootstrapped base (pulled, bootstrapped or local,
    whichever this machine needs), reused or built, and kept: every other test uses it too."""
    lines: list[str] = []
    tag = ensure_runtime_image(
        SandboxConfig(base_container_image=BOOTSTRAP_IMAGE), client=build_client, progress=lines.append
    )
    assert any(line.startswith(f"base image {BOOTSTRAP_IMAGE} (") for line in lines), lines
    return tag


# Lines of an apt-get that could not reach a package mirror: this machine has no route to one.
_NO_MIRROR = re.compile(
    r"Temporary failure resolving|Could not resolve|Failed to fetch|Unable to connect|Network is unreachable"
)


@pytest.fixture(scope="module")
def no_python_runtime(build_client: Any, throwaway: list[str]) -> tuple[str, str]:
    """A second base without any Python (the build must install it), and the runtime image on it.

    Installing Python needs a package mirror: on a machine without one the tests that need this skip,
    saying so, rather than fail.
    """
    base = _build_test_image(
        build_client,
        throwaway,
        f"FROM {BOOTSTRAP_IMAGE}\n"
        "RUN apt-get purge -y -q --auto-remove 'python3*' 'libpython3*' >/dev/null && ! test -e /usr/bin/python3\n",
        "nopython",
        TEST_LABELS,
    )
    tag = f"agentbox-test-runtime:{uuid.uuid4().hex[:8]}"
    throwaway.append(tag)
    try:
        result = build_runtime_image(base, tag=tag, client=build_client, labels=TEST_LABELS)
    except ImageBuildError as exc:
        if _NO_MIRROR.search(str(exc)):
            pytest.skip(f"no package mirror reachable to install Python into a base without it: {exc}")
        raise
    assert not result.reused
    return base, tag


def test_runtime_image_serves_commands_as_the_user(bootstrap_runtime: str, sandboxes: Callable[..., Any]) -> None:
    sandbox = sandboxes(runtime_container_image=bootstrap_runtime, user_id=1234, env={"GREETING": "hello world"})
    result = sandbox.run(
        'id -u; id -un; echo $HOME; pwd; stat -c %u .; echo "$GREETING"; ls -A /run/agentbox; sudo -n id -u'
    )
    assert result.exit_code == 0, result
    lines = result.output.split()
    assert lines[:5] == ["1234", "agent", "/home/agent", "/workspace", "1234"]  # work dir made and handed over
    assert "hello world" in result.output
    assert "session-key" not in result.output and "env.sh" not in result.output  # both consumed
    assert lines[-1] == "0"  # passwordless sudo when not hardened
    # Over its Unix socket when it has one (this host only), else its port.
    with httpx.Client(base_url=sandbox.url, transport=httpx.HTTPTransport(uds=sandbox.uds)) as http:
        assert http.get("/alive").status_code == 200  # no key needed
        assert http.get("/info", headers={API_KEY_HEADER: "wrong"}).status_code in (401, 403)

    # The agent's python is the base's; the server's venv is not on PATH and is built on /usr/bin/python3.
    result = sandbox.run("command -v python3; /opt/agentbox/venv/bin/python -c 'import sys; print(sys.base_prefix)'")
    assert result.output.split() == ["/usr/bin/python3", "/usr"]
    assert "/opt/agentbox/venv" not in sandbox.run("echo $PATH").output


def test_labels_and_reuse(build_client: Any, bootstrap_runtime: str) -> None:
    labels = build_client.images.get(bootstrap_runtime).labels
    assert labels[LABEL_RUNTIME] == "1"
    assert labels[LABEL_BASE] == BOOTSTRAP_IMAGE
    assert labels[LABEL_VERSION]
    assert bootstrap_runtime.endswith(":" + labels[LABEL_CONTENT_HASH][:16])

    lines: list[str] = []
    again = build_runtime_image(BOOTSTRAP_IMAGE, client=build_client, progress=lines.append)
    assert again.reused and again.tag == bootstrap_runtime
    assert again.content_hash == labels[LABEL_CONTENT_HASH]
    assert any("up to date" in line for line in lines)
    config = SandboxConfig(base_container_image=BOOTSTRAP_IMAGE)
    assert ensure_runtime_image(config, client=build_client) == bootstrap_runtime


def test_ready_runtime_image_is_used_as_is(build_client: Any, bootstrap_runtime: str) -> None:
    lines: list[str] = []
    config = SandboxConfig(runtime_container_image=bootstrap_runtime)
    assert ensure_runtime_image(config, client=build_client, progress=lines.append) == bootstrap_runtime
    assert any("(local)" in line for line in lines)
    with pytest.raises(ImageNotFoundError, match="cannot be pulled"):
        ensure_runtime_image(SandboxConfig(runtime_container_image="agentbox-test-absent:nope"), client=build_client)


def test_base_without_python_gets_python_installed(
    build_client: Any, no_python_runtime: tuple[str, str], sandboxes: Callable[..., Any]
) -> None:
    base, tag = no_python_runtime
    assert build_client.images.get(tag).labels[LABEL_BASE] == base
    sandbox = sandboxes(runtime_container_image=tag, user_id=1234)
    result = sandbox.run(
        "id -u; /opt/agentbox/venv/bin/python -c 'import sys; print(sys.base_prefix)'; "
        "command -v tini setpriv git curl sudo"
    )
    assert result.exit_code == 0, result
    out = result.output.split()
    assert out[:2] == ["1234", "/usr"]
    assert out[2:] == ["/usr/bin/tini", "/usr/bin/setpriv", "/usr/bin/git", "/usr/bin/curl", "/usr/bin/sudo"]


def test_hardened_drops_sudo_and_capabilities(bootstrap_runtime: str, sandboxes: Callable[..., Any]) -> None:
    sandbox = sandboxes(runtime_container_image=bootstrap_runtime, user_id=1234, hardened=True)
    result = sandbox.run(
        "grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status; test -e /etc/sudoers.d/agentbox; echo sudoers=$?"
    )
    status = dict(line.split(":") for line in result.output.split("\n") if ":" in line)
    assert int(status["CapBnd"].strip(), 16) == 0
    assert int(status["CapEff"].strip(), 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    assert "sudoers=1" in result.output


def test_work_dir_ownership(
    build_client: Any, bootstrap_runtime: str, sandboxes: Callable[..., Any], tmp_path: Path, labels: dict[str, str]
) -> None:
    # A bind mount keeps its owner, even when empty: the host's tree is never chowned.
    bind = tmp_path / "ws"
    bind.mkdir()
    bind.chmod(0o777)  # writable by the sandbox user without being its: agentbox refuses an unwritable workspace
    owner = bind.stat().st_uid
    uid = 1234 if owner != 1234 else 4321
    sandbox = sandboxes(runtime_container_image=bootstrap_runtime, user_id=uid, volumes=[f"{bind}:/workspace"])
    assert sandbox.run("stat -c %u /workspace").output.split() == [str(owner)]

    # An empty, root-owned named volume gets its top directory handed to the user.
    volume = build_client.volumes.create(name=f"agentbox-test-{uuid.uuid4().hex[:8]}", labels=labels)
    try:
        sandbox = sandboxes(
            runtime_container_image=bootstrap_runtime, user_id=uid, volumes=[f"{volume.name}:/workspace"]
        )
        result = sandbox.run("stat -c %u /workspace && touch /workspace/new && echo written")
        assert result.output.split() == [str(uid), "written"]
        sandbox.remove()
    finally:
        volume.remove(force=True)


def test_host_ca_certificates_are_trusted_in_the_image(build_client: Any, bootstrap_runtime: str) -> None:
    certs = host_ca_certificates()
    if not certs:
        pytest.skip("the host has no extra CA certificates in /usr/local/share/ca-certificates")
    bundle = build_client.containers.run(
        bootstrap_runtime,
        entrypoint=["cat", "/etc/ssl/certs/ca-certificates.crt"],
        command=[],
        labels=TEST_LABELS,
        remove=True,
        network_disabled=True,
    ).decode()
    for cert in certs:
        body = "".join(cert.read_text().split("-----")[2].split())  # the base64 between BEGIN and END
        assert body[:64] in bundle.replace("\n", ""), cert


def test_unsupported_base_is_refused_before_building(
    build_client: Any, throwaway: list[str], labels: dict[str, str]
) -> None:
    marker = _marker(labels)
    base = _build_test_image(
        build_client, throwaway, f"FROM {BOOTSTRAP_IMAGE}\nRUN rm /usr/bin/apt-get\n", "noapt", marker
    )
    with pytest.raises(ImageBuildError, match="has no apt-get"):
        build_runtime_image(base, client=build_client, labels=marker)
    # Nothing built with this test's marker (the base itself is no runtime image), and no probe left.
    built = build_client.images.list(filters={"label": [f"{LABEL_RUNTIME}=1", f"{CASE_LABEL}={marker[CASE_LABEL]}"]})
    assert built == []
    assert not build_client.containers.list(all=True, filters={"label": "agentbox.probe=1", "ancestor": base})


def test_list_and_prune_with_server_volumes(
    build_client: Any, bootstrap_runtime: str, throwaway: list[str], labels: dict[str, str]
) -> None:
    marker = _marker(labels)
    # A current runtime image of this test's own (same content hash, its own tag and labels) ...
    current = f"agentbox-test-runtime:{uuid.uuid4().hex[:8]}"
    throwaway.append(current)
    build_runtime_image(BOOTSTRAP_IMAGE, tag=current, client=build_client, labels=marker)
    # ... and a stale one: a content hash no build would give today.
    stale = _build_test_image(
        build_client,
        throwaway,
        f"FROM {bootstrap_runtime}\nLABEL {LABEL_CONTENT_HASH}=stale {LABEL_BASE}={BOOTSTRAP_IMAGE}\n",
        "stale-runtime",
        marker,
    )
    infos = {tag: info for info in list_images(build_client, labels=marker) for tag in info.tags}
    assert set(infos) == {current, stale}
    assert infos[current].current and not infos[stale].current
    assert {tag for info in list_images(build_client) for tag in info.tags} >= {bootstrap_runtime, current, stale}

    stale_id = build_client.images.get(stale).id
    volume = ensure_server_volume(build_client, stale, labels=marker)
    assert volume == server_volume_name(stale_id)

    assert prune_images(build_client, labels=marker) == [stale]
    assert {tag for info in list_images(build_client, labels=marker) for tag in info.tags} == {current}
    # The pruned image's server volume went with it.
    assert not build_client.api.volumes(filters={"name": volume}).get("Volumes")
