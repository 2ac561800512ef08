"""``agentbox demo`` (what ``make run`` calls): the current folder in a sandbox, owned by you.

On a terminal it opens a shell in a fresh sandbox with the current folder at ``/workspace`` and removes
the sandbox when the shell exits. Without one (CI, a pipe) it shows, step by step, each feature of the
seed document working, checking each for real rather than printing a script: the mount, file
ownership, a read-only data mount, localhost-only port publishing, the persistent shell, stateful
Python and removal. It leaves nothing behind: the files it makes are deleted, the sandbox is removed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from agentbox.errors import AgentboxError

from ._app import EXIT_RUNTIME, SETUP_PANEL, ConfigOpt, command, err, out, usage_error
from ._options import ImageOpt, RuntimeOpt, resolve
from .sandboxes import LabelOpt, parse_labels, shell_argv, start_sandbox

if TYPE_CHECKING:
    from agentbox.config import SandboxConfig
    from agentbox.protocol import PythonResult
    from agentbox.sandbox import Sandbox

# Names the demo creates in the user's folder start with this, so a leftover is recognisable.
DEMO_PREFIX = ".agentbox-demo-"


def invoking_uid(environ: dict[str, str] | None = None) -> int:
    """The uid files in the user's folder should belong to: under sudo the real user's, not root's."""
    environ = dict(os.environ) if environ is None else environ
    sudo_uid = environ.get("SUDO_UID", "")
    if os.geteuid() == 0 and sudo_uid.isdigit():
        return int(sudo_uid)
    return os.getuid()


class StepFailed(Exception):
    """A demonstration step's check did not hold."""


@dataclass
class Demo:
    """Runs the demonstration steps, printing a ✓ (or ✗) line with the time each took."""

    failures: list[str] = field(default_factory=list)

    @contextmanager
    def step(self, title: str) -> Iterator[dict[str, str]]:
        """One step: the body fills ``note['detail']``; raising StepFailed or an agentbox error marks ✗."""
        note: dict[str, str] = {"detail": ""}
        started = time.perf_counter()
        try:
            yield note
        except (StepFailed, AgentboxError, OSError) as exc:
            self.failures.append(title)
            out.print(f"  [red]✗[/] {escape(title)}: {escape(str(exc))}")
            return
        ms = (time.perf_counter() - started) * 1000
        detail = f" — {note['detail']}" if note["detail"] else ""
        out.print(f"  [green]✓[/] {escape(title)}{escape(detail)} [dim]({ms:.0f} ms)[/]")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise StepFailed(message)


def _entries(count: int) -> str:
    return f"{count} {'entry' if count == 1 else 'entries'}"


def _sample_file(folder: Path) -> Path | None:
    """A small readable text file in ``folder`` to look at from inside the sandbox."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return None
    for path in entries:
        try:
            if path.is_file() and not path.is_symlink() and 0 < path.stat().st_size < 256 * 1024:
                path.read_text(encoding="utf-8")
                return path
        except (OSError, UnicodeDecodeError):
            continue
    return None


def _published_ports(container_id: str) -> list[tuple[str, str, str]]:
    """(container port, host ip, host port) for every published port, read from the engine."""
    from agentbox.engine import docker_client, translate_errors

    client = docker_client()
    try:
        with translate_errors("inspect the sandbox container"):
            attrs = client.api.inspect_container(container_id)
    finally:
        client.close()
    ports = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    return [
        (port, binding.get("HostIp", ""), binding.get("HostPort", ""))
        for port, bindings in sorted(ports.items())
        for binding in bindings or []
    ]


def _container_exists(container_id: str) -> bool:
    from docker.errors import NotFound

    from agentbox.engine import docker_client

    client = docker_client()
    try:
        client.api.inspect_container(container_id)
    except NotFound:
        return False
    finally:
        client.close()
    return True


def _python_value(result: PythonResult) -> str:
    """The text/plain form of the value of the last expression (IPython's Out[n])."""
    from agentbox.protocol import ErrorOutput, RichOutput

    for output in result.outputs:
        if isinstance(output, ErrorOutput):
            raise StepFailed(f"{output.ename}: {output.evalue}")
        if isinstance(output, RichOutput) and output.type == "result":
            return output.text or ""
    return ""


def container_id_of(sandbox: Sandbox) -> str:
    """The Docker container behind a started ``sandbox``."""
    if sandbox.container_id is None:
        raise StepFailed(f"sandbox {sandbox.id} has no container")
    return sandbox.container_id


def demonstrate(sandbox: Sandbox, folder: Path, data_dir: Path, uid: int) -> list[str]:
    """Run every step against a started ``sandbox``; returns the titles of the steps that failed."""
    demo = Demo()
    config = sandbox.config
    work = config.work_dir

    with demo.step(f"mount: {folder} is {work}") as note:
        sample = _sample_file(folder)
        listing = sandbox.run(f"ls -A {work}")
        _check(listing.exit_code == 0, f"ls {work} failed: {listing.output.strip()}")
        inside = set(listing.output.split())
        outside = {p.name for p in folder.iterdir()}
        _check(outside <= inside, f"host entries missing in the sandbox: {sorted(outside - inside)[:5]}")
        if sample is not None:
            text = sandbox.read_file(f"{work}/{sample.name}").content
            _check(text == sample.read_text(encoding="utf-8"), f"{sample.name} reads differently inside")
            note["detail"] = f"{_entries(len(outside))}, {sample.name} reads the same inside"
        else:
            note["detail"] = f"{_entries(len(outside))} visible"

    probe = folder / f"{DEMO_PREFIX}{secrets.token_hex(4)}"
    with demo.step(f"ownership: a file created in the sandbox belongs to uid {uid} on the host") as note:
        try:
            made = sandbox.run(f"echo made in the sandbox > {work}/{probe.name} && id -u")
            _check(made.exit_code == 0, f"could not create a file: {made.output.strip()}")
            owner = probe.stat().st_uid
            _check(owner == uid, f"{probe} is owned by uid {owner}, expected {uid}")
            note["detail"] = f"{probe.name} owned by uid {owner} (sandbox user uid {made.output.strip()}), deleted"
        finally:
            probe.unlink(missing_ok=True)

    with demo.step("read-only data mount: /data is readable, writes fail") as note:
        text = sandbox.read_file("/data/reference.txt").content
        _check("reference" in text, f"/data/reference.txt reads {text!r}")
        write = sandbox.run("touch /data/new-file")
        _check(write.exit_code != 0, "writing to /data succeeded")
        _check(not (data_dir / "new-file").exists(), "a file appeared in the read-only host folder")
        note["detail"] = write.output.strip().splitlines()[-1] if write.output.strip() else "write refused"

    from agentbox.backends.spec import LOOPBACK

    binding = config.runtime_binding_address or LOOPBACK
    where = "this host only" if config.runtime_binding_address is None else binding
    with demo.step(f"port binding: the runtime server is reachable from {where}") as note:
        ports = _published_ports(container_id_of(sandbox))
        if config.use_host_network:
            note["detail"] = "host network: no ports published"
        elif sandbox.uds is not None:
            _check(not ports, f"a Unix-socket sandbox publishes ports: {ports}")
            mode = os.stat(os.path.dirname(sandbox.uds)).st_mode & 0o777
            _check(mode == 0o700, f"its socket directory has mode {mode:o}")
            note["detail"] = f"no port published; its server is on unix:{sandbox.uds} (a 0700 directory)"
        else:
            _check(bool(ports), "no published port found in docker inspect")
            wrong = [p for p in ports if p[1] != binding]
            _check(not wrong, f"published on {wrong}")
            note["detail"] = ", ".join(f"{port} -> {ip}:{hostport}" for port, ip, hostport in ports)

    with demo.step("persistent shell: cd and export carry over to the next command") as note:
        sandbox.run("cd /tmp && export AGENTBOX_DEMO=42")
        after = sandbox.run('echo "$PWD $AGENTBOX_DEMO"')
        _check(after.output.strip() == "/tmp 42", f"next command saw {after.output.strip()!r}")
        _check(after.cwd == "/tmp", f"cwd reported as {after.cwd!r}")
        note["detail"] = f"next command sees {after.output.strip()!r}"

    with demo.step("stateful Python: a variable survives between calls") as note:
        _python_value(sandbox.run_python("x = 41 + 1"))
        value = _python_value(sandbox.run_python("x")).strip()
        _check(value == "42", f"x evaluated to {value!r}")
        note["detail"] = f"x = 41 + 1, then x -> {value}"
    return demo.failures


@contextmanager
def _data_dir() -> Iterator[Path]:
    """A host folder for the /data:ro mount, readable by any sandbox uid, deleted afterwards."""
    path = Path(tempfile.mkdtemp(prefix="agentbox-demo-data-"))
    try:
        (path / "reference.txt").write_text("reference material for the agent\n", encoding="utf-8")
        # mkdtemp makes 0700; the sandbox user is not necessarily the uid that made it.
        path.chmod(0o755)
        (path / "reference.txt").chmod(0o644)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _interactive(config: SandboxConfig, labels: dict[str, str], folder: Path) -> int:
    with start_sandbox(config, labels) as sandbox:
        err.print(
            f"sandbox {escape(sandbox.id)}: {escape(str(folder))} at {config.work_dir}, uid {config.user_id}; "
            "exit the shell to remove it"
        )
        err.print(escape(console_hint()))
        argv = shell_argv(sandbox)
        # The terminal sends Ctrl-C to the whole foreground group; it is meant for the shell in the
        # sandbox, and must not interrupt this process and remove the sandbox under the user.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            code = subprocess.call(argv)
        finally:
            signal.signal(signal.SIGINT, previous)
    return code


def _non_interactive(config: SandboxConfig, labels: dict[str, str], folder: Path, data_dir: Path) -> int:
    demo = Demo()
    out.print(
        f"agentbox demo: {escape(str(folder))} at {config.work_dir} as uid {config.user_id}, "
        f"{escape(str(data_dir))} at /data (read-only)",
    )
    sandbox: Sandbox | None = None
    with demo.step("sandbox started, first command answered") as note:
        sandbox = start_sandbox(config, labels)
        hello = sandbox.run("echo hello from $(hostname)")
        _check(hello.exit_code == 0, f"echo failed: {hello.output!r}")
        note["detail"] = f"{sandbox.id}: {hello.output.strip()}"
    if sandbox is None:
        # A failed start removes what it had created: there is nothing to clean up after it.
        return _report(demo)
    container = container_id_of(sandbox)
    try:
        if not demo.failures:
            demo.failures += demonstrate(sandbox, folder, data_dir, config.user_id)
    finally:
        with demo.step("removal: the container is gone") as note:
            sandbox.remove()
            _check(not _container_exists(container), f"container {container} still exists")
            note["detail"] = f"container {container[:12]} removed"
    return _report(demo)


def console_hint() -> str:
    """Where the web console is and how to sign in (printed by ``make run``, with a terminal or without)."""
    from agentbox.service.app import ADMIN_TOKEN_FILE
    from agentbox.service.settings import DEFAULT_HOST, DEFAULT_PORT, default_data_dir

    return (
        f"web console: run `agentbox serve`, open http://{DEFAULT_HOST}:{DEFAULT_PORT}/ and sign in with the "
        f"admin token in {default_data_dir() / ADMIN_TOKEN_FILE} (or one from `agentbox token create NAME`)"
    )


def _report(demo: Demo) -> int:
    """Print the summary line; the exit code (1 if any step failed)."""
    if demo.failures:
        err.print(f"[bold red]error:[/] {len(demo.failures)} step(s) failed: {escape(', '.join(demo.failures))}")
        return EXIT_RUNTIME
    out.print("[green]all seed features work.[/]")
    out.print(escape(console_hint()))
    return 0


@command("demo", rich_help_panel=SETUP_PANEL)
def demo_cmd(
    shell: Annotated[
        bool | None,
        typer.Option("--shell/--no-shell", help="Open a shell (default: when stdin and stdout are a terminal).",
                     show_default=False),
    ] = None,
    image: ImageOpt = None,
    runtime: RuntimeOpt = None,
    label: LabelOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Try agentbox on the current folder: a shell on a terminal, else a step-by-step demonstration."""
    folder = Path.cwd()
    interactive = sys.stdin.isatty() and sys.stdout.isatty() if shell is None else shell
    if interactive and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise usage_error("--shell needs a terminal (stdin and stdout must be a TTY)")
    uid = invoking_uid()
    labels = parse_labels(label)
    overrides: dict[str, Any] = {
        "runtime_container_image": image,
        "runtime": runtime,
        "user_id": uid,
        "keep_runtime_alive": False,
        # The demo is about /workspace; a work_dir configured elsewhere would hide the mount from view.
        "work_dir": "/workspace",
    }
    if interactive:
        overrides["volumes"] = [f"{folder}:/workspace:rw"]
        resolved = resolve(config, overrides)
        raise typer.Exit(_interactive(resolved.config, labels, folder))
    with _data_dir() as data_dir:
        overrides["volumes"] = [f"{folder}:/workspace:rw", f"{data_dir}:/data:ro"]
        resolved = resolve(config, overrides)
        code = _non_interactive(resolved.config, labels, folder, data_dir)
    raise typer.Exit(code)

