"""The ``agentbox`` command line: a thin typer shell over the Python API.

One module per group of commands, all registered on the one :data:`app` from :mod:`._app`:
:mod:`.sandboxes` (run, start, exec, shell, ls, logs, pause, resume, stop, rm, reap), :mod:`.transfer`
(cp), :mod:`.images` (build, images), :mod:`.environment` (config, doctor) and :mod:`.demo` (demo).
"""

from __future__ import annotations

import sys
from importlib import import_module

from ._app import app

# Each module registers its commands on `app` when imported; this order is the order of `--help`.
for _module in ("sandboxes", "transfer", "images", "environment", "demo", "service"):
    import_module(f"{__name__}.{_module}")

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point (``agentbox``)."""
    try:
        app()
    except KeyboardInterrupt:
        # The shell convention for "stopped by SIGINT", without a traceback.
        sys.exit(130)
