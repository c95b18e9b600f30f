"""`mutr segment` with several videos, a --manifest, a --shard or under torchrun.

The work is `mutr.batch` (inputs, output folders, resume, summary) and `mutr.distributed`
(ranks, shares); this module draws the progress bars on rank 0 and prints the run's table.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mutr_cli._common import stderr, stdout

DEFAULT_OUT = "mutr_out"


def segment_many(sources: list[str], *, manifest: Path | None, text: list[str] | None, audio: Path | None,
                 audio_from_video: bool, checkpoint: str | None, out: Path | None, formats: str, device: str,
                 precision: str, threads: int | None, start: float | None, end: float | None, stride: int,
                 max_size: int | None, size: int, window: int, overwrite: bool, shard: str | None, json_: bool,
                 quiet: bool, debug: bool) -> None:
    from mutr import batch, distributed
    from mutr.errors import InputError
    from mutr.predictor import Predictor, load_checkpoint
    from mutr_cli.segment import _warnings_as_lines

    if any(not t.strip() for t in text or []):
        raise InputError('a text prompt is empty; pass a phrase such as --text "the red car"')
    part = distributed.parse_shard(shard)
    out_root = out if out is not None else Path.cwd() / DEFAULT_OUT
    if out_root.exists() and not out_root.is_dir():
        raise InputError(f"--out {out_root} is a file; with several videos it must be a folder: choose another --out")
    sound = "from-video" if audio_from_video else (str(audio) if audio is not None else None)
    jobs = batch.plan_jobs(sources, manifest, out_root, text or [], sound)  # every input error before any work
    options = batch.SegmentOptions(tuple(formats.split(",")), start, end, stride, max_size, size, window, overwrite)
    world = distributed.init(device, part)
    try:
        with _warnings_as_lines():
            if not world.is_main:
                warnings.simplefilter("ignore")  # rank 0 speaks for everyone
            model, is_demo = load_checkpoint(checkpoint)
            if is_demo:
                warnings.warn("no --checkpoint given: using the bundled TINY DEMO model, trained on synthetic "
                              "shapes; its masks only show that the tool works. Pass --checkpoint NAME_OR_PATH for "
                              "real weights (`mutr download --list`)", stacklevel=1)
            predictor = Predictor(model, device=str(world.device), precision=precision, threads=threads)
            mine = [jobs[i] for i in batch.share_of(jobs, world, options)]
            statuses = _run_share(predictor, mine, options, world, quiet or not world.is_main, debug)
        everything = batch.in_order(jobs, [s for share in world.all_gather(statuses) for s in share])
        summary = None
        if world.is_main:
            info = {"checkpoint": "demo" if is_demo else checkpoint, "device": str(world.device),
                    "precision": precision, "formats": list(options.formats), "out": str(out_root)}
            summary = batch.write_summary(out_root, world, jobs, everything, info)
        world.barrier()  # the summary exists before any process exits
    finally:
        distributed.close(world)
    failed = [s for s in everything if s.status == "failed"]
    if world.is_main:
        _report(summary, everything, json_, quiet)
        if failed:
            stderr.print(f"[bold red]error:[/] {len(failed)} of {len(everything)} videos failed (first: "
                         f"{Path(failed[0].video).name}: {failed[0].error}); see {summary}", highlight=False,
                         soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def _run_share(predictor, jobs, options, world, quiet: bool, debug: bool):
    from mutr.batch import segment_share

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True, disable=quiet or not stderr.is_terminal) as bar:
        label = f"rank 0 of {world.size}: videos" if world.distributed else "videos"
        videos = bar.add_task(label, total=len(jobs))
        frames = bar.add_task("", total=None, visible=False)

        def on_event(event) -> None:
            if event.kind == "video":
                bar.reset(frames, total=event.total, description=f"  {event.job.video.name}", visible=True)
            elif event.kind == "frame":
                bar.advance(frames)
            else:
                bar.advance(videos)
                bar.update(frames, visible=False)

        return segment_share(predictor, jobs, options, rank=world.rank, progress=on_event, raise_errors=debug)


def _report(summary: Path, statuses, json_: bool, quiet: bool) -> None:
    if json_:
        stdout.print_json(summary.read_text(encoding="utf-8"))
        return
    if quiet:
        return
    table = Table(box=box.SIMPLE_HEAD)
    for name, justify in (("video", "left"), ("frames", "right"), ("prompts", "right"), ("seconds", "right"),
                          ("status", "left")):
        table.add_column(name, justify=justify)
    style = {"done": "green", "skipped": "dim", "failed": "red"}
    for s in statuses:
        shown = {"done": "done", "skipped": "done before (skipped)"}.get(s.status, f"failed: {s.error}")
        table.add_row(Path(s.video).name, "" if s.frames is None else str(s.frames),
                      str(len(s.prompts)) if s.prompts else "", f"{s.seconds:.1f}" if s.status == "done" else "",
                      f"[{style[s.status]}]{shown}[/]")
    stdout.print(table)
    counts = json.loads(summary.read_text(encoding="utf-8"))
    stdout.print(f"{counts['videos']} videos: {counts['done']} segmented, {counts['skipped']} done before, "
                 f"{counts['failed']} failed; summary: {summary}", highlight=False, soft_wrap=True)
