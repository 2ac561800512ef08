"""The typer application every command registers on, and what all commands share.

Errors are handled here, once: a command raises an :class:`~agentbox.errors.AgentboxError` and
:func:`command` prints ``error: <message>`` on stderr and exits 2 for bad configuration or usage, 1
for anything that went wrong at run time. No agentbox error ever reaches the user as a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agentbox.errors import AgentboxError, ConfigError

__all__ = [
    "EXIT_RUNTIME",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "IMAGES_PANEL",
    "REMOTE",
    "SANDBOX_PANEL",
    "SETUP_PANEL",
    "ConfigOpt",
    "JsonOpt",
    "app",
    "command",
    "err",
    "out",
    "print_json",
    "print_table",
    "progress_reporter",
    "usage_error",
    "warn",
]

EXIT_RUNTIME = 1
EXIT_USAGE = 2
# What coreutils `timeout` returns, so scripts can tell a timeout from the command's own failure.
EXIT_TIMEOUT = 124

# `agentbox --help` groups commands in these panels.
SANDBOX_PANEL = "Sandboxes"
IMAGES_PANEL = "Runtime images"
SETUP_PANEL = "Setup"

app = typer.Typer(
    name="agentbox",
    help="Disposable, isolated Linux sandboxes for AI agents on a real Docker engine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# soft_wrap: an id, a path or an error message must stay one greppable line, not be folded at 80
# columns when piped; tables are still laid out to the width.
out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)



@dataclass
class Remote:
    """The agentbox service the sandbox commands go through (``--server``/``--token``); None: local."""

    server: str | None = None
    token: str | None = None


#: Set from the global options on every invocation, before the command runs.
REMOTE = Remote()


@app.callback()
def _global_options(
    server: Annotated[
        str | None,
        typer.Option(
            "--server", envvar="AGENTBOX_SERVER", metavar="URL", show_default=False,
            help="Make and use sandboxes through this agentbox service (`agentbox serve`) instead of the "
            "local Docker engine.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token", envvar="AGENTBOX_TOKEN", metavar="TOKEN", show_default=False,
            help="Bearer token for --server (`agentbox token create` prints one).",
        ),
    ] = None,
) -> None:
    """Disposable, isolated Linux sandboxes for AI agents on a real Docker engine."""
    REMOTE.server = server or None
    REMOTE.token = token


ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        help="config.toml to read the \\[sandbox] table from (default: $AGENTBOX_CONFIG or ./config.toml).",
        show_default=False,
        metavar="FILE",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

F = TypeVar("F", bound=Callable[..., Any])


def exit_code_for(exc: AgentboxError) -> int:
    """2 for configuration mistakes the user can fix by changing input, 1 for run-time failures."""
    return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_RUNTIME


def command(name: str, **kwargs: Any) -> Callable[[F], F]:
    """Register ``func`` as the CLI command ``name``, turning agentbox errors into ``error:`` lines."""

    def register(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                return func(*args, **kw)
            except AgentboxError as exc:
                err.print(f"[bold red]error:[/] {escape(str(exc))}")
                raise typer.Exit(exit_code_for(exc)) from None
            except OSError as exc:
                # Host-side file errors (cp to an unwritable folder...) are the user's to fix, not a crash.
                err.print(f"[bold red]error:[/] {escape(str(exc))}")
                raise typer.Exit(EXIT_RUNTIME) from None

        app.command(name, **kwargs)(wrapper)
        return func

    return register


def usage_error(message: str) -> typer.Exit:
    """Print ``error: message`` and return the exit (code 2) for the caller to raise."""
    err.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(EXIT_USAGE)


def warn(message: str) -> None:
    """Print a ``warning:`` line on stderr."""
    err.print(f"[yellow]warning:[/] {escape(message)}")


@contextlib.contextmanager
def progress_reporter(title: str, *, quiet_for: float = 0.0) -> Iterator[Callable[[str], None]]:
    """A progress callback for slow work (image builds): a spinner with the latest step on a terminal.

    On a terminal every step is also printed above the spinner with its time, so a build leaves a
    record. Elsewhere (CI, pipes) steps are printed as plain lines, but only once ``quiet_for`` seconds
    have passed: the usual fast path (image up to date) stays silent, a long build still shows life.
    """
    started = time.monotonic()

    def line_of(message: str) -> str:
        lines = message.strip().splitlines()
        return lines[-1] if lines else ""

    if not err.is_terminal:

        def plain(message: str) -> None:
            if time.monotonic() - started >= quiet_for and line_of(message):
                err.print(f"[dim]{escape(title)}:[/] {escape(line_of(message))}")

        yield plain
        return
    with err.status(escape(title)) as status:

        def fancy(message: str) -> None:
            line = line_of(message)
            if not line:
                return
            if time.monotonic() - started >= quiet_for:
                err.print(f"[dim]{time.monotonic() - started:6.1f}s[/] {escape(line)}")
            status.update(f"{escape(title)} [dim]{escape(line[:100])}[/]")

        yield fancy


def print_table(table: Table) -> None:
    """Print a listing; piped, at its natural width rather than cut to 80 columns, for grep and awk."""
    if out.is_terminal:
        out.print(table)
    else:
        Console(file=sys.stdout, width=1000, highlight=False).print(table)


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout, unstyled so scripts can parse it."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()
