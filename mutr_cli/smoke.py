"""`mutr smoke`: build a preset with random weights and run one clip through it (install check)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from mutr_cli._common import Debug, handle_errors, stdout
from mutr_cli.main import app


@app.command("smoke")
@handle_errors
def smoke(
    preset: Annotated[str, typer.Option("--preset", help="Model preset (random weights).")] = "tiny",
    frames: Annotated[int, typer.Option("--frames", min=1, help="Frames in the clip.")] = 5,
    height: Annotated[int, typer.Option("--height", min=32)] = 128,
    width: Annotated[int, typer.Option("--width", min=32)] = 160,
    debug: Debug = False,
) -> None:
    """Check that the model builds and runs here; prints output shapes and timing."""
    import torch

    from mutr import MUTR, MUTRConfig

    torch.manual_seed(0)
    model = MUTR(MUTRConfig.preset(preset)).eval()
    video = torch.randn(1, frames, 3, height, width)
    with torch.no_grad():
        if model.text_encoder is not None:
            reference = model.encode_reference(torch.tensor([[0, 5, 6, 7, 2]]))
        else:
            reference = model.encode_reference(audio=torch.randn(1, frames, 1, 96, 64))
        start = time.perf_counter()
        out = model(video, reference=reference)
        seconds = time.perf_counter() - start
    stdout.print(f"preset {preset}: {model.num_parameters():,} parameters (random weights)")
    for name in ("pred_logits", "pred_boxes", "pred_masks"):
        stdout.print(f"  {name:12s} {tuple(getattr(out, name).shape)}")
    stdout.print(f"  {seconds / frames:.3f} s/frame on {torch.get_num_threads()} threads")
