"""``agentbox build`` and ``agentbox images``: runtime images, with progress shown as they build."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ._app import IMAGES_PANEL, ConfigOpt, JsonOpt, command, out, print_json, print_table, progress_reporter
from ._options import resolve


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.2f} GB"


@command("build", rich_help_panel=IMAGES_PANEL)
def build_cmd(
    version: Annotated[
        str | None,
        typer.Argument(metavar="VERSION", help="With --openhands: the OpenHands release (default: "
                       "the one agentbox is tested with).", show_default=False),
    ] = None,
    base: Annotated[
        str | None,
        typer.Option("--base", metavar="IMAGE", help="Base image to build on (default: base_container_image).",
                     show_default=False),
    ] = None,
    tag: Annotated[
        str | None,
        typer.Option("--tag", metavar="TAG", help="Tag for the image (default: content-hashed).", show_default=False),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild, without the layer cache, even if up to date.")
    ] = False,
    openhands: Annotated[
        bool,
        typer.Option("--openhands", help="Make OpenHands' sandbox images present under the names OpenHands "
                     "runs (pulled, or built from PyPI when no registry answers)."),
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the runtime image on a base image (skipped when an identical one exists)."""
    from agentbox.engine import docker_client
    from agentbox.images import build_runtime_image, ensure_base_image

    if openhands:
        if base is not None or tag is not None:
            raise typer.BadParameter("--base and --tag do not apply to --openhands")
        _build_openhands(version, force=force, as_json=as_json)
        return
    if version is not None:
        raise typer.BadParameter(f"unexpected argument {version!r} (a VERSION is for --openhands)")
    resolved = resolve(config, {"base_container_image": base})
    # Builds can be silent for minutes (apt, pip): a short socket timeout would cut them off.
    client = docker_client(timeout=1800)
    try:
        with progress_reporter("agentbox build") as progress:
            # An explicit --base must be that image; the configured default may fall back to the
            # offline-bootstrapped Debian base, exactly as sandboxes and `doctor --fix` do.
            base_image = ensure_base_image(
                client, resolved.config.base_container_image, allow_bootstrap=base is None, progress=progress
            )
            result = build_runtime_image(base_image.ref, tag=tag, force=force, client=client, progress=progress)
            size = client.images.get(result.tag).attrs.get("Size", 0)
    finally:
        client.close()
    if as_json:
        print_json({**dataclasses.asdict(result), "size": size})
        return
    what = "up to date, nothing built" if result.reused else f"built in {result.seconds:.1f} s"
    out.print(f"{escape(result.tag)} on {escape(result.base)}: {what}, {_human_size(size)}")


def _build_openhands(version: str | None, *, force: bool, as_json: bool) -> None:
    from agentbox.engine import docker_client
    from agentbox.images.openhands import DEFAULT_VERSION, ensure_openhands_images

    client = docker_client(timeout=3600)  # pip installs OpenHands' hundreds of packages: minutes of silence
    try:
        with progress_reporter("agentbox build --openhands") as progress:
            result = ensure_openhands_images(client, version or DEFAULT_VERSION, force=force, progress=progress)
    finally:
        client.close()
    if as_json:
        print_json(dataclasses.asdict(result))
        return
    how = {"local": "already present", "pulled": "pulled", "built": f"built from PyPI in {result.seconds:.0f} s",
           "reused": f"built from PyPI earlier ({result.image})"}[result.how]
    out.print(f"OpenHands {escape(result.version)}: {escape(', '.join(result.names))}: {how}")


@command("images", rich_help_panel=IMAGES_PANEL)
def images_cmd(
    prune: Annotated[
        bool, typer.Option("--prune", help="Remove runtime images that are not current and that no container uses.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the runtime images agentbox built (or prune the stale ones)."""
    from agentbox.engine import docker_client
    from agentbox.images import list_images, prune_images

    client = docker_client()
    try:
        if prune:
            removed = prune_images(client, keep_current=True)
        else:
            images = list_images(client)
    finally:
        client.close()
    if prune:
        if as_json:
            print_json({"removed": removed})
            return
        for name in removed:
            out.print(f"removed {escape(name)}")
        if not removed:
            out.print("nothing to prune")
        return
    if as_json:
        print_json([{**dataclasses.asdict(image), "labels": dict(image.labels)} for image in images])
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("TAG", "BASE", "SIZE", "CREATED", "CURRENT"):
        table.add_column(column)
    for image in images:
        table.add_row(
            escape(", ".join(image.tags) or image.id[:19]),
            escape(image.base),
            _human_size(image.size),
            escape(image.created),
            "yes" if image.current else "",
        )
    print_table(table)
