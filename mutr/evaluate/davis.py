"""Ref-DAVIS17: the official inference (inference_davis.py) and the DAVIS 2017 unsupervised scoring.

Predictions layout (``--predictions DIR``; the model run writes ``<out>/predictions``)::

    DIR/<annotator set>/<video>/<%05d>.png     palette PNG label map per frame (frame index t)

with the four sets ``Davis17_annot1``, ``Davis17_annot1_full_video``, ``Davis17_annot2``,
``Davis17_annot2_full_video``; ``DIR/valid/<set>/...`` (the official output folder) is accepted
too. Label k + 1 marks the k-th object of the set (objects in obj_id string order); unsupervised
scoring matches labels to GT objects anyway, so any labelling 1..N (N <= 20) scores the same.

Model run, per video and annotator set: clips of 64 frames, each a forward pass per object with
its own query selection; per pixel the objects' probabilities (values below 0.5 set to 0) compete
with a constant 0.1 background and the argmax is the label (ties go to the lower label, as
torch.argmax). Scores: ``mutr.metrics.davis`` per set ("unsupervised", all frames), summarised
over all objects; the reported numbers are the mean of the four sets' results.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mutr.data.ref_davis import ANNOTATOR_SETS, RefDavisEval
from mutr.data.synthetic_layouts import palette
from mutr.errors import InputError
from mutr.evaluate.common import Benchmark, EvalProgress, ProgressFn, Scores, Unit, read_image
from mutr.evaluate.store import staged_dir
from mutr.metrics.davis import METRIC_NAMES, evaluate_video, summarize

CLIP_LENGTH = 64  # frames per forward pass, as inference_davis.py
BACKGROUND = 0.1  # the constant background plane of the official label maps
THRESHOLD = 0.5


def frame_file(t: int) -> str:
    return f"{t:05d}.png"


def save_label_map(labels: np.ndarray, path: Path) -> None:
    """[H, W] uint8 labels -> palette PNG (the DAVIS colour map)."""
    im = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))
    im.putpalette(palette())  # an "L" image becomes "P" with the raw values as indices
    im.save(path)


def label_maps(probs: list[torch.Tensor]) -> torch.Tensor:
    """Objects' probabilities (each [T, H, W]) -> [T, H, W] uint8 labels, the official rule:
    ``argmax(cat([0.1 plane, where(p < 0.5, 0, p) ...]))``, done object by object."""
    best = torch.full_like(probs[0], BACKGROUND) if probs else None
    labels = torch.zeros(probs[0].shape, dtype=torch.uint8) if probs else None
    for k, p in enumerate(probs):
        p = torch.where(p < THRESHOLD, torch.zeros((), dtype=p.dtype), p)
        better = p > best  # strict: an earlier label keeps a tie, as argmax returns the first maximum
        best = torch.where(better, p, best)
        labels[better] = k + 1
    return labels


class DavisBenchmark(Benchmark):
    dataset = "ref-davis17"
    modality = "text"
    protocol = ("Ref-DAVIS17: 64-frame clips with per-clip query selection, 4 annotator sets, DAVIS 2017 "
                "unsupervised evaluation per set, mean of the 4 sets")
    unit_word = "annotator-set videos"
    layout_hint = "<set>/<video>/<%05d>.png palette label maps for the 4 annotator sets"
    splits = ("valid", "train")

    def __init__(self, data_root: Path, split: str) -> None:
        super().__init__(data_root, split)
        self.data = RefDavisEval(data_root, split)

    @property
    def video_names(self) -> list[str]:
        return [v.video_id for v in self.data]

    def resolve_predictions(self, path: Path) -> Path:
        path = super().resolve_predictions(path)
        if not (path / ANNOTATOR_SETS[0]).exists() and (path / self.split / ANNOTATOR_SETS[0]).exists():
            return path / self.split  # the official script's output folder
        return path

    def units(self, predictions: Path) -> list[Unit]:
        return [Unit(i, f"{s}/{v.video_id}", predictions / s / v.video_id)
                for i, v in enumerate(self.data) for s in ANNOTATOR_SETS]

    def video_cost(self, video: int) -> int:
        v = self.data[video]
        return len(v.frame_names) * (1 + sum(len(v.expressions_of_set(a)) for a in range(len(ANNOTATOR_SETS))))

    def predict(self, runner, video: int, units: list[Unit]) -> None:
        v = self.data[video]
        sets = {ANNOTATOR_SETS.index(u.name.split("/")[0]): u for u in units}
        frames = v.load_frames()
        refs: dict[str, object] = {}

        def ref(text: str):
            if text not in refs:
                refs[text] = runner.text(text)
            return refs[text]

        with contextlib.ExitStack() as stack:
            dirs = {a: stack.enter_context(staged_dir(u.path)) for a, u in sets.items()}
            for start in range(0, len(frames), CLIP_LENGTH):
                clip = runner.encode_video(frames[start : start + CLIP_LENGTH])
                for a, folder in dirs.items():
                    probs = [runner.mask_logits(clip, ref(text)).sigmoid() for _, text in v.expressions_of_set(a)]
                    if probs:
                        labels = label_maps(probs).numpy()
                    else:  # no object in this set: all background
                        labels = np.zeros((clip.num_frames, *clip.size), dtype=np.uint8)
                    for i, lab in enumerate(labels):
                        save_label_map(lab, folder / frame_file(start + i))

    def read(self, predictions: Path, annotator_set: str, video: int) -> np.ndarray:
        v = self.data[video]
        folder = predictions / annotator_set / v.video_id
        maps = []
        for t in range(len(v.frame_names)):
            im = read_image(folder / frame_file(t), self.layout_hint)
            if im.mode not in ("P", "L"):
                raise InputError(f"{folder / frame_file(t)} is a {im.mode} image; write palette (P) PNGs of labels")
            maps.append(np.asarray(im))
        return np.stack(maps)

    def score(self, predictions: Path, metric_batch_size: int, progress: ProgressFn) -> Scores:
        results: dict[str, list] = {s: [] for s in ANNOTATOR_SETS}
        for i, v in enumerate(self.data):
            gt = v.load_gt()
            for s in ANNOTATOR_SETS:
                results[s].append(evaluate_video(gt, self.read(predictions, s, i), name=v.video_id))
            progress(EvalProgress("score", i + 1, len(self.data), v.video_id))
        summaries = {s: summarize(r) for s, r in results.items()}
        groups = {s: summaries[s].metrics for s in ANNOTATOR_SETS}
        metrics = {k: float(np.mean([groups[s][k] for s in ANNOTATOR_SETS])) for k in METRIC_NAMES}
        videos = []
        for i, v in enumerate(self.data):
            rows = {s: summaries[s].videos[i] for s in ANNOTATOR_SETS}
            row = {"video": v.video_id, "objects": rows[ANNOTATOR_SETS[0]]["Objects"]}
            for k in ("J&F-Mean", "J-Mean", "F-Mean"):
                row[k] = float(np.mean([r[k] for r in rows.values()]))
            row.update({f"J&F-Mean {s}": rows[s]["J&F-Mean"] for s in ANNOTATOR_SETS})
            videos.append(row)
        objects = [{"annotator_set": s, **o} for s in ANNOTATOR_SETS for o in summaries[s].objects]
        return Scores(metrics, videos, "J&F-Mean", groups, objects,
                      {"num_objects": len(summaries[ANNOTATOR_SETS[0]].objects)})
