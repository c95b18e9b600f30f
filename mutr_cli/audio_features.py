"""`mutr audio-features FILE --out x.npy`: the VGGish log-mel examples mutr would feed the model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mutr_cli._common import Debug, handle_errors, stderr, stdout
from mutr_cli.main import app


@app.command("audio-features")
@handle_errors
def audio_features(
    source: Annotated[Path, typer.Argument(metavar="FILE", help="Any audio or video file PyAV reads.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the [N, 96, 64] float32 array (.npy).")],
    start: Annotated[Optional[float], typer.Option("--start", help="Span start in seconds.")] = None,
    end: Annotated[Optional[float], typer.Option("--end", help="Span end in seconds.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    debug: Debug = False,
) -> None:
    """Debugging aid: decode the audio, resample to 16 kHz and write VGGish log-mel examples."""
    import os
    import tempfile

    import numpy as np

    from mutr.errors import OutputExistsError
    from mutr.model.vggish import examples_for_span

    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    examples, start_time = examples_for_span(source, start, end)
    fd, tmp = tempfile.mkstemp(suffix=".npy", dir=out.parent if str(out.parent) else ".")
    os.close(fd)
    try:
        np.save(tmp, examples)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    stderr.print(f"{examples.shape[0]} examples of 0.96 s from t={start_time:.3f} s", highlight=False)
    stdout.print(str(out), highlight=False)
