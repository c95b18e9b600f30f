"""DAVIS 2017 measures: region similarity J, boundary F-measure, and their statistics.

Ref-DAVIS papers report the numbers of the official ``davis2017-evaluation`` toolkit, so this
module reproduces it value for value (including where its choices are odd, because changing
them changes the numbers):

* GT objects are the labels ``1..max(first GT frame)``; 255 is void. A higher id that first
  appears later is ignored.
* ``task="unsupervised"`` (how Ref-DAVIS is scored): every frame counts, void pixels are left
  out of both masks, and predicted labels ``1..max`` are matched one-to-one to GT objects by a
  Hungarian assignment maximising ``(mean J + mean F) / 2``. Missing proposals are empty masks.
* ``task="semi-supervised"``: the first and last frames are dropped, void pixels count as
  background, and predicted label k is object k.
* F uses one-pixel boundaries that lie half a pixel toward the origin (the image border is not
  an edge), matched within ``ceil(0.008 * diagonal)`` pixels (a Euclidean disk).
* Decay bin edges are cast to uint8, so sequences longer than 255 frames wrap around (and a
  256-frame sequence gets a NaN decay, as with NumPy >= 2).
* Per-object rows come in the order of their matched proposal label, and the toolkit's CSV
  names row k ``<video>_<k>`` whatever GT object it holds; ``object_id`` here says which.

Label maps are ``[T, H, W]`` integer arrays (or a sequence of ``[H, W]`` arrays).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import linear_sum_assignment

from mutr.errors import InputError

VOID_LABEL = 255
BOUND_TH = 0.008  # boundary tolerance: a fraction of the image diagonal if < 1, else pixels
MAX_PROPOSALS = 20  # the toolkit refuses more predicted labels than this (unsupervised task)
RECALL_THRESHOLD = 0.5
METRIC_NAMES = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")

Task = Literal["unsupervised", "semi-supervised"]


def region_similarity(gt: ArrayLike, pred: ArrayLike, void: ArrayLike | None = None) -> NDArray:
    """J per frame: IoU over non-void pixels; 1 where both masks are empty. [..., H, W] → [...]"""
    gt, pred = np.asarray(gt).astype(bool), np.asarray(pred).astype(bool)
    _check_shapes(gt=gt, pred=pred, void=void)
    keep = True if void is None else ~np.asarray(void).astype(bool)
    inter = np.sum(gt & pred & keep, axis=(-2, -1))
    union = np.sum((gt | pred) & keep, axis=(-2, -1))
    return _iou(inter, union)[()]


def boundary_map(mask: ArrayLike) -> NDArray[np.bool_]:
    """One-pixel boundaries of binary masks, as the toolkit's ``seg2bmap`` draws them.

    A pixel is on the boundary if it differs from its right, lower or lower-right neighbour.
    Pixels past the image edge are not compared (so a full mask has no boundary); on the last
    row only the right neighbour counts, on the last column only the lower one. [..., H, W]
    """
    m = np.asarray(mask).astype(bool)
    right, down, diag = np.zeros_like(m), np.zeros_like(m), np.zeros_like(m)
    right[..., :, :-1] = m[..., :, 1:]
    down[..., :-1, :] = m[..., 1:, :]
    diag[..., :-1, :-1] = m[..., 1:, 1:]
    edge = (m ^ right) | (m ^ down) | (m ^ diag)
    edge[..., -1, :] = m[..., -1, :] ^ right[..., -1, :]
    edge[..., :, -1] = m[..., :, -1] ^ down[..., :, -1]
    edge[..., -1, -1] = False
    return edge


def boundary_radius(bound_th: float, height: int, width: int) -> float:
    """Match tolerance in pixels: ``bound_th`` if >= 1, else ``ceil(bound_th * diagonal)``."""
    if bound_th >= 1:
        return float(bound_th)
    return float(np.ceil(bound_th * np.linalg.norm((height, width))))


def boundary_f_measure(
    gt: ArrayLike, pred: ArrayLike, void: ArrayLike | None = None, bound_th: float = BOUND_TH
) -> NDArray:
    """F per frame: harmonic mean of boundary precision and recall. [..., H, W] → [...]"""
    gt, pred = np.asarray(gt).astype(bool), np.asarray(pred).astype(bool)
    _check_shapes(gt=gt, pred=pred, void=void)
    hw = gt.shape[-2:]
    voids = np.broadcast_to(np.asarray(False if void is None else void).astype(bool), gt.shape)
    kernel = _disk(boundary_radius(bound_th, *hw))
    frames = zip(gt.reshape(-1, *hw).view(np.uint8), pred.reshape(-1, *hw).view(np.uint8),
                 ~voids.reshape(-1, *hw))
    f = [_frame_scores(g, p, keep, 1, 1, kernel)[1][0, 0] for g, p, keep in frames]
    return np.asarray(f, dtype=np.float64).reshape(gt.shape[:-2])[()]


def statistics(values: ArrayLike) -> tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame J or F, as the toolkit's ``db_statistics``.

    Mean ignores NaN; recall is the fraction of frames above 0.5 (NaN fails); decay is the mean
    of the first quarter of the frames minus that of the last quarter (the four bins share
    their edge frames).
    """
    values = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(values)
        recall = np.nanmean(values > RECALL_THRESHOLD)
        # Bin edges live in uint8 in the toolkit: wrap them (and the exclusive end) modulo 256.
        edges = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64) % 256
        bins = [values[edges[i] : (edges[i + 1] + 1) % 256] for i in range(4)]
        decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return float(mean), float(recall), float(decay)


@dataclass(frozen=True)
class ObjectResult:
    """One GT object of one video: per-frame J and F of its matched proposal, and their stats."""

    video: str
    index: int  # 1-based row position within the video, the toolkit's ``<video>_<index>`` name
    object_id: int  # GT label
    proposal_id: int  # predicted label it was matched to (above max(pred) means an empty mask)
    j: NDArray[np.float64]  # [T'] per-frame region similarity
    f: NDArray[np.float64]  # [T'] per-frame boundary measure
    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float

    @property
    def name(self) -> str:
        return f"{self.video}_{self.index}"


@dataclass(frozen=True)
class VideoResult:
    """All GT objects of one video, in the toolkit's row order."""

    name: str
    objects: tuple[ObjectResult, ...]


@dataclass(frozen=True)
class DavisSummary:
    """Dataset numbers (``METRIC_NAMES``) plus per-object and per-video rows for CSV files."""

    metrics: dict[str, float]
    objects: list[dict[str, object]]
    videos: list[dict[str, object]]


def evaluate_video(
    gt: ArrayLike | Sequence[ArrayLike],
    pred: ArrayLike | Sequence[ArrayLike],
    *,
    name: str = "",
    task: Task = "unsupervised",
    bound_th: float = BOUND_TH,
    num_objects: int | None = None,
    max_proposals: int = MAX_PROPOSALS,
) -> VideoResult:
    """Score one video's predicted label maps against its GT label maps (both [T, H, W]).

    ``num_objects`` overrides the toolkit's rule "GT objects are 1..max(first GT frame)".
    """
    gt, pred = _label_maps(gt, "gt"), _label_maps(pred, "pred")
    if gt.shape != pred.shape:
        raise InputError(f"{name or 'video'}: GT {gt.shape} and prediction {pred.shape} differ in "
                         "shape; write one prediction per GT frame at the GT size")
    if task not in ("unsupervised", "semi-supervised"):
        raise InputError(f"task must be 'unsupervised' or 'semi-supervised', not {task!r}")
    void = gt == VOID_LABEL
    labels = np.where(void, 0, gt)
    n_obj = int(labels[0].max()) if num_objects is None else int(num_objects)
    keep: NDArray[np.bool_] | None = ~void
    if task == "semi-supervised":  # first and last frames dropped; void not ignored
        if len(gt) < 3:
            raise InputError(f"{name or 'video'}: the semi-supervised task needs >= 3 frames")
        labels, pred, keep = labels[1:-1], pred[1:-1], None
    n_prop = int(pred.max())
    if task == "unsupervised" and n_prop > max_proposals:
        raise InputError(f"{name or 'video'}: predicted label {n_prop} exceeds the {max_proposals}"
                         " proposals DAVIS allows; relabel predictions 1..N with N <= "
                         f"{max_proposals}")
    if task == "semi-supervised" and n_prop > n_obj:
        raise InputError(f"{name or 'video'}: predicted label {n_prop} but only {n_obj} GT objects;"
                         " in the semi-supervised task label k must be GT object k")
    if n_obj <= 0:
        return VideoResult(name, ())
    j, f = _pairwise_scores(labels, pred, keep, max(n_prop, n_obj), n_obj, bound_th)
    if task == "unsupervised":
        rows, cols = linear_sum_assignment(-((np.mean(j, axis=2) + np.mean(f, axis=2)) / 2))
    else:
        rows = cols = np.arange(n_obj)
    objects = []
    for k, (r, c) in enumerate(zip(rows, cols)):
        jr, fr = j[r, c].copy(), f[r, c].copy()
        objects.append(ObjectResult(name, k + 1, int(c) + 1, int(r) + 1, jr, fr,
                                    *statistics(jr), *statistics(fr)))
    return VideoResult(name, tuple(objects))


def summarize(videos: Iterable[VideoResult]) -> DavisSummary:
    """Average over all objects of all videos (object-weighted), J&F = (J-Mean + F-Mean) / 2."""
    videos = list(videos)
    objs = [o for v in videos for o in v.objects]
    columns = {"J-Mean": "j_mean", "J-Recall": "j_recall", "J-Decay": "j_decay",
               "F-Mean": "f_mean", "F-Recall": "f_recall", "F-Decay": "f_decay"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no objects → NaN, like the toolkit
        metrics = {k: float(np.mean([getattr(o, a) for o in objs])) for k, a in columns.items()}
        metrics = {"J&F-Mean": (metrics["J-Mean"] + metrics["F-Mean"]) / 2.0, **metrics}
        per_video = []
        for v in videos:
            jm = float(np.mean([o.j_mean for o in v.objects]))
            fm = float(np.mean([o.f_mean for o in v.objects]))
            per_video.append({"Sequence": v.name, "Objects": len(v.objects),
                              "J&F-Mean": (jm + fm) / 2.0, "J-Mean": jm, "F-Mean": fm})
    rows = [{"Sequence": o.name, "Video": o.video, "Object": o.object_id,
             "Proposal": o.proposal_id, **{k: getattr(o, a) for k, a in columns.items()}}
            for o in objs]
    return DavisSummary(metrics, rows, per_video)


# --------------------------------------------------------------------------- internals


def _pairwise_scores(
    labels: NDArray, pred: NDArray, keep: NDArray | None, n_prop: int, n_obj: int, bound_th: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """J and F of every (proposal, object) pair in every frame → two [P, O, T] arrays."""
    t, h, w = labels.shape
    kernel = _disk(boundary_radius(bound_th, h, w))
    j, f = np.zeros((n_prop, n_obj, t)), np.zeros((n_prop, n_obj, t))
    for i in range(t):
        j[:, :, i], f[:, :, i] = _frame_scores(
            labels[i], pred[i], None if keep is None else keep[i], n_obj, n_prop, kernel
        )
    return j, f


def _frame_scores(
    gt: NDArray, pred: NDArray, keep: NDArray[np.bool_] | None, n_obj: int, n_prop: int,
    kernel: NDArray[np.uint8],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """J and F for all pairs of one frame: label maps [H, W] → two [P, O].

    The toolkit redoes boundaries and dilations for every pair; they depend on one mask
    only, so here they are made once per mask, and all counts are exact integers.
    """
    gt = np.where(gt <= n_obj, gt, 0)  # labels above the object count are background
    if keep is not None:  # void pixels leave both masks
        gt, pred = np.where(keep, gt, 0), np.where(keep, pred, 0)
    # Region: intersections of every pair at once from the joint label histogram.
    joint = np.bincount((pred.astype(np.int64) * (n_obj + 1) + gt).ravel(),
                        minlength=(n_prop + 1) * (n_obj + 1)).reshape(n_prop + 1, n_obj + 1)
    inter = joint[1:, 1:]
    union = joint[1:, :].sum(1, keepdims=True) + joint[:, 1:].sum(0, keepdims=True) - inter
    j = _iou(inter, union)

    # Boundary: each edge map is sparse, so pair matches gather the other side's dilation.
    g_edge = boundary_map(gt[None] == np.arange(1, n_obj + 1)[:, None, None])  # [O, H, W]
    p_edge = boundary_map(pred[None] == np.arange(1, n_prop + 1)[:, None, None])  # [P, H, W]
    g_dil = _dilate(g_edge, kernel).reshape(n_obj, -1)
    p_dil = _dilate(p_edge, kernel).reshape(n_prop, -1)
    fg_match, gt_match = np.zeros((n_prop, n_obj)), np.zeros((n_prop, n_obj))
    for p, edge in enumerate(p_edge.reshape(n_prop, -1)):
        fg_match[p] = g_dil[:, np.flatnonzero(edge)].sum(1)  # pred edge near GT edge
    for o, edge in enumerate(g_edge.reshape(n_obj, -1)):
        gt_match[:, o] = p_dil[:, np.flatnonzero(edge)].sum(1)  # GT edge near pred edge
    n_fg = p_edge.sum(axis=(1, 2))[:, None]  # [P, 1]
    n_gt = g_edge.sum(axis=(1, 2))[None, :]  # [1, O]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = fg_match / n_fg
        recall = gt_match / n_gt
    # Empty edges: none predicted → P=1, R=0; none in GT → P=0, R=1; neither → P=R=1.
    precision = np.where(n_fg == 0, 1.0, np.where(n_gt == 0, 0.0, precision))
    recall = np.where(n_gt == 0, 1.0, np.where(n_fg == 0, 0.0, recall))
    total = precision + recall
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(total == 0, 0.0, 2 * precision * recall / total)
    return j, f


def _iou(inter: NDArray, union: NDArray) -> NDArray[np.float64]:
    with np.errstate(divide="ignore", invalid="ignore"):
        j = np.asarray(inter / union, dtype=np.float64)
    return np.where(union == 0, 1.0, j)


def _disk(radius: float) -> NDArray[np.uint8]:
    """Euclidean disk in a (2r+1)² box, built like ``skimage.morphology.disk``."""
    offsets = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(offsets, offsets)
    return (x**2 + y**2 <= radius**2).astype(np.uint8)


def _dilate(masks: NDArray[np.bool_], kernel: NDArray[np.uint8]) -> NDArray[np.bool_]:
    out = np.empty_like(masks)
    for k, m in enumerate(np.ascontiguousarray(masks)):
        out[k] = cv2.dilate(m.view(np.uint8), kernel).view(bool)  # 0/1 in, 0/1 out
    return out


def _label_maps(maps: ArrayLike | Sequence[ArrayLike], what: str) -> NDArray[np.integer]:
    if isinstance(maps, (list, tuple)):
        maps = np.stack([np.asarray(m) for m in maps])
    arr = np.asarray(maps)
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise InputError(f"{what} must be label maps [T, H, W] with T >= 1, got {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.array_equal(arr, np.round(arr)):
        raise InputError(f"{what} must hold integer labels; convert soft masks to label maps first")
    if arr.min() < 0:
        raise InputError(f"{what} has negative labels; labels are 0 (background), 1..N, 255 (void)")
    return arr if np.issubdtype(arr.dtype, np.integer) else arr.astype(np.int64)


def _check_shapes(**arrays: ArrayLike | None) -> None:
    shapes = {k: np.shape(v) for k, v in arrays.items() if v is not None}
    if len(set(shapes.values())) > 1 or len(next(iter(shapes.values()))) < 2:
        raise InputError(f"masks must share one [..., H, W] shape, got {shapes}")
