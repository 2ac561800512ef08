"""A real service with the console, a runtime image whose server can speak WebSocket, and Chromium.

A module of its own (not conftest) so the browser tests and ``bench/bench_console.py`` share it.

The runtime server's ``/pty`` needs a WebSocket library in the image's server venv. Until the image's
lock (``server-requirements.txt``) pins one, :func:`console_image` derives a test image from the
runtime image with the host's ``websockets`` package copied into that venv (labelled, removed after).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

TEST_LABEL = "agentbox.test"
SESSION_LABEL = "agentbox.test-session"
SESSION = "console-" + uuid.uuid4().hex[:10]
LABELS = {TEST_LABEL: "1", SESSION_LABEL: SESSION}
AGENTBOX = str(Path(sys.executable).with_name("agentbox"))
READY_PREFIX = "agentbox serve ready on "
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SITE_PACKAGES = "/opt/agentbox/venv/lib/python3.11/site-packages"


def output_dir() -> Path:
    """Where screenshots go: ``$AGENTBOX_TEST_OUTPUT/console`` (default ``.test-output/console``)."""
    path = Path(os.environ.get("AGENTBOX_TEST_OUTPUT", ".test-output")) / "console"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _has_websockets(client: Any, image: str) -> bool:
    out = client.containers.run(image, entrypoint=["/opt/agentbox/venv/bin/python", "-c",
                                "import importlib.util as u; print(bool(u.find_spec('websockets')))"],
                                remove=True, labels=LABELS, network_mode="none")
    return out.strip() == b"True"


@contextlib.contextmanager
def console_image(client: Any) -> Iterator[str]:
    """The runtime image if its server venv has a WebSocket library, else a derived test image that has."""
    from agentbox.config import SandboxConfig
    from agentbox.images import ensure_runtime_image

    base = os.environ.get("AGENTBOX_TEST_IMAGE") or ensure_runtime_image(SandboxConfig(), client=client)
    if _has_websockets(client, base):
        yield base
        return
    import websockets

    tag = f"agentbox-console-test:{SESSION}"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        dockerfile = f"FROM {base}\nCOPY websockets {SITE_PACKAGES}/websockets\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))

        def root_owned(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
            if "__pycache__" in member.name:
                return None
            member.uid = member.gid = 0
            member.uname = member.gname = "root"
            member.mode = 0o755 if member.isdir() else 0o644
            return member

        tar.add(Path(websockets.__file__).parent, "websockets", filter=root_owned)
    context.seek(0)
    image, _logs = client.images.build(fileobj=context, custom_context=True, tag=tag, labels=LABELS, rm=True)
    try:
        yield tag
    finally:
        from docker.errors import APIError

        for c in client.api.containers(all=True, filters={"ancestor": image.id}):
            with contextlib.suppress(APIError):
                client.api.remove_container(c["Id"], force=True, v=True)
        for v in client.api.volumes(filters={"label": f"agentbox.image={image.id}"}).get("Volumes") or []:
            with contextlib.suppress(APIError):
                client.api.remove_volume(v["Name"], force=True)
        with contextlib.suppress(APIError):
            client.api.remove_image(image.id, force=True)


class Service:
    """One ``agentbox serve`` process."""

    def __init__(self, data_dir: Path, config: Path) -> None:
        args = [AGENTBOX, "serve", "--port", "0", "--data-dir", str(data_dir), "--config", str(config)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        self.lines: list[str] = []
        for line in self.proc.stderr:  # bounded by the service's own start-up (reconcile) time
            self.lines.append(line)
            if line.startswith(READY_PREFIX):
                break
        else:
            self.proc.stderr.close()
            self.proc.wait()  # it ended (EOF on its stderr): reaped, not left to warn when collected
            raise RuntimeError("agentbox serve ended before its ready line: " + "".join(self.lines))
        self.url = self.lines[-1].strip()[len(READY_PREFIX):]
        self.admin_token = (data_dir / "admin.token").read_text().strip()
        # Keep reading stderr so the service never blocks on a full pipe.
        import threading

        def drain() -> None:
            stderr = self.proc.stderr
            assert stderr is not None
            for ln in stderr:
                self.lines.append(ln)
            stderr.close()  # EOF: the pipe is ours to close (unclosed, it warns when collected)

        threading.Thread(target=drain, daemon=True).start()

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token or self.admin_token}"},
                            timeout=120)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def service(tmp: Path, image: str, client: Any) -> Iterator[Service]:
    """A service whose default image is ``image``; its sandboxes are removed after (also by label)."""
    # A network of its own: the tests do not depend on the engine's default bridge (nor disturb it).
    network = f"abx-console-{SESSION}"
    client.api.create_network(network, driver="bridge", labels=LABELS)
    config = tmp / "service.toml"
    config.write_text(f'[sandbox]\nruntime_container_image = "{image}"\nnetwork = "{network}"\n\n'
                      f'[policy]\nnetworks = ["{network}"]\n')
    svc: Service | None = None
    try:
        svc = Service(tmp / "data", config)
        yield svc
    finally:
        if svc is not None:
            _remove_all(svc)
        from docker.errors import APIError

        for c in client.api.containers(all=True, filters={"label": f"{SESSION_LABEL}={SESSION}"}):
            with contextlib.suppress(APIError):
                client.api.remove_container(c["Id"], force=True, v=True)
        with contextlib.suppress(APIError):
            client.api.remove_network(network)


def _remove_all(svc: Service) -> None:
    """Remove the service's sandboxes through its API, then stop it."""
    try:
        with contextlib.suppress(httpx.HTTPError), svc.client() as api:
            for sb in api.get("/v1/sandboxes").json().get("sandboxes", []):
                api.delete(f"/v1/sandboxes/{sb['id']}")
    finally:
        svc.stop()


def browser(width: int = 1280, height: int = 900) -> Any:
    """Headless Debian Chromium driven by Selenium through Debian's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--force-prefers-reduced-motion"):
        options.add_argument(arg)
    return webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=options)


def browser_available() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()
