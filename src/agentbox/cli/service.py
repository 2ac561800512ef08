"""``agentbox serve`` (the control plane) and ``agentbox token create|ls|revoke``.

The token commands work on the service's data directory directly (the same SQLite file, safe while the
service runs): whoever can read that directory is the service's operator anyway. Remote admins use the
API (``POST /v1/tokens``) with the admin token instead.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from agentbox.errors import AgentboxError, ConfigError

from ._app import JsonOpt, app, command, err, exit_code_for, out, print_json, print_table

SERVICE_PANEL = "Service"

F = TypeVar("F", bound=Callable[..., Any])

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Service state directory (default: $XDG_STATE_HOME/agentbox/service, /var/lib/agentbox/service as root).",
        show_default=False,
        metavar="DIR",
    ),
]

token_app = typer.Typer(name="token", help="Make, list and revoke the service's API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token", rich_help_panel=SERVICE_PANEL)


def _token_command(name: str) -> Callable[[F], F]:
    """Register a ``token`` subcommand, printing agentbox errors as ``error:`` lines (like :func:`command`)."""

    def register(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                return func(*args, **kw)
            except AgentboxError as exc:
                err.print(f"[bold red]error:[/] {escape(str(exc))}")
                raise typer.Exit(exit_code_for(exc)) from None

        token_app.command(name)(wrapper)
        return func

    return register


@command("serve", rich_help_panel=SERVICE_PANEL)
def serve_cmd(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port, printed).")] = 8473,
    data_dir: DataDirOpt = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Service config.toml: [sandbox] defaults and [policy].", metavar="FILE",
                     show_default=False),
    ] = None,
    allow_volume_root: Annotated[
        list[str] | None,
        typer.Option("--allow-volume-root", help="Host directory clients may bind-mount from (repeatable).",
                     metavar="DIR", show_default=False),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "warning",
) -> None:
    """Run the control plane: REST API, tokens, policy and a proxy to every sandbox's runtime server."""
    import dataclasses

    import uvicorn

    from agentbox.service import create_app, load_settings

    settings = load_settings(
        data_dir=data_dir, host=host, port=port, config_file=config, allow_volume_roots=allow_volume_root or []
    )
    # Bind first: with --port 0 the ready line can then say which port, and connections made while the
    # service reconciles wait in the backlog instead of being refused.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it Nagle plus delayed ACKs add ~40 ms to every answer.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    settings = dataclasses.replace(settings, port=sock.getsockname()[1])
    server = uvicorn.Server(
        # A bounded graceful shutdown: open event streams would otherwise hold it forever.
        uvicorn.Config(create_app(settings), log_level=log_level, lifespan="on", ws=_ws_implementation(),
                       timeout_graceful_shutdown=5)
    )
    server.run(sockets=[sock])


def _ws_implementation() -> str:
    """uvicorn's sans-I/O websockets protocol (uvicorn >= 0.35; the legacy one is deprecated by websockets)."""
    import importlib.util

    return "websockets-sansio" if importlib.util.find_spec("uvicorn.protocols.websockets.websockets_sansio_impl") \
        else "websockets"


def _store(data_dir: Path | None) -> Any:
    from agentbox.service.settings import default_data_dir
    from agentbox.service.store import Store

    return Store(data_dir or default_data_dir()).open()


def _size(value: str | None) -> int | None:
    if value is None:
        return None
    from pydantic import ValidationError

    from agentbox.config import SandboxConfig

    try:
        return SandboxConfig.model_validate({"memory": value}).memory
    except ValidationError:
        raise ConfigError(f"--max-memory {value!r}: expected a size such as 512m or 4g") from None


@_token_command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Unique token name.")],
    admin: Annotated[bool, typer.Option("--admin", help="Sees and manages every sandbox and the tokens.")] = False,
    max_sandboxes: Annotated[int | None, typer.Option("--max-sandboxes", min=0, metavar="N",
                                                      help="Live sandboxes allowed.")] = None,
    max_cpus: Annotated[float | None, typer.Option("--max-cpus", min=0.001, metavar="C",
                                                   help="Cores all its sandboxes may use together.")] = None,
    max_memory: Annotated[str | None, typer.Option("--max-memory", metavar="M",
                                                   help="Memory all its sandboxes may use together (4g...).")] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Make a token and print its secret (the only time it is shown)."""
    from agentbox.service.app import create_token
    from agentbox.service.models import TOKEN_NAME

    if not TOKEN_NAME.match(name):
        raise ConfigError(f"token name {name!r}: use 1-63 letters, digits, '_', '.', '-'")
    store = _store(data_dir)
    try:
        secret, _row = create_token(
            store, name, admin=admin, max_sandboxes=max_sandboxes, max_cpus=max_cpus, max_memory=_size(max_memory)
        )
    finally:
        store.close()
    out.print(secret)


@_token_command("ls")
def token_ls(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """List the live tokens (names and quotas; secrets are never stored)."""
    store = _store(data_dir)
    try:
        rows = store.tokens()
    finally:
        store.close()
    if as_json:
        print_json([{k: v for k, v in vars(r).items() if k != "digest"} for r in rows])
        return
    table = Table("NAME", "ADMIN", "MAX SANDBOXES", "MAX CPUS", "MAX MEMORY", "CREATED", box=None)
    for r in rows:
        table.add_row(r.name, "yes" if r.admin else "", *(str(v) if v is not None else "-" for v in
                      (r.max_sandboxes, r.max_cpus, r.max_memory)), r.created)
    print_table(table)


@_token_command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="Token to revoke.")], data_dir: DataDirOpt = None) -> None:
    """Revoke a token at once (its sandboxes stay, visible to admins)."""
    store = _store(data_dir)
    try:
        if not store.revoke_token(name):
            raise ConfigError(f"no live token {name!r} (see `agentbox token ls`)")
        store.audit("cli", "token.revoke", name, "")
    finally:
        store.close()
    out.print(f"revoked {escape(name)}")
