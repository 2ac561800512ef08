"""``agentbox config`` and ``agentbox doctor``: what agentbox will use, and what this machine lacks."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from agentbox.config import config_json, config_rows
from agentbox.netpolicy.rules import describe

from ._app import SETUP_PANEL, ConfigOpt, JsonOpt, command, err, out, print_json
from ._options import resolve


@command("config", rich_help_panel=SETUP_PANEL)
def config_cmd(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Print the effective configuration, where each value comes from, and deprecation warnings."""
    resolved = resolve(config)
    if as_json:
        print_json(config_json(resolved))
        return
    table = Table(title="agentbox configuration", title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    table.add_column("source", style="dim")
    for key, value, source in config_rows(resolved):
        table.add_row(escape(key), escape(value), escape(source))
    out.print(table)
    data = resolved.config
    policy = describe(data.egress, data.host_ports, network=data.network, use_host_network=data.use_host_network)
    out.print(f"network policy: {escape(policy)}")
    if resolved.config_file:
        out.print(f"config file: {escape(resolved.config_file)}")
    if resolved.ignored_env:
        out.print(f"ignored (not agentbox settings): {escape(', '.join(resolved.ignored_env))}")


@command("doctor", rich_help_panel=SETUP_PANEL)
def doctor_cmd(
    fix: Annotated[bool, typer.Option("--fix", help="Install and start what is missing.")] = False,
    runsc: Annotated[bool, typer.Option("--runsc", help="Also install gVisor and register it with dockerd.")] = False,
    build: Annotated[bool, typer.Option("--build/--no-build", help="With --fix, build the runtime image.")] = True,
    browser: Annotated[
        bool, typer.Option("--browser", help="Also install Chromium and chromedriver (console browser tests).")
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check what this machine lacks to run sandboxes, and the command that fixes it."""
    from agentbox.doctor import diagnose

    resolved = resolve(config)
    checks = diagnose(
        resolved.config,
        fix=fix,
        runsc=runsc,
        build=build,
        browser=browser,
        progress=lambda msg: err.print(f"[dim]doctor:[/] {escape(msg)}"),
    )
    ok = all(c.ok for c in checks)
    if as_json:
        payload: list[dict[str, Any]] = [c.__dict__ for c in checks]
        print_json({"ok": ok, "checks": payload})
    else:
        for c in checks:
            mark = "[green]ok[/]" if c.ok else "[red]missing[/]"
            line = f"{mark}  {escape(c.name)}: {escape(c.detail)}"
            if not c.ok and c.fix:
                line += f"  [bold](fix: {escape(c.fix)})[/]"
            out.print(line)
    if not ok:
        raise typer.Exit(1)
