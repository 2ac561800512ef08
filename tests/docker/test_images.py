"""Runtime images against the real engine: build on two different bases, run the entrypoint contract,
reuse by content hash, labels, list/prune, an unsupported base, and the carried CA certificates.

Everything a test creates carries ``agentbox.test=1`` and is removed. The current runtime image on the
bootstrapped base is built (or reused) by a module fixture and left in place: it is the image every
other Docker test and engineer uses.
"""

from __future__ import annotations

import io
import re
import secrets
import shutil
import tarfile
import time
import uuid
from collections.abc import Iterator
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
    list_images,
    prune_images,
)
from agentbox.images.context import host_ca_certificates, make_context, package_dir
from agentbox.protocol import API_KEY_HEADER, READY_LINE_PREFIX

TEST_LABELS = {"agentbox.test": "1"}
READY_TIMEOUT = 60.0


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


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from agentbox.engine import docker_client
    from agentbox.errors import EngineUnavailableError

    try:
        engine = docker_client(timeout=1800)
    except EngineUnavailableError as exc:
        pytest.skip(str(exc))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def throwaway(client: Any) -> Iterator[list[str]]:
    """Image refs to remove at the end of the module (in reverse order: derived images first)."""
    refs: list[str] = []
    yield refs
    for ref in reversed(refs):
        try:
            client.images.remove(ref, force=True)
        except Exception as exc:  # keep cleaning the rest; say what stayed behind
            print(f"could not remove test image {ref}: {exc}")


def _build_test_image(client: Any, throwaway: list[str], dockerfile: str, name: str) -> str:
    tag = f"agentbox-test-{name}:{uuid.uuid4().hex[:8]}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    throwaway.append(tag)
    client.images.build(
        fileobj=io.BytesIO(buffer.getvalue()), custom_context=True, tag=tag, labels=TEST_LABELS, rm=True
    )
    return tag


@pytest.fixture(scope="module")
def runtime_image(client: Any) -> str:
    """The current runtime image on the bootstrapped base: the real one, reused or built, kept."""
    lines: list[str] = []
    tag = ensure_runtime_image(
        SandboxConfig(base_container_image=BOOTSTRAP_IMAGE), client=client, progress=lines.append
    )
    assert any("base image" in line and "local" in line for line in lines), lines
    return tag


@pytest.fixture(scope="module")
def no_python_runtime(client: Any, throwaway: list[str]) -> tuple[str, str]:
    """A second base without any Python (the build must install it), and the runtime image on it."""
    base = _build_test_image(
        client,
        throwaway,
        f"FROM {BOOTSTRAP_IMAGE}\n"
        "RUN apt-get purge -y -q --auto-remove 'python3*' 'libpython3*' >/dev/null && ! test -e /usr/bin/python3\n",
        "nopython",
    )
    tag = f"agentbox-test-runtime:{uuid.uuid4().hex[:8]}"
    throwaway.append(tag)
    result = build_runtime_image(base, tag=tag, client=client, labels=TEST_LABELS)
    assert not result.reused
    return base, tag


class Sandbox:
    """A container started the way the Docker backend starts one: key put in before start, then ready."""

    def __init__(self, client: Any, image: str, *, args: list[str] | None = None, **create: Any) -> None:
        self.key = secrets.token_urlsafe(24)
        self.container = client.containers.create(
            image,
            ["--uid", "1234", "--work-dir", "/workspace", "--host", "0.0.0.0", "--port", "8000", *(args or [])],
            labels=TEST_LABELS,
            ports={"8000/tcp": ("127.0.0.1", None)},
            **create,
        )

    def start(self, env_sh: str | None = None) -> Sandbox:
        files = {"session-key": (self.key + "\n").encode()}
        if env_sh is not None:
            files["env.sh"] = env_sh.encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            directory = tarfile.TarInfo("agentbox")
            directory.type, directory.mode = tarfile.DIRTYPE, 0o700
            tar.addfile(directory)
            for name, data in files.items():
                info = tarfile.TarInfo(f"agentbox/{name}")
                info.size, info.mode = len(data), 0o600
                tar.addfile(info, io.BytesIO(data))
        self.container.put_archive("/run", buffer.getvalue())
        self.container.start()
        deadline = time.monotonic() + READY_TIMEOUT
        logs = b""
        while READY_LINE_PREFIX.encode() not in logs:
            self.container.reload()
            if self.container.status == "exited" or time.monotonic() > deadline:
                raise AssertionError(f"sandbox {self.container.short_id} never got ready; logs:\n{logs.decode()}")
            time.sleep(0.05)
            logs = self.container.logs()
        match = re.search(rb"ready on http://(\S+):(\d+)", logs)
        assert match and match.group(2) == b"8000", logs
        port = self.container.ports["8000/tcp"][0]["HostPort"]
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={API_KEY_HEADER: self.key}, timeout=60)
        return self

    def run(self, command: str) -> dict[str, Any]:
        response = self.http.post("/sessions/default/run", json={"command": command})
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def remove(self) -> None:
        if hasattr(self, "http"):
            self.http.close()
        self.container.remove(force=True)


@pytest.fixture
def sandboxes(client: Any) -> Iterator[list[Sandbox]]:
    made: list[Sandbox] = []
    yield made
    for sandbox in made:
        sandbox.remove()


def _start(client: Any, made: list[Sandbox], image: str, env_sh: str | None = None, **kw: Any) -> Sandbox:
    sandbox = Sandbox(client, image, **kw)
    made.append(sandbox)
    return sandbox.start(env_sh)


@pytest.mark.docker
def test_runtime_image_serves_commands_as_the_user(client: Any, runtime_image: str, sandboxes: list[Sandbox]) -> None:
    sandbox = _start(client, sandboxes, runtime_image, env_sh="export GREETING='hello world'\n")
    result = sandbox.run(
        'id -u; id -un; echo $HOME; pwd; stat -c %u .; echo "$GREETING"; ls -A /run/agentbox; sudo -n id -u'
    )
    assert result["exit_code"] == 0, result
    lines = result["output"].split()
    assert lines[:5] == ["1234", "agent", "/home/agent", "/workspace", "1234"]  # work dir made and handed over
    assert "hello world" in result["output"]
    assert "session-key" not in result["output"] and "env.sh" not in result["output"]  # both consumed
    assert lines[-1] == "0"  # passwordless sudo when not hardened
    assert httpx.get(str(sandbox.http.base_url.join("/alive"))).status_code == 200  # no key needed
    assert sandbox.http.get("/info", headers={API_KEY_HEADER: "wrong"}).status_code in (401, 403)

    # The agent's python is the base's; the server's venv is not on PATH and is built on /usr/bin/python3.
    result = sandbox.run("command -v python3; /opt/agentbox/venv/bin/python -c 'import sys; print(sys.base_prefix)'")
    assert result["output"].split() == ["/usr/bin/python3", "/usr"]
    assert "/opt/agentbox/venv" not in sandbox.run("echo $PATH")["output"]


@pytest.mark.docker
def test_labels_and_reuse(client: Any, runtime_image: str) -> None:
    labels = client.images.get(runtime_image).labels
    assert labels[LABEL_RUNTIME] == "1"
    assert labels[LABEL_BASE] == BOOTSTRAP_IMAGE
    assert labels[LABEL_VERSION]
    assert runtime_image.endswith(":" + labels[LABEL_CONTENT_HASH][:16])

    lines: list[str] = []
    again = build_runtime_image(BOOTSTRAP_IMAGE, client=client, progress=lines.append)
    assert again.reused and again.tag == runtime_image
    assert again.content_hash == labels[LABEL_CONTENT_HASH]
    assert any("up to date" in line for line in lines)
    assert ensure_runtime_image(SandboxConfig(base_container_image=BOOTSTRAP_IMAGE), client=client) == runtime_image


@pytest.mark.docker
def test_ready_runtime_image_is_used_as_is(client: Any, runtime_image: str) -> None:
    lines: list[str] = []
    config = SandboxConfig(runtime_container_image=runtime_image)
    assert ensure_runtime_image(config, client=client, progress=lines.append) == runtime_image
    assert any("(local)" in line for line in lines)
    with pytest.raises(ImageNotFoundError, match="cannot be pulled"):
        ensure_runtime_image(SandboxConfig(runtime_container_image="agentbox-test-absent:nope"), client=client)


@pytest.mark.docker
def test_base_without_python_gets_python_installed(
    client: Any, no_python_runtime: tuple[str, str], sandboxes: list[Sandbox]
) -> None:
    base, tag = no_python_runtime
    assert client.images.get(tag).labels[LABEL_BASE] == base
    sandbox = _start(client, sandboxes, tag)
    result = sandbox.run(
        "id -u; /opt/agentbox/venv/bin/python -c 'import sys; print(sys.base_prefix)'; "
        "command -v tini setpriv git curl sudo"
    )
    assert result["exit_code"] == 0, result
    out = result["output"].split()
    assert out[:2] == ["1234", "/usr"]
    assert out[2:] == ["/usr/bin/tini", "/usr/bin/setpriv", "/usr/bin/git", "/usr/bin/curl", "/usr/bin/sudo"]


@pytest.mark.docker
def test_hardened_drops_sudo_and_capabilities(client: Any, runtime_image: str, sandboxes: list[Sandbox]) -> None:
    sandbox = _start(
        client,
        sandboxes,
        runtime_image,
        args=["--hardened"],
        cap_drop=["ALL"],
        cap_add=["CHOWN", "SETUID", "SETGID", "SETPCAP", "DAC_OVERRIDE", "FOWNER"],
        security_opt=["no-new-privileges"],
    )
    result = sandbox.run(
        "grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status; test -e /etc/sudoers.d/agentbox; echo sudoers=$?"
    )
    status = dict(line.split(":") for line in result["output"].split("\n") if ":" in line)
    assert int(status["CapBnd"].strip(), 16) == 0
    assert int(status["CapEff"].strip(), 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    assert "sudoers=1" in result["output"]


@pytest.mark.docker
def test_work_dir_ownership(client: Any, runtime_image: str, sandboxes: list[Sandbox], tmp_path: Path) -> None:
    # A bind mount keeps its owner, even when empty and root-owned: the host's tree is never chowned.
    bind = tmp_path / "ws"
    bind.mkdir()
    assert bind.stat().st_uid != 1234
    sandbox = _start(client, sandboxes, runtime_image, volumes={str(bind): {"bind": "/workspace", "mode": "rw"}})
    assert sandbox.run("stat -c %u /workspace")["output"].split() == [str(bind.stat().st_uid)]

    # An empty, root-owned named volume gets its top directory handed to the user.
    volume = client.volumes.create(name=f"agentbox-test-{uuid.uuid4().hex[:8]}", labels=TEST_LABELS)
    try:
        sandbox = _start(client, sandboxes, runtime_image, volumes={volume.name: {"bind": "/workspace", "mode": "rw"}})
        result = sandbox.run("stat -c %u /workspace && touch /workspace/new && echo written")
        assert result["output"].split() == ["1234", "written"]
        sandboxes.remove(sandbox)
        sandbox.remove()
    finally:
        volume.remove(force=True)


@pytest.mark.docker
def test_host_ca_certificates_are_trusted_in_the_image(client: Any, runtime_image: str) -> None:
    certs = host_ca_certificates()
    if not certs:
        pytest.skip("the host has no extra CA certificates in /usr/local/share/ca-certificates")
    bundle = client.containers.run(
        runtime_image,
        entrypoint=["cat", "/etc/ssl/certs/ca-certificates.crt"],
        command=[],
        labels=TEST_LABELS,
        remove=True,
        network_disabled=True,
    ).decode()
    for cert in certs:
        body = "".join(cert.read_text().split("-----")[2].split())  # the base64 between BEGIN and END
        assert body[:64] in bundle.replace("\n", ""), cert


@pytest.mark.docker
def test_unsupported_base_is_refused_before_building(client: Any, throwaway: list[str]) -> None:
    base = _build_test_image(client, throwaway, f"FROM {BOOTSTRAP_IMAGE}\nRUN rm /usr/bin/apt-get\n", "noapt")
    before = {image.id for image in client.images.list(filters={"label": f"{LABEL_RUNTIME}=1"})}
    with pytest.raises(ImageBuildError, match="has no apt-get"):
        build_runtime_image(base, client=client, labels=TEST_LABELS)
    after = {image.id for image in client.images.list(filters={"label": f"{LABEL_RUNTIME}=1"})}
    assert after == before
    assert not client.containers.list(all=True, filters={"label": "agentbox.probe=1", "ancestor": base})


@pytest.mark.docker
def test_list_and_prune(
    client: Any, runtime_image: str, no_python_runtime: tuple[str, str], throwaway: list[str]
) -> None:
    _base, current_test_image = no_python_runtime
    stale = _build_test_image(
        client,
        throwaway,
        f"FROM {runtime_image}\nLABEL {LABEL_CONTENT_HASH}=stale {LABEL_BASE}={BOOTSTRAP_IMAGE}\n",
        "stale-runtime",
    )
    infos = {tag: info for info in list_images(client) for tag in info.tags}
    assert infos[runtime_image].current
    assert not infos[stale].current
    assert infos[current_test_image].current

    removed = prune_images(client, labels=TEST_LABELS)
    assert removed == [stale]
    remaining = {tag for info in list_images(client) for tag in info.tags}
    assert runtime_image in remaining and current_test_image in remaining and stale not in remaining
