"""`mutr segment SOURCE...`: segment what a text or a sound refers to; write an overlay, PNG masks, RLE.

The work is `mutr.Predictor.segment` (streamed windows) and `mutr.outputs.write_outputs` (the
output folder); several videos (and torchrun ranks, --shard) are `mutr.batch` and
`mutr.distributed`. This module parses options, reports progress on stderr and prints summaries.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from mutr_cli._common import Debug, Device, DeviceOpt, Precision, PrecisionOpt, handle_errors, stderr, stdout
from mutr_cli.main import app


def _check_formats(value: str) -> str:
    from mutr.errors import InputError
    from mutr.outputs import parse_formats

    try:
        return ",".join(parse_formats(value))
    except InputError as e:
        raise typer.BadParameter(str(e)) from None


Sources = Annotated[Optional[list[str]], typer.Argument(
    metavar="SOURCE...", show_default=False,
    help="Video files, folders of frames, images, folders of videos or quoted globs ('clips/*.mp4'); "
    "one video keeps the single-output layout, several get a folder each under --out.")]
Manifest = Annotated[Optional[Path], typer.Option(
    "--manifest", metavar="FILE", show_default=False,
    help='JSON Lines, one video per line: {"video": PATH, "text": [...], "audio": "from-video" or PATH, '
    '"out": NAME}; missing keys take the options given here.')]
ShardOpt = Annotated[Optional[str], typer.Option(
    "--shard", metavar="I/N", show_default=False,
    help="Take share I of N (0-based) of the videos, balanced by frame count: for job arrays "
    "(e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT). Under torchrun each rank takes a share.")]
Text = Annotated[Optional[list[str]], typer.Option(
    "--text", "-t", metavar="TEXT", show_default=False,
    help="What to segment, in words; repeat for several objects (one backbone pass serves all).")]
Audio = Annotated[Optional[Path], typer.Option(
    "--audio", metavar="FILE", show_default=False, help="Segment what makes this sound (a media file; "
    "its start lines up with the first frame).")]
AudioFromVideo = Annotated[bool, typer.Option("--audio-from-video", help="Segment what makes the video's own sound.")]
Checkpoint = Annotated[Optional[str], typer.Option(
    "--checkpoint", "-c", metavar="NAME_OR_PATH", show_default=False,
    help="A checkpoint folder or a downloaded registry name (see `mutr download --list`); "
    "default: the bundled tiny demo model.")]
Out = Annotated[Optional[Path], typer.Option(
    "--out", "-o", metavar="DIR", show_default="./<SOURCE name>_mutr; several videos: ./mutr_out",
    help="Output folder for overlay.mp4, masks/ and masks.rle.json; with several videos, the folder "
    "holding one such folder per video and summary.json.")]
Formats = Annotated[str, typer.Option("--format", "-f", metavar="LIST", callback=_check_formats,
                                      help="Outputs to write, comma-separated: overlay, png, rle.")]
Threads = Annotated[Optional[int], typer.Option("--threads", min=1, show_default="PyTorch's choice",
                                                help="CPU threads for PyTorch.")]
Start = Annotated[Optional[float], typer.Option("--start", min=0.0, metavar="SECONDS", show_default=False,
                                                help="Begin at this time.")]
End = Annotated[Optional[float], typer.Option("--end", min=0.0, metavar="SECONDS", show_default=False,
                                              help="Stop before this time.")]
Stride = Annotated[int, typer.Option("--stride", min=1, metavar="K",
                                     help="Process every K-th frame (the overlay still shows every frame).")]
MaxSize = Annotated[Optional[int], typer.Option(
    "--max-size", min=16, metavar="PIXELS", show_default=False,
    help="Downscale frames whose long side exceeds this; outputs get the reduced size.")]
Size = Annotated[int, typer.Option("--size", min=32, metavar="PIXELS",
                                   help="Short side of the frames the model sees (official: 432).")]
Window = Annotated[int, typer.Option("--window", min=1, metavar="FRAMES",
                                     help="Frames per model pass; more gives more context and needs more memory.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace outputs that already exist.")]
Json = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q",
                                     help="No progress bar and no summary text (warnings and errors still show).")]


def _under_torchrun() -> bool:
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def _warnings_as_lines():
    """Show each distinct warning once, as one line on stderr (no file/line noise)."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message)
        if text not in seen:
            seen.add(text)
            stderr.print(f"[yellow]warning:[/] {text}", highlight=False, soft_wrap=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.showwarning = show
        yield


@app.command("segment")
@handle_errors
def segment(
    sources: Sources = None,
    text: Text = None,
    audio: Audio = None,
    audio_from_video: AudioFromVideo = False,
    checkpoint: Checkpoint = None,
    out: Out = None,
    formats: Formats = "overlay,png,rle",
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.fp32,
    threads: Threads = None,
    start: Start = None,
    end: End = None,
    stride: Stride = 1,
    max_size: MaxSize = None,
    size: Size = 432,  # mutr.io.transforms.INFERENCE_SIZE (not imported: keeps `mutr --help` fast)
    window: Window = 16,  # mutr.predictor.DEFAULT_WINDOW
    overwrite: Overwrite = False,
    manifest: Manifest = None,
    shard: ShardOpt = None,
    json_: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Segment the object a text (--text) or a sound (--audio, --audio-from-video) refers to,
    in one video or many (also under torchrun: `torchrun --nproc_per_node N "$(which mutr)" segment ...`)."""
    if audio is not None and audio_from_video:
        raise typer.BadParameter("give --audio FILE or --audio-from-video, not both", param_hint="--audio")
    if not sources and manifest is None:
        raise typer.BadParameter("give a video (SOURCE...) or --manifest FILE", param_hint="SOURCE")
    if not text and audio is None and not audio_from_video and manifest is None:
        raise typer.BadParameter("say what to segment: --text \"the red car\", --audio FILE or --audio-from-video",
                                 param_hint="--text")
    from mutr.batch import is_batch

    if manifest is not None or shard is not None or _under_torchrun() or is_batch(sources or []):
        from mutr_cli._segment_many import segment_many

        return segment_many(sources or [], manifest=manifest, text=text, audio=audio,
                            audio_from_video=audio_from_video, checkpoint=checkpoint, out=out, formats=formats,
                            device=device.value, precision=precision.value, threads=threads, start=start, end=end,
                            stride=stride, max_size=max_size, size=size, window=window, overwrite=overwrite,
                            shard=shard, json_=json_, quiet=quiet, debug=debug)
    source = Path(sources[0])
    from mutr.errors import InputError
    from mutr.io.video import open_source
    from mutr.outputs import check_outputs, default_out_dir, write_outputs
    from mutr.predictor import Predictor, load_checkpoint, resolve_device

    if any(not t.strip() for t in text or []):
        raise InputError('a text prompt is empty; pass a phrase such as --text "the red car"')
    with _warnings_as_lines():
        out_dir = out if out is not None else default_out_dir(source)
        check_outputs(out_dir, formats.split(","), overwrite)  # before the slow steps
        resolve_device(device.value)
        src = open_source(source, start, end, stride, max_size=max_size)
        model, is_demo = load_checkpoint(checkpoint)
        if is_demo:
            warnings.warn("no --checkpoint given: using the bundled TINY DEMO model, trained on synthetic shapes; "
                          "its masks only show that the tool works. Pass --checkpoint NAME_OR_PATH for real "
                          "weights (`mutr download --list`)", stacklevel=1)
        predictor = Predictor(model, device=device.value, precision=precision.value, threads=threads)
        sound = "from-video" if audio_from_video else audio
        run = predictor.segment(src, texts=text or [], audio=sound, window=window, size=size)

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[fps]:.1f} fps"), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=stderr, transient=True,
                      disable=quiet or not stderr.is_terminal) as progress:
            task = progress.add_task("segmenting", total=run.total, fps=0.0)

            def advance(_result) -> None:
                elapsed = progress.tasks[0].elapsed or 0.0
                done = progress.tasks[0].completed + 1
                progress.update(task, advance=1, fps=done / elapsed if elapsed > 0 else 0.0)

            summary = write_outputs(run, out_dir, formats.split(","), overwrite=overwrite, on_result=advance)

    report = summary.to_dict() | {"checkpoint": "demo" if is_demo else checkpoint, "device": str(predictor.device),
                                  "precision": precision.value}
    if json_:
        stdout.print_json(json.dumps(report))
    elif not quiet:
        stdout.print(f"segmented {summary.frames} frames ({len(summary.prompts)} prompt"
                     f"{'s' if len(summary.prompts) != 1 else ''}) in {summary.seconds:.1f} s "
                     f"({summary.fps:.2f} frames/s) on {predictor.device}", highlight=False)
        for fmt, path in summary.outputs.items():
            stdout.print(f"  {fmt}: {path}", highlight=False, soft_wrap=True)
