"""``evaluate``: run a benchmark's official protocol (or read predictions), score, write reports."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mutr
from mutr.distributed import World, balanced_shares, run_on_main
from mutr.errors import InputError
from mutr.evaluate.avsbench import FORMATS, AVSBenchBenchmark
from mutr.evaluate.common import Benchmark, EvalProgress, ProgressFn, no_progress
from mutr.evaluate.davis import DavisBenchmark
from mutr.evaluate.store import (METRICS_FILE, PER_OBJECT, PER_VIDEO, PLOT, PREDICTIONS, SUBMISSION,
                                 clean_stale, clean_stale_units, fingerprint, prepare_out, refuse_finished)
from mutr.evaluate.report import write_csv, write_json, write_plot
from mutr.evaluate.ytvos import YTVOSBenchmark
from mutr.io.transforms import INFERENCE_SIZE
from mutr.metrics.avsbench import DEFAULT_BATCH_SIZE

DATASETS = ("ref-davis17", "ref-youtube-vos", "avsbench-s4", "avsbench-ms3")
_ROOTS = {
    "ref-davis17": "meta_expressions/, valid/JPEGImages/ and valid/Annotations/ (the converted Ref-DAVIS17 layout)",
    "ref-youtube-vos": "meta_expressions/ and valid/JPEGImages/ (the Ref-YouTube-VOS layout)",
    "avsbench-s4": "Single-source/s4_meta_data.csv and Single-source/s4_data/ (AVSBench-object)",
    "avsbench-ms3": "Multi-sources/ms3_meta_data.csv and Multi-sources/ms3_data/ (AVSBench-object)",
}


def default_split(dataset: str) -> str:
    return "test" if dataset.startswith("avsbench") else "valid"


def open_benchmark(dataset: str, data_root: str | os.PathLike, split: str | None = None, *,
                   avs_format: str = "npy", avs_audio: str = "log_mel") -> Benchmark:
    """The benchmark's videos, read from its on-disk layout (cheap: no frames are decoded)."""
    if dataset not in DATASETS:
        raise InputError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise InputError(f"data root {root} does not exist: pass --data-root the folder holding {_ROOTS[dataset]}")
    split = split or default_split(dataset)
    cls = {"ref-davis17": DavisBenchmark, "ref-youtube-vos": YTVOSBenchmark}.get(dataset, AVSBenchBenchmark)
    if split not in cls.splits:
        raise InputError(f"{dataset} has no split {split!r} to evaluate: choose one of {', '.join(cls.splits)}")
    if cls is AVSBenchBenchmark:
        return AVSBenchBenchmark(root, split, dataset.split("-")[1], audio=avs_audio, avs_format=avs_format)
    return cls(root, split)


@dataclass
class EvalResult:
    """What ``evaluate`` did: the dataset ``metrics`` (mean of the four annotator sets for
    Ref-DAVIS17, which ``annotator_sets`` holds one by one), per-video rows, the files written, and how
    many prediction units were run (``predicted``) or found on disk (``skipped``)."""

    dataset: str
    split: str
    protocol: str
    metrics: dict[str, float]
    annotator_sets: dict[str, dict[str, float]]
    videos: list[dict[str, Any]]
    num_videos: int
    predictions: str
    out: str
    files: dict[str, str]
    predicted: int = 0
    skipped: int = 0
    model_calls: int = 0
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    dataset: str | Benchmark,
    data_root: str | os.PathLike | None = None,
    model: Any = None,
    *,
    out: str | os.PathLike,
    split: str | None = None,
    predictions: str | os.PathLike | None = None,
    metric_batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    precision: str = "fp32",
    size: int = INFERENCE_SIZE,
    avs_format: str = "npy",
    checkpoint: str | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    world: World | None = None,
) -> EvalResult:
    """Evaluate ``model`` (a MUTR, or a function returning one, called only if something is left
    to predict) on ``dataset`` in its official protocol, or score ``predictions`` already on disk.

    A model run writes its predictions under ``out/predictions`` one video at a time and resumes
    an interrupted run of the same model and settings. Reports go to ``out`` (see
    :mod:`mutr.evaluate.store`). ``progress`` receives :class:`EvalProgress` events.

    ``world`` (:func:`mutr.distributed.init`) shares the videos between torchrun processes and
    job-array shards, balanced by :meth:`Benchmark.video_cost`: each process predicts its share,
    then rank 0 scores the whole predictions folder, so the metrics are those of one process. A
    ``--shard I/N`` job only predicts (``metrics`` stays empty); score the finished folder with
    ``predictions=out``.
    """
    world = world or World()
    started = time.perf_counter()
    progress = progress or no_progress
    if (model is None) == (predictions is None):
        raise InputError("evaluate needs a model to run or --predictions DIR to score (exactly one of them)")
    if metric_batch_size < 1:
        raise InputError(f"--metric-batch-size must be >= 1, got {metric_batch_size}")
    if avs_format not in FORMATS:
        raise InputError(f"avs_format must be one of {', '.join(FORMATS)}, not {avs_format!r}")
    if isinstance(dataset, Benchmark):
        bench = dataset
    elif data_root is None:
        raise InputError(f"evaluate({dataset!r}) needs data_root, the dataset folder")
    else:
        bench = open_benchmark(dataset, data_root, split, avs_format=avs_format)
    out = Path(out).expanduser()
    info: dict[str, Any] = {"checkpoint": checkpoint, "mutr_version": mutr.__version__}
    predicted = skipped = calls = 0
    if predictions is not None:
        pred_dir = bench.resolve_predictions(Path(predictions).expanduser())
        if not world.is_main:  # scoring is one process's work
            return EvalResult(bench.dataset, bench.split, bench.protocol, {}, {}, [], len(bench.video_names),
                              str(pred_dir), str(out), {}, info=info)
        if not pred_dir.is_dir():
            raise InputError(f"--predictions {pred_dir} does not exist: pass the folder holding {bench.layout_hint}")
        bench.check_complete(pred_dir)
        prepare_out(out, None, overwrite=overwrite)
    else:
        pred_dir = out / PREDICTIONS
        sharded = world.shard.count > 1
        if sharded and overwrite:
            raise InputError("--overwrite with --shard would delete the other shards' predictions: remove --out "
                             "once before starting the shards instead")
        refuse_finished(out, overwrite)  # before a slow checkpoint load
        model_obj = model() if callable(model) and not hasattr(model, "decode") else model
        _check_modality(bench, model_obj, checkpoint)
        run = {"dataset": bench.dataset, "split": bench.split, "checkpoint": checkpoint,
               "weights": fingerprint(model_obj), "size": size, "precision": precision}
        if isinstance(bench, AVSBenchBenchmark):
            run["avs_format"] = avs_format

        def set_up() -> bool:
            resumed = prepare_out(out, run, overwrite=overwrite)
            if not sharded:  # other shards may be writing now: each cleans only its own units below
                clean_stale(pred_dir)
            return resumed

        info["resumed"] = run_on_main(world, set_up)  # rank 0 writes run.json; the others wait
        counts = _predict(bench, model_obj, pred_dir, device, precision, size, progress, world)
        gathered = world.all_gather(counts)  # also the barrier: every share is on disk after it
        predicted, skipped, calls = (sum(c[k] for c in gathered) for k in range(3))
        info.update(device=counts[3], precision=precision, size=size)
        if world.distributed:
            info.update(processes=world.size, devices=[c[3] for c in gathered])
        if sharded or not world.is_main:
            info["shard"] = str(world.shard)
            return EvalResult(
                dataset=bench.dataset, split=bench.split, protocol=bench.protocol, metrics={}, annotator_sets={},
                videos=[], num_videos=len(bench.video_names), predictions=str(pred_dir), out=str(out), files={},
                predicted=predicted, skipped=skipped, model_calls=calls, seconds=time.perf_counter() - started,
                info=info)
    scores = bench.score(pred_dir, metric_batch_size, progress)
    files: dict[str, str] = {}
    if scores.videos:
        write_csv(out / PER_VIDEO, scores.videos)
        files["per_video"] = str(out / PER_VIDEO)
    if scores.objects:
        write_csv(out / PER_OBJECT, scores.objects)
        files["per_object"] = str(out / PER_OBJECT)
    if scores.plot_key and scores.videos:
        write_plot(out / PLOT, scores.videos, scores.plot_key, f"{bench.dataset} {bench.split}: per-video "
                   f"{scores.plot_key}" + (" (mean of the 4 annotator sets)" if scores.groups else ""))
        files["plot"] = str(out / PLOT)
    if isinstance(bench, YTVOSBenchmark):
        bench.package(pred_dir, out / SUBMISSION, progress)
        files["submission"] = str(out / SUBMISSION)
    files["metrics"] = str(out / METRICS_FILE)
    result = EvalResult(
        dataset=bench.dataset, split=bench.split, protocol=bench.protocol, metrics=scores.metrics,
        annotator_sets=scores.groups, videos=scores.videos, num_videos=len(bench.video_names),
        predictions=str(pred_dir), out=str(out), files=files, predicted=predicted, skipped=skipped,
        model_calls=calls, seconds=time.perf_counter() - started, info={**info, **scores.info})
    report = {k: v for k, v in result.to_dict().items() if k != "videos"}
    write_json(out / METRICS_FILE, {"format": "mutr-eval", "version": 1, **report})
    return result


def _check_modality(bench: Benchmark, model: Any, checkpoint: str | None) -> None:
    name = checkpoint or getattr(getattr(model, "config", None), "name", "this model")
    if bench.modality == "text" and getattr(model, "text_encoder", True) is None:
        raise InputError(f"{name} has no text encoder, but {bench.dataset} is text-referred: pass a text or joint "
                         "checkpoint")
    if bench.modality == "audio" and getattr(model, "audio_encoder", True) is None:
        raise InputError(f"{name} has no audio encoder, but {bench.dataset} is audio-referred: pass an audio or joint "
                         "checkpoint (r50-audio, r50-joint)")


def _predict(bench: Benchmark, model: Any, pred_dir: Path, device: str, precision: str, size: int,
             progress: Callable[[EvalProgress], None], world: World) -> tuple[int, int, int, str]:
    """Run the model on every video of this process's share with a unit missing: (units run,
    units found, calls, device)."""
    from mutr.evaluate.runner import ClipRunner

    units = bench.units(pred_dir)
    by_video: dict[int, list] = {}
    for u in units:
        by_video.setdefault(u.video, []).append(u)
    if world.shares > 1:
        videos = list(by_video)
        mine = balanced_shares([bench.video_cost(v) for v in videos], world.shares)[world.share]
        by_video = {videos[i]: by_video[videos[i]] for i in mine}
        for group in by_video.values():
            clean_stale_units(group)
    if world.distributed and device in ("auto", "cuda"):
        device = str(world.device)  # cuda:LOCAL_RANK under torchrun
    runner = ClipRunner(model, device=device, precision=precision, size=size)
    names = bench.video_names
    predicted = skipped = 0
    for k, (video, group) in enumerate(by_video.items()):
        todo = [u for u in group if not u.path.exists()]
        skipped += len(group) - len(todo)
        if todo:
            bench.predict(runner, video, todo)
            predicted += len(todo)
        progress(EvalProgress("predict", k + 1, len(by_video), names[video], skipped=not todo))
    return predicted, skipped, runner.calls, str(runner.device)
