"""Options shared by the `workbench plan` commands (kept apart so cli.py and cli_trees.py both
use them without importing each other)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _use_hardware_file(path: Path | None) -> Path | None:
    # Registered here, checked when the command first reads the catalog (inside user_errors,
    # so a bad file is one `error:` line per problem and exit code 2).
    if path is not None:
        from workbench.plan.hardware import add_hardware_file

        add_hardware_file(path, check=False)
    return path


HardwareFile = Annotated[Path | None, typer.Option(
    "--hardware-file", callback=_use_hardware_file, metavar="PATH",
    help="YAML file of your own hardware entries (format: workbench.plan.hardware); "
         "$WORKBENCH_HARDWARE_FILE works too.")]
Gpu = Annotated[str, typer.Option(
    help="Hardware entry, e.g. h100-sxm, a100-80gb, l4, or one from --hardware-file.")]
