"""`mutr eval`: a benchmark in its official protocol -> metrics.json, per-video CSV and plot.

The work is `mutr.evaluate.evaluate`; this module parses options, draws progress on stderr and
prints the metrics table (or --json) on stdout.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from mutr_cli._common import (Debug, Device, DeviceOpt, Precision, PrecisionOpt, debug_enabled, handle_errors,
                              stderr, stdout)
from mutr_cli.main import app


class Dataset(str, Enum):
    ref_davis17 = "ref-davis17"
    ref_youtube_vos = "ref-youtube-vos"
    avsbench_s4 = "avsbench-s4"
    avsbench_ms3 = "avsbench-ms3"


class AvsFormat(str, Enum):
    npy = "npy"
    png = "png"


DatasetOpt = Annotated[Dataset, typer.Option("--dataset", "-d", show_default=False, help="The benchmark.")]
DataRoot = Annotated[Path, typer.Option(
    "--data-root", metavar="DIR", show_default=False,
    help="The dataset folder in its released layout (converted layout for Ref-DAVIS17).")]
Checkpoint = Annotated[Optional[str], typer.Option(
    "--checkpoint", "-c", metavar="NAME_OR_PATH", show_default=False,
    help="A checkpoint folder or a downloaded registry name (see `mutr download --list`).")]
Split = Annotated[Optional[str], typer.Option(
    "--split", metavar="NAME", show_default=False,
    help="Split to evaluate \\[default: valid; AVSBench: test].")]
Out = Annotated[Optional[Path], typer.Option(
    "--out", "-o", metavar="DIR", show_default=False,
    help="Output folder \\[default: ./eval_<dataset>_<split>]. Rerunning the same command resumes it.")]
Predictions = Annotated[Optional[Path], typer.Option(
    "--predictions", metavar="DIR", show_default=False,
    help="Score predictions already on disk (no model): the layout that `mutr eval` writes under "
    "<out>/predictions, or such an <out> folder.")]
MetricBatch = Annotated[Optional[int], typer.Option(
    "--metric-batch-size", min=1, metavar="N", show_default=False,
    help="AVSBench: videos per metric batch; the F-score depends on it \\[default: 4, as the official test.sh].")]
Size = Annotated[int, typer.Option("--size", min=32, metavar="PIXELS",
                                   help="Short side of the frames the model sees (official: 432).")]
AvsFormatOpt = Annotated[AvsFormat, typer.Option(
    "--avs-format", help="AVSBench predictions on disk: npy float32 logits (exact metrics) or png "
    "8-bit probabilities (small; F-score within 1/255 quantisation).")]
Threads = Annotated[Optional[int], typer.Option("--threads", min=1, metavar="N", show_default=False,
                                                help="CPU threads for PyTorch \\[default: PyTorch's choice].")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Start over, replacing earlier outputs in --out.")]
ShardOpt = Annotated[Optional[str], typer.Option(
    "--shard", metavar="I/N", show_default=False,
    help="Predict share I of N (0-based) of the videos, balanced by frames x references, for job arrays; "
    "then score them all with --predictions OUT. Under torchrun each rank takes a share and rank 0 scores.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no table.")]

_STAGES = {"predict": "predicting", "score": "scoring", "package": "zipping"}


@contextlib.contextmanager
def _warnings_as_lines():
    """Each distinct warning once, as one line on stderr."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if str(message) not in seen:
            seen.add(str(message))
            stderr.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.showwarning = show
        yield


@app.command("eval")
@handle_errors
def eval_(
    dataset: DatasetOpt,
    data_root: DataRoot,
    checkpoint: Checkpoint = None,
    split: Split = None,
    out: Out = None,
    predictions: Predictions = None,
    metric_batch_size: MetricBatch = None,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.fp32,
    size: Size = 432,
    avs_format: AvsFormatOpt = AvsFormat.npy,
    threads: Threads = None,
    overwrite: Overwrite = False,
    shard: ShardOpt = None,
    json_: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Evaluate a checkpoint on a benchmark in its official protocol (or score --predictions);
    also under torchrun: `torchrun --nproc_per_node N "$(which mutr)" eval ...`."""
    if (checkpoint is None) == (predictions is None):
        raise typer.BadParameter("give --checkpoint NAME_OR_PATH to run a model, or --predictions DIR to score "
                                 "results on disk (one of them)", param_hint="--checkpoint")
    import torch

    from mutr import distributed
    from mutr.evaluate import evaluate, open_benchmark
    from mutr.metrics.avsbench import DEFAULT_BATCH_SIZE

    part = distributed.parse_shard(shard)
    if predictions is not None and shard is not None:
        raise typer.BadParameter("--shard splits a model run; --predictions scores a whole folder (drop --shard)",
                                 param_hint="--shard")

    with _warnings_as_lines():
        if metric_batch_size is not None and not dataset.value.startswith("avsbench"):
            warnings.warn("--metric-batch-size only matters for AVSBench; ignored", stacklevel=1)
        bench = open_benchmark(dataset.value, data_root, split, avs_format=avs_format.value)  # data first: cheap
        out_dir = out if out is not None else Path.cwd() / f"eval_{dataset.value}_{bench.split}"
        if threads is not None:
            torch.set_num_threads(threads)
        if predictions is None:
            from mutr.predictor import resolve_device

            resolve_device(device.value)  # before the checkpoint loads
        world = distributed.init(device.value if predictions is None else "cpu", part)
        quiet = quiet or not world.is_main  # rank 0 speaks for every process

        def load():
            from mutr.predictor import load_checkpoint

            return load_checkpoint(checkpoint)[0]

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[item]}"), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=stderr, transient=True, disable=quiet or not stderr.is_terminal) as bar:
            tasks: dict[str, int] = {}

            def on_progress(event) -> None:
                if event.stage not in tasks:
                    tasks[event.stage] = bar.add_task(_STAGES[event.stage], total=event.total, item="")
                label = f"{event.item} (done before)" if event.skipped else event.item
                bar.update(tasks[event.stage], completed=event.done, total=event.total, item=label)

            try:
                result = evaluate(bench, model=load if predictions is None else None, out=out_dir,
                                  predictions=predictions, checkpoint=checkpoint,
                                  metric_batch_size=metric_batch_size or DEFAULT_BATCH_SIZE, device=device.value,
                                  precision=precision.value, size=size, avs_format=avs_format.value,
                                  overwrite=overwrite, progress=on_progress, world=world)
            except KeyboardInterrupt:
                if debug_enabled(debug) or predictions is not None:
                    raise
                bar.stop()
                stderr.print(f"interrupted: finished videos are kept in {out_dir / 'predictions'}; run the same "
                             "command again to resume", highlight=False, soft_wrap=True)
                raise typer.Exit(130) from None
            finally:
                distributed.close(world)
    if not world.is_main:
        return
    if "shard" in result.info and part.count > 1:
        _print_shard(result, part, dataset.value, data_root, out_dir, json_, quiet)
        return
    if json_:
        report = {k: v for k, v in result.to_dict().items() if k != "videos"}  # rows: per_video.csv
        stdout.print_json(json.dumps(_nan_to_none(report)))
    elif not quiet:
        _print(result)


def _print_shard(result, part, dataset: str, data_root: Path, out_dir: Path, json_: bool, quiet: bool) -> None:
    merge = (f"mutr eval --dataset {dataset} --data-root {data_root} --predictions {out_dir} --out {out_dir}")
    if json_:
        stdout.print_json(json.dumps({k: v for k, v in result.to_dict().items() if k != "videos"} | {"merge": merge}))
    elif not quiet:
        stdout.print(f"shard {part}: predicted {result.predicted} units, {result.skipped} found on disk, "
                     f"{result.seconds:.1f} s. When every shard is done, score them all with:", highlight=False)
        stdout.print(f"  {merge}", highlight=False, soft_wrap=True)


def _nan_to_none(x):
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return None if isinstance(x, float) and x != x else x


def _print(result) -> None:
    title = f"{result.dataset} {result.split}: {result.num_videos} videos"
    if result.metrics:
        stdout.print(title, style="bold", highlight=False)
    if result.annotator_sets:  # Ref-DAVIS17: one column per annotator set, then their mean
        table = Table(box=box.SIMPLE_HEAD)
        table.add_column("metric")
        for name in result.annotator_sets:
            table.add_column(name.replace("Davis17_", "").replace("_full_video", " full"), justify="right")
        table.add_column("mean", justify="right", style="bold")
        for metric, value in result.metrics.items():
            table.add_row(metric, *(f"{s[metric]:.4f}" for s in result.annotator_sets.values()), f"{value:.4f}")
        stdout.print(table)
    elif result.metrics:
        table = Table(box=box.SIMPLE_HEAD)
        table.add_column("metric")
        table.add_column("value", justify="right", style="bold")
        for metric, value in result.metrics.items():
            table.add_row(metric, f"{value:.4f}")
        stdout.print(table)
        batch = result.info.get("metric_batch_size")
        if batch is not None:
            stdout.print(f"metric batch size {batch} videos ({result.info['metric_batches']} batches); "
                         "J = mIoU, F = F-score", style="dim", highlight=False)
    else:
        stdout.print(f"{title} (no local metrics: the server scores this split)", highlight=False)
    if result.predicted or result.skipped:
        stdout.print(f"predicted {result.predicted} units, {result.skipped} found on disk (resumed), "
                     f"{result.model_calls} forward passes, {result.seconds:.1f} s", style="dim", highlight=False)
    for name, path in result.files.items():
        stdout.print(f"  {name}: {path}", highlight=False, soft_wrap=True)
