"""Commands that make, use and end sandboxes: run, start, exec, shell, ls, logs, pause, resume, stop, rm, reap."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from agentbox.errors import AgentboxError, ConfigError, SandboxError

from ._app import (
    EXIT_RUNTIME,
    EXIT_TIMEOUT,
    REMOTE,
    SANDBOX_PANEL,
    ConfigOpt,
    JsonOpt,
    command,
    err,
    out,
    print_json,
    print_table,
    progress_reporter,
    usage_error,
)
from ._options import (
    AdditionalNetworkOpt,
    BaseImageOpt,
    BindingAddressOpt,
    CpusOpt,
    EnvOpt,
    HardenedOpt,
    ImageOpt,
    KeepAliveOpt,
    MemoryOpt,
    NetworkOpt,
    PidsLimitOpt,
    RuntimeOpt,
    TimeoutOpt,
    UserIdOpt,
    VolumeOpt,
    resolve,
    sandbox_overrides,
)

if TYPE_CHECKING:
    from agentbox.backends.base import SandboxInfo
    from agentbox.config import ResolvedConfig, SandboxConfig
    from agentbox.protocol import CommandResult
    from agentbox.sandbox import Sandbox

# Options may come anywhere before `--`; everything after it is the command, untouched.
CommandArg = Annotated[
    list[str],
    typer.Argument(
        metavar="CMD",
        help="The command, after '--'. One word is bash source as is ('make && make test'); "
        "several are quoted as argv (sh -c 'exit 3').",
        show_default=False,
    ),
]
LabelOpt = Annotated[
    list[str] | None,
    typer.Option("--label", metavar="KEY=VALUE",
                 help="Extra label on the container (and its networks and volumes); repeatable.", show_default=False),
]
IdArg = Annotated[
    str,
    typer.Argument(metavar="ID", help="Sandbox id (as `agentbox ls` shows it), or its container id or name.",
                   show_default=False),
]
IdsArg = Annotated[list[str], typer.Argument(metavar="ID...", help="Sandbox ids.", show_default=False)]


def command_text(words: list[str]) -> str:
    """The bash source for a command given as CLI words.

    One word is taken as shell source, so pipes and ``&&`` work (``agentbox run -- 'ls | wc -l'``);
    several are quoted one by one so that ``agentbox run -- sh -c 'exit 3'`` runs exactly that argv.
    """
    if len(words) == 1:
        return words[0]
    return shlex.join(words)


def exit_code_of(result: CommandResult) -> int:
    """The exit status the CLI returns for a command result: its own code, or 124 when it timed out."""
    if result.timed_out:
        return EXIT_TIMEOUT
    # None: control came back while the command was still running, which is a failure to report.
    return EXIT_RUNTIME if result.exit_code is None else result.exit_code & 0xFF


def result_json(result: CommandResult, **extra: Any) -> dict[str, Any]:
    """The JSON shape of ``run`` and ``exec`` results."""
    return {
        "exit_code": result.exit_code,
        "output": result.output,
        "cwd": result.cwd,
        "timed_out": result.timed_out,
        **extra,
    }


def run_in(sandbox: Sandbox, words: list[str], *, timeout: float | None, as_json: bool, **extra: Any) -> int:
    """Run ``words`` in ``sandbox``, print the output (or JSON) and return the CLI exit code.

    Without ``--json`` the output is streamed as it is produced, so a long build shows progress.
    """
    from agentbox.protocol import OutputChunk

    text = command_text(words)
    if as_json:
        result = sandbox.run(text, timeout=timeout)
        print_json(result_json(result, **extra))
        return exit_code_of(result)
    last = ""
    final = None
    try:
        for event in sandbox.stream(text, timeout=timeout):
            if isinstance(event, OutputChunk):
                sys.stdout.write(event.text)
                sys.stdout.flush()
                last = event.text or last
            else:
                final = event.result
    except KeyboardInterrupt:
        # Ctrl-C here means "stop the command", not "leave it running in the sandbox's shell".
        with contextlib.suppress(AgentboxError):
            sandbox.client.interrupt()
        raise
    if last and not last.endswith("\n"):
        # The shell's output may end without a newline; the user's prompt should not follow it on one line.
        sys.stdout.write("\n")
        sys.stdout.flush()
    if final is None:
        raise AgentboxError(f"the runtime server ended the stream of {text!r} without a result")
    if final.timed_out:
        err.print(f"[yellow]timed out[/] after {timeout or 0:g} s: {escape(text)}")
    return exit_code_of(final)


def parse_labels(items: list[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` label options as a dict."""
    labels: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not key or not sep:
            raise ConfigError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


def start_sandbox(config: SandboxConfig, labels: dict[str, str] | None = None) -> Sandbox:
    """Create and start a sandbox from ``config``, showing progress if its image has to be built.

    On failure (or Ctrl-C) the Sandbox removes whatever it had created before the error reaches us.
    """
    from agentbox.sandbox import Sandbox

    # A cache hit takes milliseconds; only a real build or pull, which takes seconds, is worth showing.
    with progress_reporter("starting a sandbox", quiet_for=1.0) as progress:
        return Sandbox(
            config=config, labels=labels, progress=progress, server=REMOTE.server, token=REMOTE.token
        ).start()


def command_timeout(resolved: ResolvedConfig) -> float | None:
    """The hard timeout for ``run``: the configured one when set anywhere, else none.

    The built-in default (120 s) is for agents' actions through the SDK; a person typing
    ``agentbox run -- make`` expects it to run to completion, like ``docker exec``, unless told otherwise.
    """
    return None if resolved.sources["timeout"] == "default" else resolved.config.timeout


def release(sandbox: Sandbox) -> None:
    """Let go of a handle from :func:`connect` and leave the sandbox running.

    A command such as ``agentbox exec`` acts on a sandbox someone else owns: it must neither remove it
    (``close()`` would, for one not started with keep-alive) nor become its owner.
    """
    sandbox.detach()


def connect(sandbox_id: str) -> Sandbox:
    """A non-owning handle on an existing sandbox; SandboxNotFoundError (exit 1) when there is none."""
    from agentbox.sandbox import Sandbox

    return Sandbox.connect(sandbox_id, take_ownership=False, server=REMOTE.server, token=REMOTE.token)


def local_only(what: str) -> None:
    """Refuse ``what`` through a service: it needs this host's engine (a usage error, exit 2)."""
    if REMOTE.server is not None:
        raise ConfigError(f"{what} needs the local Docker engine; it is not available through --server")


@command("run", rich_help_panel=SANDBOX_PANEL)
def run_cmd(
    cmd: CommandArg,
    volume: VolumeOpt = None,
    user_id: UserIdOpt = None,
    network: NetworkOpt = None,
    additional_network: AdditionalNetworkOpt = None,
    image: ImageOpt = None,
    base_image: BaseImageOpt = None,
    cpus: CpusOpt = None,
    memory: MemoryOpt = None,
    pids_limit: PidsLimitOpt = None,
    runtime: RuntimeOpt = None,
    hardened: HardenedOpt = None,
    timeout: TimeoutOpt = None,
    env: EnvOpt = None,
    binding_address: BindingAddressOpt = None,
    keep_alive: KeepAliveOpt = None,
    label: LabelOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a command in a fresh sandbox, print its output, remove the sandbox; exits with the command's code.

    Example: agentbox run -v .:/workspace --json -- sh -c 'make test'
    """
    overrides = sandbox_overrides(
        volume=volume, user_id=user_id, network=network, additional_network=additional_network, image=image,
        base_image=base_image, cpus=cpus, memory=memory, pids_limit=pids_limit, runtime=runtime,
        hardened=hardened, timeout=timeout, env=env, binding_address=binding_address, keep_alive=keep_alive,
    )
    resolved = resolve(config, overrides)
    labels = parse_labels(label)
    with start_sandbox(resolved.config, labels) as sandbox:
        code = run_in(sandbox, cmd, timeout=command_timeout(resolved), as_json=as_json, sandbox_id=sandbox.id)
        if resolved.config.keep_runtime_alive:
            err.print(f"sandbox {sandbox.id} kept (remove it with: agentbox rm -f {sandbox.id})")
    raise typer.Exit(code)


@command("start", rich_help_panel=SANDBOX_PANEL)
def start_cmd(
    volume: VolumeOpt = None,
    user_id: UserIdOpt = None,
    network: NetworkOpt = None,
    additional_network: AdditionalNetworkOpt = None,
    image: ImageOpt = None,
    base_image: BaseImageOpt = None,
    cpus: CpusOpt = None,
    memory: MemoryOpt = None,
    pids_limit: PidsLimitOpt = None,
    runtime: RuntimeOpt = None,
    hardened: HardenedOpt = None,
    timeout: TimeoutOpt = None,
    env: EnvOpt = None,
    binding_address: BindingAddressOpt = None,
    label: LabelOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a sandbox that outlives this command and print its id (end it with `agentbox rm -f ID`)."""
    overrides = sandbox_overrides(
        volume=volume, user_id=user_id, network=network, additional_network=additional_network, image=image,
        base_image=base_image, cpus=cpus, memory=memory, pids_limit=pids_limit, runtime=runtime,
        hardened=hardened, timeout=timeout, env=env, binding_address=binding_address,
        # The whole point of `start`: the sandbox must survive this process closing its handle.
        keep_alive=True,
    )
    resolved = resolve(config, overrides)
    sandbox = start_sandbox(resolved.config, parse_labels(label))
    info = {"id": sandbox.id, "container_id": sandbox.container_id, "url": sandbox.url}
    # keep_runtime_alive: closing only lets go of the handle; the sandbox runs on after this process.
    sandbox.close()
    if as_json:
        print_json(info)
    else:
        sys.stdout.write(f"{sandbox.id}\n")


@command("exec", rich_help_panel=SANDBOX_PANEL)
def exec_cmd(
    sandbox_id: IdArg,
    cmd: CommandArg,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", metavar="SECONDS", help="Seconds before the command is interrupted (exit 124).",
                     show_default=False),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a command in a running sandbox's persistent shell; exits with the command's code.

    Example: agentbox exec ID --timeout 60 -- pytest -q
    """
    sandbox = connect(sandbox_id)
    try:
        code = run_in(sandbox, cmd, timeout=timeout, as_json=as_json, sandbox_id=sandbox.id)
    finally:
        release(sandbox)
    raise typer.Exit(code)


def docker_exec_argv(container: str, *, user: str, workdir: str, env: dict[str, str], tty: bool = True) -> list[str]:
    """The ``docker exec`` argv for an interactive login shell as the sandbox user in its work dir."""
    argv = ["docker", "exec", "-i"]
    if tty:
        argv.append("-t")
    argv += ["-u", user, "-w", workdir]
    for name, value in sorted(env.items()):
        argv += ["-e", f"{name}={value}"]
    # TERM from the user's terminal so that colours and line editing match it.
    argv += ["-e", f"TERM={os.environ.get('TERM', 'xterm')}", container, "bash", "-l"]
    return argv


def shell_argv(sandbox: Sandbox) -> list[str]:
    """``docker exec -it`` argv for ``sandbox``; raises if there is no docker CLI to run it."""
    if shutil.which("docker") is None:
        raise AgentboxError("`agentbox shell` needs the docker command-line client on PATH (apt-get install docker.io)")
    config = sandbox.config
    return docker_exec_argv(
        _container_id(sandbox), user=str(config.user_id), workdir=config.work_dir, env=dict(config.env)
    )


def _container_id(sandbox: Sandbox) -> str:
    if sandbox.container_id is None:
        raise SandboxError(f"sandbox {sandbox.id} has no container")
    return sandbox.container_id


@command("shell", rich_help_panel=SANDBOX_PANEL)
def shell_cmd(sandbox_id: IdArg) -> None:
    """Open an interactive terminal (bash) in a running sandbox, as its user, in its work dir."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise usage_error(
            "`agentbox shell` needs a terminal (stdin and stdout must be a TTY); "
            f"to run a command without one use: agentbox exec {sandbox_id} -- CMD"
        )
    # `docker exec -it` on this host's engine; through a service, `exec` reaches the sandbox.
    local_only("`agentbox shell`")
    sandbox = connect(sandbox_id)
    argv = shell_argv(sandbox)
    release(sandbox)
    sys.stdout.flush()
    sys.stderr.flush()
    # exec, not a child: the docker CLI then owns the terminal (raw mode, SIGWINCH, Ctrl-C) directly.
    os.execvp(argv[0], argv)


def info_json(info: SandboxInfo) -> dict[str, Any]:
    """One ``ls --json`` entry."""
    return {
        "id": info.id,
        "state": info.state.value,
        "image": info.image,
        "created": info.created.isoformat() if info.created else None,
        "url": info.url,
        "keep_alive": info.keep_alive,
        "owner_pid": info.owner_pid,
        "owner_host": info.owner_host,
        "container_id": info.container_id,
        "container_name": info.container_name,
        "labels": dict(info.labels),
    }


def _age(created: datetime | None) -> str:
    if created is None:
        return ""
    seconds = max(0, int((datetime.now(timezone.utc) - created).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


@command("ls", rich_help_panel=SANDBOX_PANEL)
def ls_cmd(
    mine: Annotated[
        bool, typer.Option("--mine", help="Only sandboxes this user started from this host (and can use).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the agentbox sandboxes on this engine."""
    from agentbox.sandbox import Sandbox

    oldest = datetime.min.replace(tzinfo=timezone.utc)
    infos = sorted(
        Sandbox.list(all_owners=not mine, server=REMOTE.server, token=REMOTE.token),
        key=lambda info: info.created or oldest,
    )
    if as_json:
        print_json([info_json(info) for info in infos])
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "STATE", "IMAGE", "CREATED", "URL", "KEEP-ALIVE", "OWNER"):
        table.add_column(column)
    for info in infos:
        owner = f"{info.owner_host}:{info.owner_pid}" if info.owner_pid else info.owner_host
        table.add_row(
            escape(info.id), info.state.value, escape(info.image), _age(info.created), escape(info.url or ""),
            "yes" if info.keep_alive else "", escape(owner),
        )
    print_table(table)


def _follow_logs(container_id: str, tail: int | None) -> None:
    """Copy the container's log to stdout as it grows, until the container ends or Ctrl-C."""
    from agentbox.engine import docker_client, translate_errors

    client = docker_client()
    try:
        with translate_errors("following the sandbox log"):
            for chunk in client.api.logs(
                container_id, stream=True, follow=True, tail="all" if tail is None else tail
            ):
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
    finally:
        client.close()


@command("logs", rich_help_panel=SANDBOX_PANEL)
def logs_cmd(
    sandbox_id: IdArg,
    tail: Annotated[
        int | None, typer.Option("--tail", "-n", metavar="N", help="Only the last N lines.", show_default=False)
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines until Ctrl-C.")] = False,
) -> None:
    """Print a sandbox's log (its runtime server's output)."""
    if follow:
        local_only("`agentbox logs --follow`")  # the service's logs route has no follow mode yet
    sandbox = connect(sandbox_id)
    try:
        if follow:
            # The SDK returns the log so far; following it needs the engine's stream.
            _follow_logs(_container_id(sandbox), tail)
        else:
            sys.stdout.write(sandbox.logs(tail=tail))
    finally:
        release(sandbox)


def _each(ids: Iterable[str], verb: str, action: Callable[[Sandbox], None]) -> None:
    """Apply ``action`` to each sandbox; report each failure, and exit 1 if any failed."""
    failed = 0
    for sandbox_id in ids:
        try:
            sandbox = connect(sandbox_id)
            try:
                action(sandbox)
            finally:
                release(sandbox)
        except AgentboxError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}")
            failed += 1
        else:
            out.print(f"{verb} {escape(sandbox_id)}")
    if failed:
        raise typer.Exit(EXIT_RUNTIME)


@command("pause", rich_help_panel=SANDBOX_PANEL)
def pause_cmd(sandbox_ids: IdsArg) -> None:
    """Freeze sandboxes (docker pause): processes and shell state survive until resume."""
    _each(sandbox_ids, "paused", lambda sandbox: sandbox.pause())


@command("resume", rich_help_panel=SANDBOX_PANEL)
def resume_cmd(sandbox_ids: IdsArg) -> None:
    """Thaw paused sandboxes."""
    _each(sandbox_ids, "resumed", lambda sandbox: sandbox.resume())


@command("stop", rich_help_panel=SANDBOX_PANEL)
def stop_cmd(sandbox_ids: IdsArg) -> None:
    """Stop sandboxes without removing them (files stay; processes end)."""
    _each(sandbox_ids, "stopped", lambda sandbox: sandbox.stop())


@command("rm", rich_help_panel=SANDBOX_PANEL)
def rm_cmd(
    sandbox_ids: IdsArg,
    force: Annotated[bool, typer.Option("--force", "-f", help="Remove running and paused sandboxes too.")] = False,
) -> None:
    """Remove sandboxes and what agentbox created for them (running ones only with -f)."""
    from agentbox.sandbox import SandboxState

    def remove(sandbox: Sandbox) -> None:
        if not force and sandbox.state in (SandboxState.RUNNING, SandboxState.PAUSED, SandboxState.STARTING):
            raise SandboxError(f"sandbox {sandbox.id} is {sandbox.state.value}: stop it first, or use rm -f")
        sandbox.remove()

    _each(sandbox_ids, "removed", remove)


@command("replace", rich_help_panel=SANDBOX_PANEL)
def replace_cmd(sandbox_id: IdArg, as_json: JsonOpt = False) -> None:
    """Through a service (--server): a new sandbox in place of a lost one (its node went down), from the
    same configuration; the lost one is removed. Prints the new sandbox's id."""
    if REMOTE.server is None:
        raise ConfigError(
            "`agentbox replace` is done by an agentbox service (--server); here, `agentbox rm` the lost "
            "sandbox and start a new one"
        )
    sandbox = connect(sandbox_id)
    try:
        sandbox.replace()
    finally:
        release(sandbox)
    if as_json:
        print_json({"replaced": sandbox_id, "id": sandbox.id})
        return
    out.print(escape(sandbox.id))


@command("reap", rich_help_panel=SANDBOX_PANEL)
def reap_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove this host's sandboxes whose owner process is gone (keep-alive ones are spared)."""
    from agentbox.sandbox import reap

    local_only("`agentbox reap` (a service removes its own sandboxes)")
    ids = reap(dry_run=dry_run)
    if as_json:
        print_json({"dry_run": dry_run, "ids": ids})
        return
    verb = "would remove" if dry_run else "removed"
    for sandbox_id in ids:
        out.print(f"{verb} {escape(sandbox_id)}")
    if not ids:
        out.print("nothing to reap")
