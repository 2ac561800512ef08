"""What this machine lacks to run sandboxes, and (with ``fix``) the setup that provides it.

``make test``, ``make run`` and ``agentbox doctor --fix`` all go through :func:`diagnose`, so users get
the same setup CI gets: a Docker engine that answers (installed with apt and started in the background
when missing), optionally gVisor registered with it, a base image (pulled or bootstrapped offline), and
the runtime image built on it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agentbox.config import SandboxConfig
from agentbox.errors import AgentboxError, EngineUnavailableError

__all__ = ["BROWSER_PACKAGES", "Check", "diagnose", "ensure_browser", "ensure_engine", "register_runsc"]

DOCKERD_LOG = "/var/log/agentbox-dockerd.log"
DOCKER_SOCKET = "/var/run/docker.sock"
DAEMON_JSON = Path("/etc/docker/daemon.json")
ENGINE_WAIT_SECONDS = 60.0
#: Debian's Chromium and its WebDriver: the web console's browser tests drive them (no downloaded browser).
BROWSER_PACKAGES = ("chromium", "chromium-driver")
_BROWSER_BINARIES = ("chromium", "chromedriver")

Progress = Callable[[str], None]


@dataclass
class Check:
    """One requirement, whether it holds, and the command that makes it hold."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None


def _apt_install(packages: list[str], progress: Progress) -> None:
    names = " ".join(packages)
    if os.geteuid() != 0:
        raise EngineUnavailableError(f"installing {names} needs root: sudo apt-get install {names}")
    if shutil.which("apt-get") is None:
        raise EngineUnavailableError(f"{names} missing and this machine has no apt-get: install it yourself")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    progress(f"installing {' '.join(packages)} with apt-get ...")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *packages]):
        result = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if result.returncode != 0:
            raise EngineUnavailableError(f"{' '.join(cmd)} failed:\n{result.stderr[-1500:]}")


def _ping() -> bool:
    from agentbox.engine import engine_available

    return engine_available()


def _dockerd_pids() -> list[int]:
    result = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True)
    return [int(pid) for pid in result.stdout.split()]


def ensure_engine(*, fix: bool, progress: Progress) -> Check:
    """A Docker engine answers; with ``fix``, install docker.io and start dockerd detached if needed."""
    if _ping():
        return Check("docker engine", True, "answers")
    fix_cmd = "agentbox doctor --fix"
    if not fix:
        return Check("docker engine", False, "no Docker engine answers", fix_cmd)
    if shutil.which("dockerd") is None:
        _apt_install(["docker.io"], progress)
    if not _dockerd_pids():
        progress(f"starting dockerd in the background (log: {DOCKERD_LOG}) ...")
        with open(DOCKERD_LOG, "ab") as log:
            # A new session and no inherited pipes: dockerd must not hold a terminal or CI's output open.
            subprocess.Popen(
                ["dockerd"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
    deadline = time.monotonic() + ENGINE_WAIT_SECONDS
    while time.monotonic() < deadline:
        if os.path.exists(DOCKER_SOCKET) and _ping():
            return Check("docker engine", True, "started dockerd")
        time.sleep(0.25)
    tail = ""
    if os.path.exists(DOCKERD_LOG):
        tail = Path(DOCKERD_LOG).read_text(errors="replace")[-1200:]
    raise EngineUnavailableError(
        f"dockerd did not answer within {ENGINE_WAIT_SECONDS:.0f} s; see {DOCKERD_LOG}:\n{tail}"
    )


# What an agent sees differently under gVisor, said before the first sandbox rather than after its first
# failed command (README, "gVisor"): gVisor up to at least Debian's 0.0~20221219 never elevates setuid
# binaries, rejects statx(AT_NO_AUTOMOUNT) and blocks on an empty write to a terminal; the runtime image
# works around all three.
GVISOR_NOTE = (
    "under gVisor, default mode's sudo goes through agentbox's root broker (setuid cannot elevate there; "
    "a sudo is ~0.3 s), and coreutils and npm work through a small compatibility shim; hardened mode has "
    "no sudo, as under runc"
)


def register_runsc(*, fix: bool, progress: Progress) -> Check:
    """gVisor's runsc is installed and registered with dockerd (with host networking, see README)."""
    import docker

    client = docker.from_env()
    try:
        runtimes = client.info().get("Runtimes", {})
    finally:
        client.close()
    if "runsc" in runtimes:
        return Check("gVisor runtime", True, f"runsc registered with dockerd; {GVISOR_NOTE}")
    if not fix:
        return Check("gVisor runtime", False, "runsc not registered", "agentbox doctor --fix --runsc")
    if shutil.which("runsc") is None:
        _apt_install(["runsc"], progress)
    path = shutil.which("runsc") or "/usr/bin/runsc"
    config = json.loads(DAEMON_JSON.read_text()) if DAEMON_JSON.exists() else {}
    # runsc's own network stack cannot start on every host; host networking inside gVisor works everywhere.
    config.setdefault("runtimes", {})["runsc"] = {"path": path, "runtimeArgs": ["--network=host"]}
    DAEMON_JSON.parent.mkdir(parents=True, exist_ok=True)
    DAEMON_JSON.write_text(json.dumps(config, indent=2) + "\n")
    pids = _dockerd_pids()
    if not pids:
        raise EngineUnavailableError("runsc registered in daemon.json but no dockerd process to reload")
    for pid in pids:
        os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        client = docker.from_env()
        try:
            if "runsc" in client.info().get("Runtimes", {}):
                return Check("gVisor runtime", True, f"registered {path} with dockerd; {GVISOR_NOTE}")
        finally:
            client.close()
        time.sleep(0.2)
    raise EngineUnavailableError(f"dockerd did not pick up runsc from {DAEMON_JSON} after SIGHUP")


def ensure_browser(*, fix: bool, progress: Progress) -> Check:
    """Debian's ``chromium`` and ``chromium-driver`` are installed (the console's browser tests need them)."""
    missing = [name for name in _BROWSER_BINARIES if shutil.which(name) is None]
    if not missing:
        return Check("browser", True, "chromium and chromedriver installed")
    if not fix:
        return Check("browser", False, f"{', '.join(missing)} not installed", "agentbox doctor --fix --browser")
    _apt_install(list(BROWSER_PACKAGES), progress)
    still = [name for name in _BROWSER_BINARIES if shutil.which(name) is None]
    if still:
        raise EngineUnavailableError(f"apt-get installed {' '.join(BROWSER_PACKAGES)} but not {', '.join(still)}")
    return Check("browser", True, f"installed {' '.join(BROWSER_PACKAGES)}")


def diagnose(
    config: SandboxConfig,
    *,
    fix: bool = False,
    runsc: bool = False,
    build: bool = True,
    browser: bool = False,
    progress: Progress = lambda _msg: None,
) -> list[Check]:
    """Check (and with ``fix``, provide) everything sandboxes need here; stops at the first blocker.

    ``browser``: also Chromium and its driver, for the web console's browser tests."""
    checks = [ensure_engine(fix=fix, progress=progress)]
    if browser:
        checks.append(ensure_browser(fix=fix, progress=progress))
    if not checks[0].ok:
        return checks
    if runsc or config.runtime == "runsc":
        checks.append(register_runsc(fix=fix, progress=progress))
    if shutil.which("debootstrap") is None and fix and os.geteuid() == 0:
        _apt_install(["debootstrap"], progress)

    from agentbox.engine import docker_client
    from agentbox.images.base import ensure_base_image

    client = docker_client()
    try:
        if config.runtime_container_image:
            checks.append(_runtime_image_check(client, config.runtime_container_image))
            return checks
        if not fix:
            checks.append(_base_check(client, config.base_container_image))
            return checks
        base = ensure_base_image(client, config.base_container_image, progress=progress)
        checks.append(Check("base image", True, f"{base.ref} ({base.how}{': ' + base.note if base.note else ''})"))
        if build:
            from agentbox.images import ensure_runtime_image

            try:
                tag = ensure_runtime_image(config, client=client, progress=progress)
            except AgentboxError as exc:
                checks.append(Check("runtime image", False, str(exc), "agentbox build"))
            else:
                checks.append(Check("runtime image", True, tag))
    finally:
        client.close()
    return checks


def _runtime_image_check(client: object, ref: str) -> Check:
    from docker.errors import ImageNotFound

    try:
        client.images.get(ref)  # type: ignore[attr-defined]
    except ImageNotFound:
        return Check("runtime image", False, f"{ref} is not present", f"docker pull {ref}")
    return Check("runtime image", True, ref)


def _base_check(client: object, ref: str) -> Check:
    from docker.errors import ImageNotFound

    from agentbox.images.base import BOOTSTRAP_IMAGE

    for candidate in (ref, BOOTSTRAP_IMAGE):
        try:
            client.images.get(candidate)  # type: ignore[attr-defined]
        except ImageNotFound:
            continue
        return Check("base image", True, candidate)
    return Check("base image", False, f"neither {ref} nor {BOOTSTRAP_IMAGE} is present", "agentbox doctor --fix")
