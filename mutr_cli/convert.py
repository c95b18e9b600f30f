"""`mutr convert OFFICIAL.pth OUT_DIR`: official MUTR checkpoint -> mutr checkpoint directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mutr_cli._common import Debug, handle_errors, stderr, stdout
from mutr_cli.main import app


@app.command("convert")
@handle_errors
def convert(
    source: Annotated[Path, typer.Argument(metavar="OFFICIAL.pth", help="A checkpoint released by the MUTR authors.")],
    out_dir: Annotated[Path, typer.Argument(metavar="OUT_DIR", help="Where config.json + model.safetensors go.")],
    preset: Annotated[Optional[str], typer.Option("--preset", help="r50 or r101; default: inferred from the keys.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing checkpoint in OUT_DIR.")] = False,
    debug: Debug = False,
) -> None:
    """Convert an official .pth (read without executing code) to safetensors + config."""
    from mutr.convert import convert_checkpoint

    with stderr.status(f"converting {source.name}"):
        out = convert_checkpoint(source, out_dir, preset=preset, overwrite=overwrite)
    stdout.print(str(out), highlight=False)
