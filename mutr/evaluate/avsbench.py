"""AVSBench S4 / MS3: one forward pass per 5-frame clip with its 5 audio examples, scored by
AVSBench's ``test.py`` metrics (mIoU and F-score per metric batch of videos, §3.3).

Predictions layout (``--predictions DIR``; the model run writes ``<out>/predictions``), either::

    DIR/<name>.npy                  float logits [5, H, W] (float16/32/64), frame t = <name>_<t+1>
    DIR/<name>/<name>_<i>.png       8-bit greyscale probability, value = round(255 * sigmoid(logit)),
                                    i = 1..5 as the GT masks (binary 0/255 masks also work); the
                                    model run stores p = 0.5 exactly as 127, so v >= 128 <=> p > 0.5

``.npy`` wins where both exist. PNG values v are read back as logits ``log(v / (255 - v))``
(±inf at 0 and 255): mIoU (sigmoid > 0.5, i.e. v >= 128) is that of the logits, and the F-score
sees probabilities quantised to 1/255. The model run writes ``.npy`` float32 logits by default (the
metrics then equal scoring the model's logits directly; 4 bytes per pixel per frame) or PNGs
with ``avs_format="png"`` (small; F-score within a quantisation step).

Only frames with GT count (S4 train annotates frame 1 only; val/test all five). Videos enter
metric batches in CSV order, as the test loader without shuffling; ``metric_batch_size`` is the
number of videos per batch (official test.sh: 4). J = mIoU, F = F-score, J&F = their mean, as
AVS papers print them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mutr.data.avsbench import NUM_FRAMES, AVSBenchEval
from mutr.data.common import load_binary_mask
from mutr.errors import InputError, MediaError
from mutr.evaluate.common import Benchmark, EvalProgress, ProgressFn, Scores, Unit, read_image
from mutr.evaluate.store import staged_dir, staged_file
from mutr.metrics.avsbench import AVSBenchMeter

FORMATS = ("npy", "png")


def probability_png(logits: torch.Tensor) -> np.ndarray:
    """[H, W] logits -> uint8 round(255 * sigmoid), with p = 0.5 exactly stored as 127 (not 128)
    so that v >= 128 <=> sigmoid > 0.5: mIoU read back from the PNG equals mIoU of the logits."""
    p = torch.sigmoid(logits.float()).numpy()
    v = np.round(p * 255.0)
    return np.where(p > 0.5, v, np.minimum(v, 127)).astype(np.uint8)


def png_to_logits(values: np.ndarray) -> np.ndarray:
    """uint8 round(255 p) -> float32 logits with sigmoid(logit) ~= v / 255 (±inf at 0 and 255)."""
    v = values.astype(np.float64)
    with np.errstate(divide="ignore"):
        return (np.log(v) - np.log(255.0 - v)).astype(np.float32)


class AVSBenchBenchmark(Benchmark):
    modality = "audio"
    protocol = ("AVSBench: one forward pass per 5-frame clip with its 5 log-mel examples; mIoU and F-score "
                "(beta^2 0.3, 255 thresholds) per metric batch of videos, averaged over batches (test.py)")
    splits = ("test", "val", "train")
    layout_hint = "<name>.npy logits [5, H, W] or <name>/<name>_<i>.png 8-bit probabilities"

    def __init__(self, data_root: Path, split: str, subset: str, *, audio: str = "log_mel",
                 avs_format: str = "npy") -> None:
        super().__init__(data_root, split)
        if avs_format not in FORMATS:
            raise InputError(f"AVSBench predictions are written as npy or png, not {avs_format!r}")
        self.dataset, self.format = f"avsbench-{subset}", avs_format
        self.data = AVSBenchEval(data_root, subset, split, audio=audio)
        self.files = self.data.files

    @property
    def video_names(self) -> list[str]:
        return [v.name for v in self.files.videos]

    def units(self, predictions: Path) -> list[Unit]:
        units = []
        for i, v in enumerate(self.files.videos):
            npy, folder = predictions / f"{v.name}.npy", predictions / v.name
            # what is there (.npy first), else what this run writes
            path = npy if npy.exists() else folder if folder.exists() or self.format == "png" else npy
            units.append(Unit(i, v.name, path))
        return units

    def predict(self, runner, video: int, units: list[Unit]) -> None:
        clip = self.data[video]
        logits = runner.mask_logits(runner.encode_video(clip.frames), runner.audio(clip.audio))  # [5, H, W]
        (unit,) = units
        if unit.path.suffix == ".npy":
            with staged_file(unit.path) as tmp:
                np.save(tmp, logits.numpy().astype(np.float32))
        else:
            with staged_dir(unit.path) as tmp:
                for t in range(len(logits)):
                    Image.fromarray(probability_png(logits[t])).save(tmp / f"{clip.name}_{t + 1}.png")

    def read(self, unit: Unit) -> np.ndarray:
        """[5, H, W] float32 logits of one video."""
        if unit.path.suffix == ".npy":
            try:
                a = np.load(unit.path, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise MediaError(f"cannot read {unit.path} ({e}): write logits with numpy.save") from e
            if a.ndim == 4 and a.shape[1] == 1:
                a = a[:, 0]
            if a.ndim != 3 or a.shape[0] != NUM_FRAMES or not np.issubdtype(a.dtype, np.floating):
                raise InputError(f"{unit.path} holds {a.dtype} {a.shape}; expected float logits [{NUM_FRAMES}, H, W]")
            return a.astype(np.float32)
        frames = []
        for t in range(NUM_FRAMES):
            im = read_image(unit.path / f"{unit.name}_{t + 1}.png", self.layout_hint)
            a = np.asarray(im.convert("L") if im.mode in ("1", "RGB", "RGBA") else im)
            if a.ndim != 2 or a.dtype != np.uint8:
                raise InputError(f"{unit.path / f'{unit.name}_{t + 1}.png'} is a {im.mode} image; write 8-bit "
                                 "greyscale probabilities round(255 * p)")
            frames.append(png_to_logits(a))
        return np.stack(frames)

    def score(self, predictions: Path, metric_batch_size: int, progress: ProgressFn) -> Scores:
        meter = AVSBenchMeter(metric_batch_size)
        rows = []
        units = self.units(predictions)
        for unit, v in zip(units, self.files.videos):
            logits = self.read(unit)
            keep = np.flatnonzero(self.files.has_gt(v))
            masks = np.stack([load_binary_mask(self.files.mask(v, int(t)), self.files.layout) for t in keep])
            if masks.shape[1:] != logits.shape[1:]:
                raise InputError(f"{unit.path}: predictions are {logits.shape[2]}x{logits.shape[1]} but the GT masks "
                                 f"are {masks.shape[2]}x{masks.shape[1]}; predict at the frames' own size")
            meter.update(torch.from_numpy(logits[keep]), torch.from_numpy(masks))
            rows.append({"video": v.name, "category": v.category, "frames": len(keep)})
            progress(EvalProgress("score", len(rows), len(units), v.name))
        s = meter.compute()
        for row, miou, fscore in zip(rows, s.video_miou, s.video_fscore):
            row.update({"mIoU": miou, "F-score": fscore})
        metrics = {"mIoU": s.miou, "F-score": s.fscore, "J": s.miou, "F": s.fscore, "J&F": (s.miou + s.fscore) / 2}
        return Scores(metrics, rows, "mIoU",
                      info={"metric_batch_size": s.batch_size, "metric_batches": s.num_batches})
