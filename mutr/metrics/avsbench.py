"""AVSBench metrics (S4, MS3): mIoU and F-score, computed as AVSBench's ``test.py`` does.

Papers that print "J" and "F" on AVSBench mean these two numbers (F as 100 * F-score). The
official script scores each *test batch* separately and takes the unweighted mean over batches,
so the result depends on the batch size; this module keeps that and makes it a parameter:

* IoU per frame: prediction = ``sigmoid(logit) > 0.5`` in float32; ``inter / (union + 1e-7)``;
  a frame with an empty GT scores the fraction of pixels where both masks are empty.
  Batch mIoU = mean over the batch's frames; the dataset value is a float32 running mean.
* F per batch: frames with an empty GT are skipped; each other frame gives a curve of
  ``1.3 P R / (0.3 P + R)`` over 255 thresholds ``linspace(0, 1 - 1e-10)`` on ``sigmoid(logit)``
  (``prob >= th``; NaN → 0); the curves are averaged over the batch and the *max of the mean
  curve* is the batch's F-score (0 if every GT in the batch is empty).
* Inputs are logits, not probabilities or hard masks (either would change both numbers).

Everything is float32 like the reference, and the pixel-threshold counts are exact integers, so
values equal the reference on CPU to the bit (on GPU it differs in the last float32 bit).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from mutr.errors import InputError

BETA2 = 0.3
NUM_THRESHOLDS = 255
# Videos per metric batch: the official test.sh passes `--test_batch_size 4` (argparse default 1).
DEFAULT_BATCH_SIZE = 4
_IOU_EPS = 1e-7
_PR_EPS = 1e-20

TensorLike = Tensor | ArrayLike


def frame_iou(logits: TensorLike, target: TensorLike) -> Tensor:
    """Per-frame IoU of ``sigmoid(logits) > 0.5`` and binary targets: [N, H, W] → [N] float32."""
    logits, target = _frames(logits, target)
    pred = torch.sigmoid(logits) > 0.5
    inter = (pred & target).sum(dim=(1, 2)).float()
    union = (pred | target).sum(dim=(1, 2)).float()
    empty = ~target.any(dim=(1, 2))  # an empty GT scores the true-negative fraction
    inter = torch.where(empty, (~pred & ~target).sum(dim=(1, 2)).float(), inter)
    union = torch.where(empty, torch.tensor(float(target[0].numel())), union)
    return inter / (union + _IOU_EPS)


def frame_f_curves(
    logits: TensorLike, target: TensorLike, num_thresholds: int = NUM_THRESHOLDS
) -> tuple[Tensor, Tensor]:
    """Per-frame F curves over thresholds and which frames count: → ([N, K] float32, [N] bool).

    Instead of thresholding K times, each pixel's probability is placed among the sorted
    thresholds once; a reversed cumulative histogram then gives |pred >= th| and TP for every
    threshold, as exact integers.
    """
    logits, target = _frames(logits, target)
    n, k = logits.shape[0], num_thresholds
    prob = torch.sigmoid(logits).reshape(n, -1)  # [N, HW]
    # level = number of thresholds <= prob, i.e. the pixel is predicted at thresholds [0, level).
    # (NumPy's binary search: torch.searchsorted costs ~15 ms per call on small inputs.)
    level = np.searchsorted(_thresholds(k).numpy(), prob.numpy(), side="right")
    level = torch.from_numpy(level).masked_fill_(prob.isnan(), 0)
    flat = (level + torch.arange(n)[:, None] * (k + 1)).reshape(-1)
    hist_all = torch.bincount(flat, minlength=n * (k + 1)).reshape(n, k + 1)
    hist_tp = torch.bincount(flat[target.reshape(-1)], minlength=n * (k + 1)).reshape(n, k + 1)
    # count at threshold i = pixels with level > i = sum of hist[i + 1:].
    n_pred = hist_all.flip(1).cumsum(1).flip(1)[:, 1:].float()  # [N, K]
    tp = hist_tp.flip(1).cumsum(1).flip(1)[:, 1:].float()
    n_gt = target.reshape(n, -1).sum(1, keepdim=True).float()  # [N, 1]
    precision = tp / (n_pred + _PR_EPS)
    recall = tp / (n_gt + _PR_EPS)
    f = (1 + BETA2) * precision * recall / (BETA2 * precision + recall)
    f = torch.where(torch.isnan(f), torch.zeros(()), f)
    return f, n_gt[:, 0] > 0


def batch_miou(logits: TensorLike, target: TensorLike) -> float:
    """One call of the reference ``mask_iou``: mean IoU over the frames of one batch."""
    return _mean_iou(frame_iou(logits, target)).item()


def batch_fscore(logits: TensorLike, target: TensorLike) -> float:
    """One call of the reference ``Eval_Fmeasure``: max over thresholds of the batch-mean curve."""
    return _max_mean_curve(*frame_f_curves(logits, target))


@dataclass(frozen=True)
class AVSBenchScores:
    """Dataset mIoU and F-score, plus each video scored alone (a batch of one) for CSV rows."""

    miou: float
    fscore: float
    batch_size: int  # videos per metric batch the numbers were computed with
    num_batches: int
    video_miou: list[float]
    video_fscore: list[float]


class AVSBenchMeter:
    """Streams videos into metric batches of ``batch_size`` videos, as the test loader would.

    ``update`` keeps only per-frame IoUs and F curves, so a test set never sits in memory;
    ``compute`` closes the last, possibly smaller batch like a loader without ``drop_last``.
    """

    def __init__(self, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if batch_size < 1:
            raise InputError(f"metric batch size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        # Videos of the open batch: (iou [T], F curves [T, K], GT non-empty [T]).
        self._pending: list[tuple[Tensor, Tensor, Tensor]] = []
        self._miou_sum: Tensor | None = None  # float32 running sum, as the reference AverageMeter
        self._fscore_sum = 0.0
        self._batches = 0
        self._video_miou: list[float] = []
        self._video_fscore: list[float] = []

    def update(self, logits: TensorLike, target: TensorLike) -> None:
        """Add one video: logits and binary target masks, both [T, H, W]."""
        iou = frame_iou(logits, target)
        curves, valid = frame_f_curves(logits, target)
        self._video_miou.append(_mean_iou(iou).item())
        self._video_fscore.append(_max_mean_curve(curves, valid))
        self._pending.append((iou, curves, valid))
        if len(self._pending) == self.batch_size:
            self._miou_sum, self._fscore_sum = self._close_batch(self._miou_sum, self._fscore_sum)
            self._batches += 1
            self._pending = []

    def compute(self) -> AVSBenchScores:
        """Dataset scores so far; the meter can keep receiving videos afterwards."""
        miou_sum, fscore_sum, batches = self._miou_sum, self._fscore_sum, self._batches
        if self._pending:
            miou_sum, fscore_sum = self._close_batch(miou_sum, fscore_sum)
            batches += 1
        if miou_sum is None:
            raise InputError("no videos were scored; pass at least one video to update()")
        return AVSBenchScores(
            miou=(miou_sum / batches).item(),
            fscore=fscore_sum / batches,
            batch_size=self.batch_size,
            num_batches=batches,
            video_miou=list(self._video_miou),
            video_fscore=list(self._video_fscore),
        )

    def _close_batch(self, miou_sum: Tensor | None, fscore_sum: float) -> tuple[Tensor, float]:
        iou, curves, valid = (torch.cat(parts) for parts in zip(*self._pending))
        batch_iou = _mean_iou(iou)
        return (batch_iou if miou_sum is None else miou_sum + batch_iou,
                fscore_sum + _max_mean_curve(curves, valid))


def evaluate_avsbench(
    logits: TensorLike | Sequence[TensorLike],
    targets: TensorLike | Sequence[TensorLike],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> AVSBenchScores:
    """Score videos in order: ``logits``, ``targets`` are [V, T, H, W] or V tensors [T, H, W]."""
    if len(logits) != len(targets):
        raise InputError(f"{len(logits)} predicted videos but {len(targets)} GT videos")
    meter = AVSBenchMeter(batch_size)
    for video_logits, video_target in zip(logits, targets):
        meter.update(video_logits, video_target)
    return meter.compute()


# --------------------------------------------------------------------------- internals


@functools.lru_cache(maxsize=4)
def _thresholds(k: int) -> Tensor:
    """The reference's thresholds ``linspace(0, 1 - 1e-10, k)`` in float32 (the last is 1.0)."""
    return torch.linspace(0, 1 - 1e-10, k, dtype=torch.float32)


def _mean_iou(iou: Tensor) -> Tensor:
    return torch.sum(iou) / iou.shape[0]


def _max_mean_curve(curves: Tensor, valid: Tensor) -> float:
    """Mean of the valid frames' curves, accumulated frame by frame in float32 as the reference."""
    total, count = None, 0
    for curve in curves[valid]:
        total = curve if total is None else total + curve
        count += 1
    return 0.0 if total is None else (total / count).max().item()


def _frames(logits: TensorLike, target: TensorLike) -> tuple[Tensor, Tensor]:
    """float32 logits and bool targets (nonzero = object), both [N, H, W]."""
    logits = torch.as_tensor(logits).detach().cpu().to(torch.float32)
    target = torch.as_tensor(target).detach().cpu()
    if logits.ndim != 3 or logits.shape != target.shape or logits.shape[0] == 0:
        raise InputError(f"logits {tuple(logits.shape)} and targets {tuple(target.shape)} must "
                         "share one [N, H, W] shape with N >= 1 (squeeze any channel dim)")
    if not math.prod(logits.shape[1:]):
        raise InputError(f"frames of size {tuple(logits.shape[1:])} have no pixels")
    return logits, target != 0
