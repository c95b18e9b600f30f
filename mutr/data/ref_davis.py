"""Ref-DAVIS 2017 in the converted YTVOS-like layout (datasets.md §2.1), training and evaluation.

Layout::

    <root>/{train,valid}/JPEGImages/<video>/<00000>.jpg   <root>/{train,valid}/Annotations/<video>/<00000>.png
    <root>/{train,valid}/meta.json                        <root>/meta_expressions/{train,valid}/meta_expressions.json

Each object has four expressions, exp ids 4k..4k+3 for the k-th object (objects in string order
of obj_id): annot1 first-frame, annot1 full-video, annot2 first-frame, annot2 full-video. The
benchmark runs every object's expression of one annotator set, writes one label map per set,
scores each set with the DAVIS toolkit and averages the four runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from mutr.data.common import load_label_map, load_rgb, read_json, require
from mutr.data.ref_youtube_vos import RefYouTubeVOS
from mutr.errors import InputError

LAYOUT = ("Ref-DAVIS17 converted (<root>/meta_expressions/<split>/meta_expressions.json, "
          "<root>/<split>/JPEGImages/<video>/<00000>.jpg, <root>/<split>/Annotations/<video>/<00000>.png)")
ANNOTATOR_SETS = ("Davis17_annot1", "Davis17_annot1_full_video", "Davis17_annot2", "Davis17_annot2_full_video")


class RefDavis(RefYouTubeVOS):
    """Training clips from Ref-DAVIS (same sampling and transforms as Ref-YouTube-VOS; MUTR itself
    evaluates DAVIS zero-shot, so this is for fine-tuning experiments)."""

    name = "ref-davis17"
    layout = LAYOUT
    splits = ("train", "valid")


@dataclass(frozen=True)
class DavisObject:
    """One GT object and its four expressions, indexed like :data:`ANNOTATOR_SETS`."""

    obj_id: int
    exp_ids: tuple[str, ...]
    expressions: tuple[str, ...]


@dataclass(frozen=True)
class DavisVideo:
    """``objects`` in the official order (string order of obj_id): the official writer labels
    the k-th object k + 1 in its prediction maps (unsupervised scoring matches labels anyway)."""

    video_id: str
    frame_names: tuple[str, ...]
    frame_paths: tuple[Path, ...]
    annotation_paths: tuple[Path, ...]
    objects: tuple[DavisObject, ...]

    def load_frames(self) -> list[Image.Image]:
        return [load_rgb(p, LAYOUT) for p in self.frame_paths]

    def load_gt(self) -> np.ndarray:
        """[T, H, W] uint8 label map (object ids, 255 = void), for ``mutr.metrics.davis``."""
        return np.stack([load_label_map(p, LAYOUT) for p in self.annotation_paths]).astype(np.uint8)

    def expressions_of_set(self, annotator_set: int) -> list[tuple[int, str]]:
        """(obj_id, text) for every object in annotator set ``a`` (0..3): one prediction run."""
        return [(o.obj_id, o.expressions[annotator_set]) for o in self.objects
                if annotator_set < len(o.expressions)]


class RefDavisEval:
    """Per video: frames, GT label maps and the objects with their annotator expression sets."""

    def __init__(self, root: str | Path, split: str = "valid") -> None:
        self.root = Path(root)
        videos = read_json(self.root / "meta_expressions" / split / "meta_expressions.json", LAYOUT)["videos"]
        require(self.root / split / "JPEGImages", LAYOUT)
        require(self.root / split / "Annotations", LAYOUT)
        self.videos = [self._video(split, vid, data) for vid, data in videos.items()]

    def _video(self, split: str, vid: str, data: dict) -> DavisVideo:
        by_obj: dict[str, list[tuple[int, str]]] = {}
        for exp_id, exp in data["expressions"].items():
            if "obj_id" not in exp:
                raise InputError(f"{vid} expression {exp_id} has no obj_id; rebuild meta_expressions with "
                                 "the Ref-DAVIS conversion script")
            by_obj.setdefault(exp["obj_id"], []).append((int(exp_id), exp["exp"]))
        objects = []
        for obj_id in sorted(by_obj):  # string order, as the conversion script numbers them
            exps = sorted(by_obj[obj_id])
            if len(exps) > len(ANNOTATOR_SETS):
                raise InputError(f"{vid} object {obj_id} has {len(exps)} expressions, more than the "
                                 f"{len(ANNOTATOR_SETS)} annotator sets; rebuild meta_expressions")
            objects.append(DavisObject(int(obj_id), tuple(str(i) for i, _ in exps), tuple(t for _, t in exps)))
        names = tuple(sorted(data["frames"]))
        base = self.root / split
        return DavisVideo(vid, names, tuple(base / "JPEGImages" / vid / f"{n}.jpg" for n in names),
                          tuple(base / "Annotations" / vid / f"{n}.png" for n in names),
                          tuple(objects))

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> DavisVideo:
        return self.videos[i]

    def __iter__(self) -> Iterator[DavisVideo]:
        return iter(self.videos)
