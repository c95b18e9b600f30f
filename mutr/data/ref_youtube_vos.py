"""Ref-YouTube-VOS: training clips (official sampling, §15) and the valid set for submission.

Layout (datasets.md §1.1)::

    <root>/meta_expressions/{train,valid,test}/meta_expressions.json
    <root>/train/JPEGImages/<video>/<frame>.jpg   <root>/train/Annotations/<video>/<frame>.png
    <root>/valid/JPEGImages/<video>/<frame>.jpg   (no annotations: scored by the server)

Training yields one sample per (expression, anchor frame), anchors every ``num_frames`` frames;
the target of an expression is ``annotation == obj_id`` in every sampled frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from mutr.data.common import (ClipSample, Seed, clean_caption, load_label_map, load_rgb, make_rng,
                              make_target, read_json, require)
from mutr.data.video_transforms import Transform, train_transforms
from mutr.errors import InputError

LAYOUT = ("Ref-YouTube-VOS (<root>/meta_expressions/<split>/meta_expressions.json, "
          "<root>/<split>/JPEGImages/<video>/<frame>.jpg, <root>/train/Annotations/<video>/<frame>.png)")
MAX_RESAMPLE = 100


def sample_clip_indices(anchor: int, length: int, num_frames: int, rng: np.random.Generator) -> list[int]:
    """The official sparse sampling: the anchor, one local frame 1–3 before and one 1–3 after
    (clamped), then random "global" frames from outside the local range (the pool keeps the
    last local index, as upstream), sorted. Short videos fall back to repeats."""
    sample = [anchor]
    if num_frames != 1:
        before, after = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        sample += [max(0, anchor - before), min(length - 1, anchor + after)]
        if num_frames > 3:
            pool = list(range(min(sample))) + list(range(max(sample), length))
            need = num_frames - len(sample)
            if len(pool) > need:
                sample += [pool[i] for i in rng.choice(len(pool), need, replace=False)]
            elif length >= need:
                sample += [int(i) for i in rng.choice(length, need, replace=False)]
            else:
                extra = need - length
                sample += [int(i) for i in rng.choice(length, extra, replace=extra > length)] + list(range(length))
    return sorted(sample)[:num_frames]


@dataclass(frozen=True)
class _Meta:
    video: str
    exp_id: str
    caption: str
    obj_id: int
    anchor: int


class RefYouTubeVOS(Dataset):
    """Training clips as :class:`ClipSample` (caption reference). ``dataset[i]`` uses a fixed
    per-index seed; training passes ``(index, seed)`` keys from a :class:`JointSampler`."""

    name = "ref-youtube-vos"
    layout = LAYOUT
    splits: tuple[str, ...] = ("train",)

    def __init__(self, root: str | Path, split: str = "train", *, num_frames: int = 5,
                 transforms: Transform | None = None, seed: int = 0) -> None:
        if split not in self.splits:
            raise InputError(f"{self.name} has training annotations only for split(s) "
                             f"{', '.join(self.splits)}, not {split!r}; use the eval class for others")
        if num_frames < 1:
            raise InputError(f"num_frames must be >= 1, got {num_frames}")
        self.root, self.split, self.num_frames, self.seed = Path(root), split, num_frames, seed
        self.transforms = transforms or train_transforms()
        require(self.root / split / "JPEGImages", self.layout)
        require(self.root / split / "Annotations", self.layout)
        videos = read_json(self.root / "meta_expressions" / split / "meta_expressions.json", self.layout)["videos"]
        self.frames: dict[str, list[str]] = {}
        self.metas: list[_Meta] = []
        for vid, data in videos.items():
            frames = sorted(data["frames"])
            self.frames[vid] = frames
            for exp_id, exp in data["expressions"].items():
                if "obj_id" not in exp:
                    raise InputError(f"{vid} expression {exp_id} has no obj_id in {split} meta_expressions.json; "
                                     f"training needs the {split} split with annotations")
                for anchor in range(0, len(frames), self.num_frames):
                    self.metas.append(_Meta(vid, exp_id, exp["exp"], int(exp["obj_id"]), anchor))

    def __len__(self) -> int:
        return len(self.metas)

    def __getitem__(self, key: int | tuple[int, Seed]) -> ClipSample:
        index, seed = key if isinstance(key, tuple) else (key, [self.seed, key])
        return self.get(index, seed)

    def get(self, index: int, seed: Seed) -> ClipSample:
        """The clip for ``metas[index]``; a clip left with no valid frame after augmentation is
        replaced by a random other one (as upstream), drawn from the same seeded RNG."""
        rng = make_rng(seed)
        for _ in range(MAX_RESAMPLE):
            sample = self._clip(self.metas[index], rng)
            if bool(sample.target["valid"].any()):
                return sample
            index = int(rng.integers(len(self)))
        raise InputError(f"{self.name}: {MAX_RESAMPLE} clips in a row had no visible object; "
                         "check that Annotations use the obj_id values of meta_expressions.json")

    def _clip(self, meta: _Meta, rng: np.random.Generator) -> ClipSample:
        names = self.frames[meta.video]
        idx = sample_clip_indices(meta.anchor, len(names), self.num_frames, rng)
        base = self.root / self.split
        images = [load_rgb(base / "JPEGImages" / meta.video / f"{names[i]}.jpg", self.layout) for i in idx]
        masks = np.stack([load_label_map(base / "Annotations" / meta.video / f"{names[i]}.png", self.layout)
                          == meta.obj_id for i in idx])
        if masks.shape[1:] != (images[0].height, images[0].width):
            raise InputError(f"{meta.video}: annotation size {masks.shape[1:]} differs from the frame size "
                             f"{(images[0].height, images[0].width)}; re-extract the {self.name} download")
        target = make_target(masks, [True] * len(idx), idx, clean_caption(meta.caption))
        frames, target = self.transforms(images, target, rng)
        return ClipSample(frames, target, caption=target.pop("caption"),
                          source=f"{self.name}/{meta.video}/{meta.exp_id}")


@dataclass(frozen=True)
class YTVOSVideo:
    """One valid video: predict a mask for every (expression, frame) at the frames' own size.

    ``expressions`` maps exp_id → raw text (not lower-cased: official inference keeps case).
    """

    video_id: str
    frame_names: tuple[str, ...]
    frame_paths: tuple[Path, ...]
    expressions: dict[str, str]

    def load_frames(self) -> list[Image.Image]:
        return [load_rgb(p, LAYOUT) for p in self.frame_paths]


class RefYouTubeVOSEval:
    """The competition "valid" videos: keys of valid minus keys of test meta_expressions
    (all valid keys when the test file is absent), in file order."""

    def __init__(self, root: str | Path, split: str = "valid") -> None:
        self.root = Path(root)
        videos = read_json(self.root / "meta_expressions" / split / "meta_expressions.json", LAYOUT)["videos"]
        test_file = self.root / "meta_expressions" / "test" / "meta_expressions.json"
        test = read_json(test_file, LAYOUT)["videos"] if split == "valid" and test_file.exists() else {}
        require(self.root / split / "JPEGImages", LAYOUT)
        self.videos = [YTVOSVideo(
            vid, tuple(sorted(data["frames"])),
            tuple(self.root / split / "JPEGImages" / vid / f"{f}.jpg" for f in sorted(data["frames"])),
            {k: e["exp"] for k, e in data["expressions"].items()},
        ) for vid, data in videos.items() if vid not in test]

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> YTVOSVideo:
        return self.videos[i]

    def __iter__(self) -> Iterator[YTVOSVideo]:
        return iter(self.videos)
